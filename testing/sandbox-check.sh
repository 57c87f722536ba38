#!/usr/bin/env bash
# Runs the real binary inside an emulation of spotkeeper.service's sandbox, against moto (S3 and
# SSM) on 127.0.0.1, to show the hardening leaves the daemon working:
#   - mounts as systemd lays them out for ProtectSystem=strict + ReadWritePaths=/opt/openclaw +
#     StateDirectory=spotkeeper + RuntimeDirectory=spotkeeper openclaw: the tree read-only and each
#     writable path its own bind mount (same file system and st_dev, but distinct mounts, so
#     rename(2) between two of them fails with EXDEV);
#   - the unit's CapabilityBoundingSet= (read from the unit) and NoNewPrivileges=, via setpriv;
#   - OpenClaw's three state paths as the deployment configures them (config, workspace, auth:
#     /opt/openclaw/{.openclaw,workspace,auth-profiles}), owned by another uid (1000), 0600 files
#     in 0700 directories, like OpenClaw's;
#   - when strace is installed, every system call made is checked against the unit's
#     SystemCallFilter= (@system-service minus @resources and @obsolete, groups expanded).
# Steps: snapshot of the three paths; restore --force over three changed directories (each is
# staged and displaced beside itself: a rename between work_dir and /opt/openclaw would fail with
# EXDEV under the unit's mounts); `spotkeeper run` with the fake OpenClaw image (secrets from SSM,
# container writing into all three mounts under OpenClaw's command and Fleet's security profile,
# startup_url and ready_url, scheduled snapshots, SIGTERM, final
# snapshot), when Docker answers and the image exists (testing/build-fake-image.sh;
# FAKE_OPENCLAW_IMAGE). It does not run systemd itself (PID 1 is not systemd on CI machines).
#
# Needs root (unshare -m, chown). Env: SPOTKEEPER_BIN (default target/debug/spotkeeper); KEEP_WORK=1
# keeps the scratch directory (logs, the emulated root) and prints its path.
# Exit 0 when nothing FAILED.
set -euo pipefail
export LC_ALL=C

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${SPOTKEEPER_BIN:-$repo/target/debug/spotkeeper}"
[[ "$bin" == /* ]] || bin="$PWD/$bin"
unit="$repo/systemd/spotkeeper.service"
image="${FAKE_OPENCLAW_IMAGE:-spotkeeper-test/fake-openclaw:1}"
[[ -x "$bin" ]] || { echo "sandbox-check: no binary at $bin (set SPOTKEEPER_BIN)" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "sandbox-check: needs root (unshare -m, chown)" >&2; exit 1; }

# The capability set exactly as the unit declares it: "CAP_CHOWN CAP_FOWNER" -> "+chown,+fowner".
caps="$(sed -n 's/^CapabilityBoundingSet=//p' "$unit" | tr ' ' '\n' | sed -n 's/^CAP_\(.*\)/+\L\1/p' | paste -sd,)"
[[ -n "$caps" ]] || { echo "sandbox-check: no CapabilityBoundingSet= in $unit" >&2; exit 1; }

work="$(mktemp -d)"
container="spotkeeper-sandbox-$$"
moto_pid=""
cleanup() {
  if [[ -n "$moto_pid" ]]; then kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; fi
  docker rm -f "$container" >/dev/null 2>&1 || true
  [[ -n "${KEEP_WORK:-}" ]] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
"$repo/testing/start-moto.sh"
port="$(free_port)"
"$repo/testing/start-moto.sh" "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 150); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
  sleep 0.1
done
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
"$repo/.venv-moto/bin/python" - <<EOF
import boto3
endpoint = "http://127.0.0.1:$port"
boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="sandbox")
boto3.client("ssm", endpoint_url=endpoint).put_parameter(Name="/openclaw/sandbox/API_KEY", Value="s3cret", Type="SecureString")
boto3.client("ssm", endpoint_url=endpoint).put_parameter(Name="/openclaw-repository/sandbox/password", Value="sandbox-repository-password", Type="SecureString")
EOF

root="$work/root"                       # stands for / inside the service's namespace
# OpenClaw's three directories, as cloud-init/user-data.yaml.tmpl configures them.
config_dir="$root/opt/openclaw/.openclaw"
workspace_dir="$root/opt/openclaw/workspace"
auth_dir="$root/opt/openclaw/auth-profiles"
state_dirs=("$config_dir" "$workspace_dir" "$auth_dir")
wd="$root/var/lib/spotkeeper"
writable=("$root/opt/openclaw" "$wd" "$root/run/spotkeeper" "$root/run/openclaw")
mkdir -p "${writable[@]}" "$config_dir/agents/main" "$workspace_dir/notes" "$auth_dir"
echo '{"session": 1}' >"$config_dir/agents/main/session.jsonl"
echo 'token' >"$config_dir/credentials.json"
echo 'SECRET=x' >"$config_dir/.env"
echo '# todo 1' >"$workspace_dir/notes/todo.md"
echo 'auth-profile-key 1' >"$auth_dir/auth-profiles.key"
for dir in "${state_dirs[@]}"; do
  chown -R 1000:1000 "$dir"
  find "$dir" -type d -exec chmod 0700 {} +
  find "$dir" -type f -exec chmod 0600 {} +
done
health_port="$(free_port)"
cat >"$work/spotkeeper.toml" <<EOF
[state]
work_dir = "$wd"

[[state.paths]]
name = "config"
dir = "$config_dir"
mount = "/home/node/.openclaw"

[[state.paths]]
name = "workspace"
dir = "$workspace_dir"
mount = "/home/node/.openclaw/workspace"

[[state.paths]]
name = "auth"
dir = "$auth_dir"
mount = "/home/node/.config/openclaw"

[s3]
bucket = "sandbox"
prefix = "check"
region = "us-east-1"
endpoint = "http://127.0.0.1:$port"

[snapshot]
interval = "3s"

[secrets]
ssm_path = "/openclaw/sandbox/"
env_file = "$root/run/openclaw/.env"
endpoint = "http://127.0.0.1:$port"

[container]
name = "$container"
image = "$image"
user = "1000:1000"
ports = ["127.0.0.1:$health_port:18789"]
health_url = "http://127.0.0.1:$health_port/healthz"
startup_url = "http://127.0.0.1:$health_port/startupz"
ready_url = "http://127.0.0.1:$health_port/readyz"
health_interval = "1s"
stop_timeout = "10s"
log_driver = "json-file"

[container.environment]
WRITE_INTERVAL_MS = "20"
DRAIN_MS = "300"
EXTRA_DIRS = "/home/node/.openclaw/workspace:/home/node/.config/openclaw"

[daemon]
socket = "$root/run/spotkeeper/control.sock"

# Format 2, as the Pulumi program deploys it: rustic_core's threads and file calls run under the
# unit's sandbox and system call filter too.
[repository]
password_ssm = "/openclaw-repository/sandbox/password"
EOF

tracer=()
command -v strace >/dev/null && tracer=(strace -f -qq -o "$work/trace")
trace_n=0
# sandboxed CMD...: CMD in the emulated namespace, with the unit's capabilities, traced.
sandboxed() {
  trace_n=$((trace_n + 1))
  local t=()
  [[ ${#tracer[@]} -gt 0 ]] && t=(strace -f -qq -o "$work/trace.$trace_n")
  unshare -m --propagation private bash -euo pipefail -c '
    root=$1 caps=$2 n=$3; shift 3
    writable=("${@:1:$n}"); shift "$n"
    mount --bind "$root" "$root"; mount -o remount,bind,ro "$root"
    for p in "${writable[@]}"; do mount --bind "$p" "$p"; mount -o remount,bind,rw "$p"; done
    exec setpriv --bounding-set=-all,"$caps" --inh-caps=-all --no-new-privs -- "$@"
  ' sandboxed "$root" "$caps" "${#writable[@]}" "${writable[@]}" "${t[@]}" "$@"
}

passed=0 failed=0
ok() { echo "ok     $1"; passed=$((passed + 1)); }
bad() { echo "FAILED $1"; failed=$((failed + 1)); }
sk=("$bin" --config "$work/spotkeeper.toml")

# The newest snapshot's format and path names, from list --json.
listed() {
  "${sk[@]}" list --json 2>/dev/null | python3 -c '
import json, sys
newest = json.load(sys.stdin)[0]
print(newest.get("format"), ",".join(p["name"] for p in newest.get("paths", [])))'
}
if sandboxed "${sk[@]}" snapshot >"$work/out" 2>&1 && [[ "$(listed 2>/dev/null)" == "2 config,workspace,auth" ]]; then
  ok "snapshot (format 2) of three uid-1000 paths (config, workspace, auth) with 0600 files in 0700 directories"
else
  bad "snapshot (list: $(listed 2>&1 || true)):"; sed 's/^/         /' "$work/out"
fi

echo 'changed' >>"$config_dir/agents/main/session.jsonl"
echo '# todo 2' >"$workspace_dir/notes/todo.md"
echo 'auth-profile-key 2' >"$auth_dir/auth-profiles.key"
# NAME DIR FILE WANT: the restored FILE (relative to DIR) holds WANT, 1000:1000 0600 in a 1000:1000
# 0700 DIR; DIR's previous content is in DIR.displaced/<time>/<basename of DIR>/, FILE changed.
restored_and_displaced() {
  local name="$1" dir="$2" file="$3" want="$4" displaced
  if [[ "$(cat "$dir/$file" 2>/dev/null)" != "$want" ]]; then
    echo "$name: $dir/$file is not the snapshot's"; return 1
  fi
  if [[ "$(stat -c '%u:%g %a' "$dir" "$dir/$file")" != $'1000:1000 700\n1000:1000 600' ]]; then
    echo "$name: $(stat -c '%n %u:%g %a' "$dir" "$dir/$file" | paste -sd' ')"; return 1
  fi
  displaced=("$dir.displaced"/*/"$(basename "$dir")")
  if [[ ${#displaced[@]} -ne 1 || ! -f "${displaced[0]}/$file" ]]; then
    echo "$name: no previous content in $dir.displaced/<time>/$(basename "$dir")/"; return 1
  fi
  if [[ "$(cat "${displaced[0]}/$file")" == "$want" ]]; then
    echo "$name: ${displaced[0]}/$file is the snapshot's, not the previous content"; return 1
  fi
}
if sandboxed "${sk[@]}" restore --force >"$work/out" 2>&1; then
  problems="$(
    restored_and_displaced config "$config_dir" agents/main/session.jsonl '{"session": 1}' || true
    restored_and_displaced workspace "$workspace_dir" notes/todo.md '# todo 1' || true
    restored_and_displaced auth "$auth_dir" auth-profiles.key 'auth-profile-key 1' || true
    left="$(find "$root/opt/openclaw" -maxdepth 1 -name '*.spotkeeper-staging.*')"
    [[ -z "$left" ]] || echo "staging left: $left"
    [[ ! -e "$wd/restore-journal.json" ]] || echo "the restore journal is left: $wd/restore-journal.json"
  )"
  if [[ -z "$problems" ]]; then
    ok "restore --force: all three paths are back, owned 1000:1000 with modes 0700/0600, each previous content in its own .displaced/"
  else
    bad "restore --force succeeded, but:"; echo "$problems" | sed 's/^/         /'
  fi
else
  bad "restore --force:"; sed 's/^/         /' "$work/out"
fi

if ! docker info >/dev/null 2>&1 || ! docker image inspect "$image" >/dev/null 2>&1; then
  echo "skip   spotkeeper run: no Docker engine or no image $image (testing/build-fake-image.sh builds it)"
else
  # A state that descends from latest/ (or none): start-up must not need a restore.
  sandboxed "${sk[@]}" run >"$work/run.log" 2>&1 &
  run_pid=$!
  snapshots=0
  for _ in $(seq 60); do
    sleep 1
    snapshots="$(grep -c 'snapshot complete' "$work/run.log" || true)"
    [[ "$snapshots" -ge 2 ]] && break
    kill -0 "$run_pid" 2>/dev/null || break
  done
  status="$("${sk[@]}" status 2>&1 || true)"
  # The app runs as OpenClaw's compose and Fleet run it (the config's defaults).
  profile="$(docker inspect -f '{{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}} {{.HostConfig.PidsLimit}} {{.HostConfig.Init}} {{.Config.Hostname}} {{json .Config.Cmd}}' "$container" 2>&1 || true)"
  pkill -TERM -f "^$bin --config $work/spotkeeper.toml run" || true
  rc=0
  wait "$run_pid" || rc=$?
  env_ok=no
  grep -q 'secrets written' "$work/run.log" && env_ok=yes
  # The app wrote through the workspace and auth mounts, and the final snapshot holds all three.
  mounts_ok=no
  [[ -s "$workspace_dir/seq.txt" && -s "$auth_dir/seq.txt" ]] \
    && [[ "$(listed 2>/dev/null)" == "2 config,workspace,auth" ]] && mounts_ok=yes
  want_profile='["ALL"] ["no-new-privileges:true"] 512 true openclaw ["node","dist/index.js","gateway","--bind","lan","--port","18789"]'
  profile_ok=no
  [[ "$profile" == "$want_profile" ]] && profile_ok=yes
  if [[ $rc -eq 0 && "$snapshots" -ge 2 && $env_ok == yes && $mounts_ok == yes && $profile_ok == yes ]] \
    && grep -q '"final"' "$work/run.log" && echo "$status" | grep -q 'healthy: true'; then
    ok "spotkeeper run: secrets from SSM, container (OpenClaw's command, init, hostname, every capability dropped, no-new-privileges, 512 processes) healthy and writing into the three mounts, $snapshots scheduled snapshots, final snapshot of the three on SIGTERM, exit 0"
  else
    bad "spotkeeper run (exit $rc, $snapshots snapshots, secrets written: $env_ok, three mounts written and snapshotted: $mounts_ok, profile: $profile):"
    tail -20 "$work/run.log" | sed 's/^/         /'
    echo "$status" | sed 's/^/         /'
  fi
fi

if [[ ${#tracer[@]} -gt 0 ]]; then
  # The filter's effective allow-list, nested @groups expanded: @system-service minus @resources
  # and @obsolete, as the unit's two SystemCallFilter= lines say.
  allowed="$(systemd-analyze syscall-filter 2>/dev/null | python3 -c '
import sys
groups, name = {}, None
for line in sys.stdin:
    if line.startswith("@"):
        name = line.strip(); groups[name] = []
    elif name and line.strip() and not line.strip().startswith("#"):
        groups[name].append(line.strip())
def expand(g, seen=()):
    out = set()
    for item in groups.get(g, []):
        out |= expand(item, seen + (g,)) if item.startswith("@") and item not in seen else {item}
    return out
print("\n".join(sorted(expand("@system-service") - expand("@resources") - expand("@obsolete"))))
')"
  used="$(cat "$work"/trace.* 2>/dev/null | sed -n 's/^[0-9]* *\([a-z0-9_]*\)(.*/\1/p' | sort -u)"
  outside="$(comm -23 <(echo "$used") <(echo "$allowed"))"
  if [[ -z "$outside" ]]; then
    ok "all $(echo "$used" | wc -l) system calls made are allowed by the unit's SystemCallFilter="
  else
    bad "system calls outside SystemCallFilter=: $(echo "$outside" | paste -sd' ')"
  fi
else
  echo "skip   system call check: strace is not installed"
fi

echo "sandbox-check: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
