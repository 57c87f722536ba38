#!/usr/bin/env bash
# Checks the cloud-init user data offline:
#   1. renders user-data.yaml.tmpl with sample values (cloud-init/render.py);
#   2. `cloud-init schema --config-file` accepts it (Debian's cloud-init 22.4);
#   3. the unit it writes is systemd/spotkeeper.service byte for byte;
#   4. its boot script parses (sh -n), and its directory step, run in a scratch root, creates each
#      missing state directory 0700 for the container's user and leaves an existing one alone;
#   5. the spotkeeper.toml it writes holds OpenClaw's three [[state.paths]] (the boot script's
#      directories, inside the unit's ReadWritePaths=), the container as OpenClaw runs it (the image
#      pinned by digest, its gateway command on the published port, init, the fixed hostname,
#      Fleet's security profile, the container's user, the /healthz, /startupz and /readyz probes),
#      a stop_timeout of at least 90 s that the unit's TimeoutStopSec= covers with two minutes to
#      spare, and [snapshot] follow = "60s" (the Pulumi alarm's basis),
#      and passes `spotkeeper check-config` (binary:
#      $SPOTKEEPER_BIN, default target/debug/spotkeeper; skipped with a message when there is none);
#   6. the container's output goes to CloudWatch Logs: [container] log_driver = "awslogs" and
#      /etc/docker/daemon.json, valid JSON, gives that driver its region, group and this agent's
#      stream, non-blocking; spotkeeper's own [logs] go to that group, stream `<stream>/spotkeeper`;
#      the metric dimensions are Stack alone, and Stack and Tenant when a
#      tenant is rendered (a line holding {{tenant}} is left out when it is empty);
#   7. render.py refuses an unsafe value, an unknown variable, a missing one, a repository
#      password parameter under the secrets path (every parameter there reaches the container)
#      and a tenant name that is not lowercase letters, digits and -.
# Installs cloud-init with apt-get when it is missing (as root). Exit 0 when everything passed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
bin="${SPOTKEEPER_BIN:-$repo/target/debug/spotkeeper}"

if ! command -v cloud-init >/dev/null; then
  echo "cloud-init/test.sh: installing cloud-init" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends cloud-init >/dev/null
fi
# cloud-init's own interpreter has PyYAML (render.py --extract needs it).
py=/usr/bin/python3

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0 failed=0
ok() { echo "ok     $1"; passed=$((passed + 1)); }
bad() { echo "FAILED $1"; failed=$((failed + 1)); }

cat >"$work/values.json" <<'EOF'
{
  "stack": "openclaw-dev",
  "region": "eu-west-1",
  "bucket": "openclaw-dev-backup-1a2b3c4",
  "prefix": "openclaw/dev",
  "ssm_path": "/openclaw/dev/",
  "repository_password_ssm": "/openclaw-repository/dev/password",
  "image": "ghcr.io/openclaw/openclaw@sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
  "log_group": "/spotkeeper/openclaw-dev",
  "log_stream": "dev",
  "artifacts_bucket": "openclaw-dev-artifacts-1a2b3c4",
  "artifacts_prefix": "bin/",
  "sha256_aarch64": "5d41402abc4b2a76b9719d911017c592ae4e5c3b5e8b8a4b7e3b4f1c2d3e4f50"
}
EOF
"$py" "$here/render.py" --values "$work/values.json" --out "$work/user-data.yaml"
ok "render.py renders the template ($(wc -c <"$work/user-data.yaml") bytes, limit 16384)"

if out="$(cloud-init schema --config-file "$work/user-data.yaml" 2>&1)"; then
  ok "cloud-init schema: $(echo "$out" | tail -1)"
else
  bad "cloud-init schema rejects the user data:"; echo "$out" | sed 's/^/         /'
fi
if head -1 "$work/user-data.yaml" | grep -qx '#cloud-config'; then
  ok "first line is #cloud-config"
else
  bad "first line is not #cloud-config"
fi

"$py" "$here/render.py" --extract /etc/systemd/system/spotkeeper.service <"$work/user-data.yaml" >"$work/unit"
if cmp -s "$work/unit" "$repo/systemd/spotkeeper.service"; then
  ok "the unit written is systemd/spotkeeper.service, unchanged"
else
  bad "the unit written differs from systemd/spotkeeper.service:"; diff "$repo/systemd/spotkeeper.service" "$work/unit" | head -20
fi

"$py" -c 'import sys, yaml; print("\n".join(yaml.safe_load(sys.stdin)["runcmd"]))' <"$work/user-data.yaml" >"$work/runcmd.sh"
if sh -n "$work/runcmd.sh" && grep -q 'systemctl enable --now spotkeeper.service' "$work/runcmd.sh" \
  && grep -q "s3://openclaw-dev-artifacts-1a2b3c4/bin/spotkeeper-\$arch" "$work/runcmd.sh"; then
  ok "boot script parses, fetches s3://ARTIFACTS/PREFIXspotkeeper-\$(uname -m) and enables the unit"
else
  bad "boot script does not parse or misses the fetch or the enable"
fi

# The boot script's directory step (from creating /opt/openclaw to the end of its loop), run with
# /opt/openclaw moved into a scratch root where one state directory exists already, mode 0750.
sed -n '\|^install -d -m 0700 -o root -g root /opt/openclaw$|,/^done$/p' "$work/runcmd.sh" >"$work/dirs.sh"
sed "s|/opt/openclaw|$work/root/opt/openclaw|g" "$work/dirs.sh" >"$work/dirs-scratch.sh"
mkdir -p "$work/root/opt/openclaw/workspace" && chmod 0750 "$work/root/opt/openclaw/workspace"
if [[ $(id -u) -ne 0 ]]; then
  echo "skip   the boot script's state directories: chown needs root"
elif ! grep -q '^for dir in ' "$work/dirs.sh" || ! sh -eu "$work/dirs-scratch.sh" 2>"$work/err"; then
  bad "the boot script's directory step is missing or fails: $(cat "$work/err")"
else
  made="$(cd "$work/root" && stat -c '%n %a %u:%g' opt/openclaw opt/openclaw/{.openclaw,workspace,auth-profiles})"
  want='opt/openclaw 700 0:0
opt/openclaw/.openclaw 700 1000:1000
opt/openclaw/workspace 750 0:0
opt/openclaw/auth-profiles 700 1000:1000'
  if [[ "$made" == "$want" ]]; then
    ok "boot script creates the missing state directories 0700 for 1000:1000, leaves an existing one alone"
  else
    bad "boot script's state directories (name mode owner):"; echo "$made" | sed 's/^/         /'
  fi
fi

"$py" "$here/render.py" --extract /etc/spotkeeper/spotkeeper.toml <"$work/user-data.yaml" >"$work/spotkeeper.toml"
if grep -qx 'bucket = "openclaw-dev-backup-1a2b3c4"' "$work/spotkeeper.toml" \
  && grep -qx 'ssm_path = "/openclaw/dev/"' "$work/spotkeeper.toml" \
  && grep -qx 'password_ssm = "/openclaw-repository/dev/password"' "$work/spotkeeper.toml"; then
  ok "spotkeeper.toml holds the rendered bucket, SSM path and repository password parameter"
else
  bad "spotkeeper.toml does not hold the rendered values"
fi
# OpenClaw's three directories (the boot script's), the container as OpenClaw runs it, the stop budget.
if out="$("$py" - "$work/spotkeeper.toml" "$repo/systemd/spotkeeper.service" "$work/dirs.sh" 2>&1 <<'PY'
import re, sys, tomllib

config = tomllib.load(open(sys.argv[1], "rb"))
unit, boot = open(sys.argv[2]).read(), open(sys.argv[3]).read()
want = [
    {"name": "config", "dir": "/opt/openclaw/.openclaw", "mount": "/home/node/.openclaw"},
    {"name": "workspace", "dir": "/opt/openclaw/workspace", "mount": "/home/node/.openclaw/workspace"},
    {"name": "auth", "dir": "/opt/openclaw/auth-profiles", "mount": "/home/node/.config/openclaw"},
]
state, container = config["state"], config["container"]
problems = []
if state.get("paths") != want:
    problems.append(f"[[state.paths]] = {state.get('paths')}, want {want}")
problems += [f"[state] {key} beside [[state.paths]]" for key in ("dir", "exclude") if key in state]
if "state_mount" in container:
    problems.append("[container] state_mount beside [[state.paths]]")
if "repository" not in config:
    problems.append("several paths need format 2, and there is no [repository]")
# The Pulumi alarm (UnprotectedSeconds over 10 minutes) assumes a snapshot a minute after a change.
if config.get("snapshot", {}).get("follow") != "60s":
    problems.append(f"[snapshot] follow = {config.get('snapshot', {}).get('follow')!r}, want '60s'")
# OpenClaw's compose file and Fleet (src/fleet/cell-profile.ts): its gateway on the container's
# network, Docker's init, every capability dropped, no-new-privileges, 512 processes; a fixed
# hostname for its owner lease; its three probes.
for key, value in [
    ("image", "ghcr.io/openclaw/openclaw@sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"),
    ("command", ["node", "dist/index.js", "gateway", "--bind", "lan", "--port", "18789"]),
    ("ports", ["127.0.0.1:18789:18789"]),
    ("init", True),
    ("hostname", "openclaw"),
    ("user", "1000:1000"),
    ("cap_drop", ["ALL"]),
    ("cap_add", []),
    ("no_new_privileges", True),
    ("pids_limit", 512),
    ("memory_limit", "auto"),
    ("probe", "openclaw"),
    ("health_url", "http://127.0.0.1:18789/healthz"),
    ("startup_url", "http://127.0.0.1:18789/startupz"),
    ("ready_url", "http://127.0.0.1:18789/readyz"),
]:
    if container.get(key) != value:
        problems.append(f"[container] {key} = {container.get(key)!r}, want {value!r}")
problems += [f"[container] environment holds {key}: secrets go through the env file"
             for key in container.get("environment", {}) if key == "OPENCLAW_GATEWAY_TOKEN"]


def seconds(text):
    match = re.fullmatch(r"(\d+)(s|m)", text or "")
    return int(match[1]) * (60 if match[2] == "m" else 1) if match else None


# OpenClaw drains for up to 90 s after SIGTERM (openclaw/openclaw#150954); the unit's stop
# timeout must cover that and the final snapshot.
stop = seconds(container.get("stop_timeout"))
unit_stop = seconds(re.search(r"^TimeoutStopSec=(.*)$", unit, re.M)[1])
if stop is None or stop < 90:
    problems.append(f"[container] stop_timeout = {container.get('stop_timeout')!r}, want at least 90s")
elif unit_stop is None or unit_stop < stop + 120:
    problems.append(f"TimeoutStopSec={unit_stop} leaves less than 120 s after stop_timeout {stop} s for the final snapshot")
rw = re.search(r"^ReadWritePaths=(.*)$", unit, re.M)[1].split()
for path in state.get("paths", []):
    for p in (path["dir"], path["dir"].rsplit("/", 1)[0]):
        if not any(p == r or p.startswith(r + "/") for r in rw):
            problems.append(f"{p} is outside ReadWritePaths={' '.join(rw)}")
loop = re.search(r"^for dir in (.*); do$", boot, re.M)
made = loop[1].split() if loop else []
if made != [path["dir"] for path in want]:
    problems.append(f"the boot script creates {made}, not the [[state.paths]] directories")
print("\n".join(problems) or "three paths (config, workspace, auth) inside ReadWritePaths= and made at boot, "
      f"OpenClaw's image, command, init, hostname, security profile, user and probes, "
      f"stop_timeout {container['stop_timeout']} within TimeoutStopSec={unit_stop}s, follow {config['snapshot']['follow']}")
sys.exit(1 if problems else 0)
PY
)"; then
  ok "spotkeeper.toml: $out"
else
  bad "spotkeeper.toml is not OpenClaw's layout:"; echo "$out" | sed 's/^/         /'
fi
if [[ -x "$bin" ]]; then
  if out="$("$bin" check-config --config "$work/spotkeeper.toml" 2>&1)"; then
    ok "spotkeeper check-config accepts the rendered spotkeeper.toml ($bin)"
  else
    bad "spotkeeper check-config rejects the rendered spotkeeper.toml:"; echo "$out" | sed 's/^/         /'
  fi
else
  echo "skip   spotkeeper check-config: no binary at $bin (set SPOTKEEPER_BIN)"
fi

# Logs: the container's driver in spotkeeper.toml, its options in Docker's daemon.json.
"$py" "$here/render.py" --extract /etc/docker/daemon.json <"$work/user-data.yaml" >"$work/daemon.json"
"$py" "$here/render.py" --values "$work/values.json" --set tenant=alice --set log_stream=alice \
  --set prefix=openclaw/dev-alice --set ssm_path=/openclaw/dev-alice/ \
  --set repository_password_ssm=/openclaw-repository/dev-alice/password --out "$work/tenant.yaml"
"$py" "$here/render.py" --extract /etc/spotkeeper/spotkeeper.toml <"$work/tenant.yaml" >"$work/tenant.toml"
if out="$("$py" - "$work/spotkeeper.toml" "$work/daemon.json" "$work/tenant.toml" "$work/user-data.yaml" "$work/tenant.yaml" 2>&1 <<'PY'
import json, sys, tomllib

single, daemon, tenant = (tomllib.load(open(sys.argv[1], "rb")), json.load(open(sys.argv[2])),
                          tomllib.load(open(sys.argv[3], "rb")))
single_text, tenant_text = open(sys.argv[4]).read(), open(sys.argv[5]).read()
problems = []
if single["container"].get("log_driver") != "awslogs":
    problems.append(f"[container] log_driver = {single['container'].get('log_driver')!r}, want 'awslogs'")
want = {"log-driver": "awslogs", "log-opts": {"awslogs-region": "eu-west-1", "awslogs-group": "/spotkeeper/openclaw-dev",
        "awslogs-stream": "dev", "mode": "non-blocking", "max-buffer-size": "4m"}}
if daemon != want:
    problems.append(f"daemon.json = {daemon}, want {want}")
if single["metrics"].get("dimensions") != {"Stack": "openclaw-dev"}:
    problems.append(f"single agent's dimensions = {single['metrics'].get('dimensions')}, want Stack alone")
if "tenant" in single_text.lower():
    problems.append("the single agent's user data mentions a tenant")
for who, config, stream in (("single agent", single, "dev"), ("tenant", tenant, "alice")):
    want_logs = {"group": "/spotkeeper/openclaw-dev", "stream": f"{stream}/spotkeeper", "region": "eu-west-1"}
    if config.get("logs") != want_logs:
        problems.append(f"{who}'s [logs] = {config.get('logs')}, want {want_logs}")
if tenant["metrics"].get("dimensions") != {"Stack": "openclaw-dev", "Tenant": "alice"}:
    problems.append(f"tenant's dimensions = {tenant['metrics'].get('dimensions')}, want Stack and Tenant")
if "# Tenant alice of this stack's fleet." not in tenant_text:
    problems.append("the tenant's user data does not say whose it is")
print("\n".join(problems) or "log_driver awslogs, daemon.json's region, group, stream and non-blocking mode; "
      "[logs] to the agent's stream/spotkeeper; dimensions Stack, and Stack and Tenant for a tenant")
sys.exit(1 if problems else 0)
PY
)"; then
  ok "logs and dimensions: $out"
else
  bad "logs and dimensions:"; echo "$out" | sed 's/^/         /'
fi

refuse() {
  local what="$1"; shift
  if "$py" "$here/render.py" --values "$work/values.json" "$@" >/dev/null 2>"$work/err"; then
    bad "render.py accepted $what"
  else
    ok "render.py refuses $what: $(cat "$work/err")"
  fi
}
refuse "a quote in a value" --set 'prefix=lab"x'
refuse "a space in a value" --set 'image=openclaw latest'
refuse "an unknown variable" --set 'bukket=x'
refuse "a .. prefix segment" --set 'prefix=lab/../other'
refuse "a repository password under the secrets path" --set 'repository_password_ssm=/openclaw/dev/password'
refuse "a tenant name with a capital" --set 'tenant=Alice'
refuse "a tenant name ending in -" --set 'tenant=alice-'
echo '{"stack": "x"}' >"$work/partial.json"
if "$py" "$here/render.py" --values "$work/partial.json" >/dev/null 2>"$work/err"; then
  bad "render.py accepted missing required values"
else
  ok "render.py refuses missing required values: $(cat "$work/err")"
fi

echo "cloud-init: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
