#!/usr/bin/env bash
# Every offline check of the deployment pieces (issue 4), for `make test` and CI:
#   systemd/spotkeeper.service  systemd-analyze verify; systemd-analyze security --offline=true
#                               exposure <= EXPOSURE_MAX; RestartPreventExitStatus= is the binary's
#                               config-error exit code; ReadWritePaths= covers every state path's
#                               dir (the default's and docs/spotkeeper.example.toml's three), its
#                               parent and work_dir, RuntimeDirectory= the default socket and env file
#   cloud-init/test.sh          the user data renders, passes `cloud-init schema`, its config passes
#                               `spotkeeper check-config`
#   pulumi/test.sh              the Pulumi program under Pulumi's mocks
#   testing/undelete-prefix-check.sh  the script that brings a prefix of the versioned bucket back,
#                               against moto's S3 (a real server on 127.0.0.1)
#   testing/sandbox-check.sh    the binary's snapshot, restore and `run` inside an emulation of the
#                               unit's sandbox (mounts, capabilities, system call filter)
#   testing/systemd-check.sh    the unit under a real systemd as PID 1 (systemd-nspawn): READY,
#                               journal fields, restart after SIGKILL, watchdog, stop, config error
# Runs as root on a fresh Debian 12 machine: installs systemd and cloud-init with apt-get when
# missing. Env: SPOTKEEPER_BIN (default target/debug/spotkeeper; when it is set it must exist,
# when the default is absent the checks that need a binary say "skip"). Exit 0 only when every
# check passed.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
unit="$repo/systemd/spotkeeper.service"
bin="${SPOTKEEPER_BIN:-$repo/target/debug/spotkeeper}"
[[ "$bin" == /* ]] || bin="$repo/$bin"
# The exposure measured for the unit as committed (docs/deployment.md): a change that weakens the
# hardening fails here.
EXPOSURE_MAX="${EXPOSURE_MAX:-2.1}"

need=()
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v cloud-init >/dev/null || need+=(cloud-init)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [[ ${#need[@]} -gt 0 ]]; then
  echo "deployment-checks: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0 failed=0
ok() { echo "ok     $1"; passed=$((passed + 1)); }
bad() { echo "FAILED $1"; failed=$((failed + 1)); }
have_bin=no
[[ -x "$bin" ]] && have_bin=yes
if [[ $have_bin == no && -n "${SPOTKEEPER_BIN:-}" ]]; then
  echo "deployment-checks: SPOTKEEPER_BIN=$SPOTKEEPER_BIN is not an executable" >&2
  exit 1
fi

# The value of a directive in [Service] (the last one wins, as in systemd; empty if absent).
directive() { sed -n "s/^$1=//p" "$unit" | tail -1; }

# --- systemd-analyze verify -------------------------------------------------------------------
# verify checks that ExecStart's binary exists: point it at the built binary (or a stand-in).
mkdir -p "$work/units"
if [[ $have_bin == yes ]]; then cp "$bin" "$work/spotkeeper"; else cp /bin/true "$work/spotkeeper"; fi
sed "s#/usr/local/bin/spotkeeper#$work/spotkeeper#g" "$unit" >"$work/units/spotkeeper.service"
# Requires=docker.service: a machine without Docker gets a stand-in unit beside the copy.
if ! systemctl cat docker.service >/dev/null 2>&1 \
  && [[ ! -e /lib/systemd/system/docker.service && ! -e /etc/systemd/system/docker.service ]]; then
  printf '[Unit]\nDescription=stand-in for docker.service\n[Service]\nExecStart=/bin/true\n' >"$work/units/docker.service"
fi
if out="$(systemd-analyze verify "$work/units/spotkeeper.service" 2>&1)" && [[ -z "$out" ]]; then
  ok "systemd-analyze verify: no error, no warning"
else
  bad "systemd-analyze verify:"; echo "$out" | sed 's/^/         /'
fi

# --- systemd-analyze security -----------------------------------------------------------------
security="$(systemd-analyze security --offline=true "$unit" 2>&1 || true)"
exposure="$(echo "$security" | sed -n 's/^→ Overall exposure level for [^:]*: \([0-9.]*\) .*/\1/p')"
if [[ -z "$exposure" ]]; then
  bad "systemd-analyze security printed no exposure:"; echo "$security" | tail -5 | sed 's/^/         /'
elif awk -v e="$exposure" -v m="$EXPOSURE_MAX" 'BEGIN { exit !(e <= m) }'; then
  ok "systemd-analyze security --offline=true: exposure $exposure (at most $EXPOSURE_MAX)"
else
  bad "systemd-analyze security: exposure $exposure is above $EXPOSURE_MAX:"
  echo "$security" | grep '^✗' | sed 's/^/         /'
fi

# --- the unit against the binary --------------------------------------------------------------
prevent="$(directive RestartPreventExitStatus)"
config_code="$(sed -n 's/^ *Config = \([0-9]*\),.*/\1/p' "$repo/src/exit.rs")"
if [[ -n "$config_code" && "$prevent" == "$config_code" ]]; then
  ok "RestartPreventExitStatus=$prevent is Exit::Config in src/exit.rs"
else
  bad "RestartPreventExitStatus=$prevent, but src/exit.rs has Config = ${config_code:-?}"
fi
if [[ $have_bin == yes ]]; then
  printf '[s3]\nbucket = "b-1"\nbukket = "typo"\n' >"$work/bad.toml"
  set +e
  "$bin" check-config --config "$work/bad.toml" >/dev/null 2>&1; bad_code=$?
  "$bin" check-config --config "$work/absent.toml" >/dev/null 2>&1; absent_code=$?
  set -e
  if [[ "$bad_code" == "$prevent" && "$absent_code" == "$prevent" ]]; then
    ok "the binary exits $prevent on an invalid and on a missing config file"
  else
    bad "the binary exits $bad_code (invalid) and $absent_code (missing config), the unit prevents restart on $prevent"
  fi
else
  echo "skip   exit code of the binary on a bad config: no binary at $bin"
fi

# The defaults, from the binary when there is one (the effective config), else from src/config/mod.rs.
# The effective config prints one [[state.paths]] table per path, each with its `dir = "..."`:
# the default's one path, and the three of docs/spotkeeper.example.toml (OpenClaw's layout).
if [[ $have_bin == yes ]]; then
  printf '[s3]\nbucket = "b-1"\n' >"$work/min.toml"
  "$bin" check-config --config "$work/min.toml" 2>/dev/null >"$work/effective.toml"
  "$bin" check-config --config "$repo/docs/spotkeeper.example.toml" 2>/dev/null >>"$work/effective.toml" || true
  state_dirs="$(sed -n 's/^dir = "\(.*\)"$/\1/p' "$work/effective.toml" | sort -u | paste -sd' ')"
  work_dir="$(sed -n 's/^work_dir = "\(.*\)"$/\1/p' "$work/effective.toml" | sort -u | paste -sd' ')"
  source_of_defaults="the binary's effective config of the defaults and of docs/spotkeeper.example.toml"
else
  state_dirs="$(sed -n 's/^pub const DEFAULT_STATE_DIR: &str = "\(.*\)";/\1/p' "$repo/src/config/mod.rs")"
  work_dir="$(sed -n 's/^pub const DEFAULT_WORK_DIR: &str = "\(.*\)";/\1/p' "$repo/src/config/mod.rs")"
  source_of_defaults="src/config/mod.rs"
fi
socket="$(sed -n 's/^pub const DEFAULT_SOCKET: &str = "\(.*\)";/\1/p' "$repo/src/config/mod.rs")"
env_file="$(sed -n 's/^pub const DEFAULT_ENV_FILE: &str = "\(.*\)";/\1/p' "$repo/src/config/mod.rs")"
# Is $1 equal to or below one of the paths in $2 (space-separated; a leading - is systemd's "optional")?
covered() {
  local p
  for p in $2; do
    p="${p#-}"
    [[ "$1" == "$p" || "$1" == "$p"/* ]] && return 0
  done
  return 1
}
rw="$(directive ReadWritePaths)"
# Each state path's dir and its parent (a restore stages and displaces beside the dir), and work_dir.
uncovered=""
for d in $state_dirs; do
  covered "$d" "$rw" && covered "$(dirname "$d")" "$rw" || uncovered+="$d "
done
for d in $work_dir; do
  covered "$d" "$rw" || uncovered+="$d "
done
if [[ -n "$state_dirs" && -n "$work_dir" && -z "$uncovered" ]]; then
  ok "ReadWritePaths=$rw covers the state paths' dirs ($state_dirs), their parents and work_dir $work_dir ($source_of_defaults)"
else
  bad "ReadWritePaths=$rw does not cover '${uncovered:-$state_dirs $work_dir}' (each state path's dir, its parent, work_dir)"
fi
runtime_dirs=""
for d in $(directive RuntimeDirectory); do runtime_dirs+="/run/$d "; done
if [[ -n "$socket" && -n "$env_file" ]] && covered "$(dirname "$socket")" "$runtime_dirs" \
  && covered "$(dirname "$env_file")" "$runtime_dirs"; then
  ok "RuntimeDirectory= ($runtime_dirs) holds the control socket $socket and the env file $env_file"
else
  bad "RuntimeDirectory= ($runtime_dirs) misses the socket '$socket' or the env file '$env_file'"
fi
if [[ $have_bin == yes ]]; then
  if out="$("$bin" check-config --config "$repo/docs/spotkeeper.example.toml" 2>&1 >/dev/null)"; then
    ok "docs/spotkeeper.example.toml (installed by make install) passes check-config"
  else
    bad "docs/spotkeeper.example.toml: $out"
  fi
fi
if [[ "$(directive Type)" == notify && "$(directive NotifyAccess)" == main && -n "$(directive WatchdogSec)" ]]; then
  ok "Type=notify, NotifyAccess=main, WatchdogSec=$(directive WatchdogSec)"
else
  bad "the unit is not Type=notify with NotifyAccess=main and a WatchdogSec="
fi

# --- the other suites -------------------------------------------------------------------------
run_suite() {
  local name="$1"; shift
  echo "--- $name"
  if SPOTKEEPER_BIN="$bin" "$@"; then
    ok "$name"
  else
    bad "$name"
  fi
}
run_suite cloud-init/test.sh "$repo/cloud-init/test.sh"
run_suite pulumi/test.sh "$repo/pulumi/test.sh"
run_suite testing/undelete-prefix-check.sh "$repo/testing/undelete-prefix-check.sh"
if [[ $have_bin == yes ]]; then
  run_suite testing/sandbox-check.sh "$repo/testing/sandbox-check.sh"
  run_suite testing/systemd-check.sh "$repo/testing/systemd-check.sh"
else
  echo "skip   testing/sandbox-check.sh, testing/systemd-check.sh: no binary at $bin (set SPOTKEEPER_BIN)"
fi

echo "deployment-checks: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
