#!/usr/bin/env bash
# Runs systemd/spotkeeper.service, unchanged, under a REAL systemd as PID 1: a Debian bookworm root
# booted with systemd-nspawn, on the host's network and the host's Docker Engine, against s3s-fs
# (S3, behind a throttling proxy) and moto (SSM) on 127.0.0.1. What it checks, one PASS/FAIL each:
#   1 ready          `systemctl start` returns after READY=1; StatusText says running
#   2 journal        a snapshot is logged with the structured field SNAPSHOT_ID
#   3 kill-restart   SIGKILL: systemd restarts it after RestartSec, and the new start keeps the
#                    local state (a marker written after the last snapshot survives; KeepLocal)
#   4 watchdog-slow  a snapshot longer than WatchdogSec is not killed by the watchdog, and shows its
#                    progress in STATUS while it runs
#   5 watchdog-hung  a SIGSTOPped (hung) daemon is killed by the watchdog and restarted
#   6 stop           `systemctl stop` takes the final snapshot; /run/openclaw/.env is gone after it
#   7 config-error   an unknown config key: exit status 3, and no restart (RestartPreventExitStatus=)
# The unit is installed as committed; the only addition is the drop-in spotkeeper.service.d/test.conf
# (test credentials, and WatchdogSec= for checks 4 and 5). Besides it the box gets the binary, the
# test config, a docker.service stand-in, its hostname and a masked console getty.
#
# The bookworm root is debootstrapped once from the Debian mirror in apt's sources and cached in
# $SPOTKEEPER_NSPAWN_CACHE (default /var/cache/spotkeeper-nspawn); each run boots an overlay of it,
# so the cache is never modified. A cold cache adds about a minute of debootstrap.
#
# Needs root, Docker, and a Debian-like host (installs debootstrap and systemd-container with apt-get
# when missing). Binds the host's /run/openclaw and one directory under /opt/openclaw into the box at
# the same paths (the engine resolves bind-mount sources on the host): it refuses to run on a host
# where spotkeeper itself runs. Runs are serialised with a lock file.
# Env: SPOTKEEPER_BIN (default target/debug/spotkeeper), FAKE_OPENCLAW_IMAGE, DEBIAN_MIRROR (default:
# from apt's sources), SPOTKEEPER_NSPAWN_CACHE, KEEP_BOX=1 (leave the run directory for debugging).
# Prints `systemd-check: N passed, M failed`; exit 0 only when nothing failed.
set -euo pipefail
export LC_ALL=C

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${SPOTKEEPER_BIN:-$repo/target/debug/spotkeeper}"
[[ "$bin" == /* ]] || bin="$PWD/$bin"
unit="$repo/systemd/spotkeeper.service"
image="${FAKE_OPENCLAW_IMAGE:-spotkeeper-test/fake-openclaw:1}"

# ---- constants ---------------------------------------------------------------------------------
SUITE=bookworm
ROOT_PACKAGES=systemd,systemd-sysv,dbus,ca-certificates
CACHE_DIR="${SPOTKEEPER_NSPAWN_CACHE:-/var/cache/spotkeeper-nspawn}"
ROOT_CACHE="$CACHE_DIR/$SUITE-root"
# Written last into a finished root: a root without it is not used.
ROOT_STAMP=.spotkeeper-nspawn-root-v1
S3S_FS_VERSION=0.14.1
ACCESS_KEY=test SECRET_KEY=test REGION=us-east-1
BUCKET=systemd-check
# Paths inside the box, as the unit and the default config have them.
BOX_BIN=/usr/local/bin/spotkeeper
BOX_CONFIG=/etc/spotkeeper/spotkeeper.toml
BOX_PASSWORD=/etc/spotkeeper/repository-password
BOX_DROPIN=/etc/systemd/system/spotkeeper.service.d/test.conf
ENV_DIR=/run/openclaw
ENV_FILE=$ENV_DIR/.env
# Short enough that checks 4 and 5 take seconds; the daemon pings every WatchdogSec/2.
WATCHDOG_SEC=6
# Check 4: an incompressible state file uploaded through the proxy at this rate (all connections
# together) takes ~16 s, past WATCHDOG_SEC. It is one PUT that the kernel's send buffer (up to
# tcp_wmem's 4 MiB) takes almost at once: the daemon then waits for S3's answer with no byte
# moving in its own hands, which is still a live request (within its own timeouts), not a hang.
SLOW_STATE_MIB=4
SLOW_RATE_BYTES=$((256 * 1024))
# The journal field a snapshot's id is logged in (`journalctl SNAPSHOT_ID=...`).
SNAPSHOT_FIELD=SNAPSHOT_ID
# Bounds on every wait (seconds).
BOOT_TIMEOUT=60
START_TIMEOUT=120
STOP_TIMEOUT=200
SERVER_TIMEOUT=30
LOCK_TIMEOUT=900

# RestartSec= of the unit as committed, in seconds: the waits after a kill depend on it.
restart_sec="$(sed -n 's/^RestartSec=\([0-9]*\)s\?$/\1/p' "$unit" | tail -1)"
restart_sec="${restart_sec:-10}"

log() { echo "systemd-check: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, mount, systemd-nspawn)"
[[ -x "$bin" ]] || die "no binary at $bin (set SPOTKEEPER_BIN)"
if ! docker info >/dev/null 2>&1; then
  echo "skip   systemd-check: no Docker engine answers"
  echo "systemd-check: 0 passed, 0 failed"
  exit 0
fi

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
if [[ ${#need[@]} -gt 0 ]]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# One run at a time on this host: the box binds the host's /run/openclaw, and the cache is built
# only once. (The lock lives outside the work tree, like start-moto.sh's.)
mkdir -p "$CACHE_DIR"
lock="${TMPDIR:-/tmp}/spotkeeper-systemd-check.lock"
exec 8>"$lock"
flock -w "$LOCK_TIMEOUT" 8 || die "another systemd-check still holds $lock after ${LOCK_TIMEOUT}s"

# A production host's secrets must never be touched.
if [[ -e /run/spotkeeper/control.sock || -e "$ENV_FILE" ]]; then
  die "this host has /run/spotkeeper/control.sock or $ENV_FILE: spotkeeper runs here (or a killed check left them); not binding them"
fi

# ---- per-run names and clean-up ------------------------------------------------------------------
run_id="$$-$(date +%s)"
machine="spotkeeper-check-$$"
container="spotkeeper-systemd-check-$$"
prefix="run-$run_id"
ssm_path="/openclaw/systemd-check-$$/"
run_dir="$(mktemp -d /var/tmp/spotkeeper-systemd-check.XXXXXX)"
box_root="$run_dir/root"
# The state directory's parent: under the unit's ReadWritePaths=/opt/openclaw, unique per run,
# bound into the box at the same path.
state_parent="/opt/openclaw/systemd-check-$$"
state_dir="$state_parent/.openclaw"
s3_root="$run_dir/s3"
slow_flag="$run_dir/s3-slow"

created_opt=no created_env_dir=no overlay=no
nspawn_pid="" box_pid="" s3_pid="" proxy_pid="" moto_pid=""

stop_pid() {
  [[ -n "$1" ]] || return 0
  kill "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

cleanup() {
  set +e
  if [[ -n "$nspawn_pid" ]] && kill -0 "$nspawn_pid" 2>/dev/null; then
    # The box's journal lives in its /run: keep a copy when asked to keep the run.
    [[ "${KEEP_BOX:-0}" == 1 && -n "$box_pid" ]] \
      && timeout 20 nsenter -t "$box_pid" -a journalctl --no-pager -o short-precise >"$run_dir/journal.txt" 2>&1
    # A stopped daemon cannot stop: wake it before powering off.
    [[ -n "$box_pid" ]] && timeout 10 nsenter -t "$box_pid" -a systemctl kill -s CONT spotkeeper >/dev/null 2>&1
    [[ -n "$box_pid" ]] && timeout 10 nsenter -t "$box_pid" -a systemctl poweroff --no-block >/dev/null 2>&1
    for _ in $(seq 300); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
    # SIGTERM asks nspawn to power the container off; SIGKILL after 5 s (stop_pid).
    stop_pid "$nspawn_pid"
  fi
  docker rm -f "$container" >/dev/null 2>&1
  stop_pid "$proxy_pid"; stop_pid "$s3_pid"; stop_pid "$moto_pid"
  if [[ $overlay == yes ]]; then umount "$box_root" 2>/dev/null || umount -l "$box_root"; fi
  rm -rf "$state_parent"
  [[ $created_opt == yes ]] && rmdir /opt/openclaw 2>/dev/null
  if [[ $created_env_dir == yes ]]; then rm -rf "$ENV_DIR"; else rm -f "$ENV_FILE"; fi
  if [[ "${KEEP_BOX:-0}" == 1 ]]; then log "kept $run_dir (the box's journal: $run_dir/journal.txt)"; else rm -rf "$run_dir"; fi
}
trap cleanup EXIT
# Interrupted runs clean up too (bash runs the EXIT trap on exit, not on a fatal signal).
trap 'exit 130' INT TERM

# wait_until SECONDS COMMAND...: true as soon as COMMAND succeeds, false after SECONDS.
wait_until() {
  local limit=$1; shift
  local deadline=$((SECONDS + limit))
  while ((SECONDS < deadline)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  "$@" >/dev/null 2>&1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---- the cached root -----------------------------------------------------------------------------
# The mirror apt itself uses for $SUITE (deb822 .sources or one-line .list), unless DEBIAN_MIRROR.
debian_mirror() {
  if [[ -n "${DEBIAN_MIRROR:-}" ]]; then echo "$DEBIAN_MIRROR"; return; fi
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -e "$f" ]] || continue
    uri="$(awk -v suite="$SUITE" 'BEGIN { RS = ""; FS = "\n" }
      {
        types = uris = suites = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^Types:/) types = $i
          if ($i ~ /^URIs:/) uris = $i
          if ($i ~ /^Suites:/) suites = $i " "
        }
        if (types ~ / deb( |$)/ && suites ~ (" " suite " ")) { split(uris, u, " "); print u[2]; exit }
      }' "$f")"
    [[ -n "$uri" ]] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -e "$f" ]] || continue
    # deb [options] URI SUITE COMPONENTS...
    uri="$(sed -e 's/\[[^]]*\]//' "$f" | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }')"
    [[ -n "$uri" ]] && { echo "$uri"; return; }
  done
  return 1
}

# debootstrap into a temporary directory, then rename: an interrupted build never looks finished.
ensure_root() {
  [[ -e "$ROOT_CACHE/$ROOT_STAMP" ]] && return 0
  local mirror tmp
  # Left by an interrupted build (the lock is ours: none is running).
  rm -rf "$CACHE_DIR"/.build.*
  mirror="$(debian_mirror)" || die "no deb line for $SUITE in apt's sources; set DEBIAN_MIRROR"
  tmp="$(mktemp -d "$CACHE_DIR/.build.XXXXXX")"
  log "debootstrapping $SUITE from $mirror into the cache (once; about a minute)"
  if ! debootstrap --variant=minbase --include="$ROOT_PACKAGES" "$SUITE" "$tmp" "$mirror" >"$tmp.log" 2>&1; then
    tail -20 "$tmp.log" >&2
    rm -rf "$tmp" "$tmp.log"
    die "debootstrap failed"
  fi
  # Package caches and logs are dead weight in every run's overlay.
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/* "$tmp.log"
  touch "$tmp/$ROOT_STAMP"
  rm -rf "$ROOT_CACHE"
  mv -T "$tmp" "$ROOT_CACHE"
}

# This run's root: an overlay on the cache (the cache stays pristine), or a copy where overlayfs
# is not available.
prepare_box_root() {
  mkdir -p "$box_root" "$run_dir/upper" "$run_dir/work"
  if mount -t overlay overlay -o "lowerdir=$ROOT_CACHE,upperdir=$run_dir/upper,workdir=$run_dir/work" "$box_root" 2>/dev/null; then
    overlay=yes
  else
    log "overlayfs unavailable; copying the root"
    cp -a "$ROOT_CACHE/." "$box_root/"
  fi
}

# ---- servers on the host -------------------------------------------------------------------------
# The S3 server: s3s-fs in the project's own examples/demo-s3, which `make test` has built beside
# the binary (a `cargo install s3s-fs` would compile it all again: minutes of CI).
s3_server=""
ensure_s3s_fs() {
  local built
  built="$(dirname "$bin")/examples/demo-s3"
  if [[ -x "$built" ]]; then
    s3_server="$built"
    return 0
  fi
  log "building examples/demo-s3 (s3s-fs $S3S_FS_VERSION) with cargo"
  (cd "$repo" && cargo build --locked --quiet --example demo-s3)
  s3_server="$repo/target/debug/examples/demo-s3"
}

# A TCP proxy in front of s3s-fs: while $slow_flag exists it forwards uploads (client to server)
# at SLOW_RATE_BYTES per second over all connections, so a snapshot takes as long as check 4
# needs. A small fixed receive buffer keeps the proxy from soaking up the upload in the kernel.
# Writes its port to the file given.
S3_PROXY_PY='
import os, socket, sys, threading, time
upstream, flag, rate, port_file = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
lock = threading.Lock()
next_free = [0.0]
def throttle(size):
    # One shared schedule: each chunk is sent when the link would be free for it.
    with lock:
        due = max(time.monotonic(), next_free[0]) + size / rate
        next_free[0] = due
    time.sleep(max(0.0, due - time.monotonic()))
def pipe(src, dst, throttled):
    try:
        while True:
            data = src.recv(16384)
            if not data:
                break
            if throttled and os.path.exists(flag):
                throttle(len(data))
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
def serve(client):
    try:
        server = socket.create_connection(("127.0.0.1", upstream))
    except OSError:
        client.close()
        return
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    up = threading.Thread(target=pipe, args=(client, server, True), daemon=True)
    up.start()
    pipe(server, client, False)
    up.join()
    client.close()
    server.close()
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
with open(port_file + ".tmp", "w") as f:
    f.write(str(listener.getsockname()[1]))
os.rename(port_file + ".tmp", port_file)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
'

start_servers() {
  mkdir -p "$s3_root/$BUCKET"
  local s3_port moto_log="$run_dir/moto.log"
  s3_port="$(free_port)"
  AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" "$s3_server" "$s3_port" "$s3_root" \
    >"$run_dir/s3s-fs.log" 2>&1 &
  s3_pid=$!
  wait_until "$SERVER_TIMEOUT" port_open "$s3_port" || { cat "$run_dir/s3s-fs.log" >&2; die "s3s-fs did not listen on $s3_port"; }
  python3 -c "$S3_PROXY_PY" "$s3_port" "$slow_flag" "$SLOW_RATE_BYTES" "$run_dir/proxy.port" \
    >"$run_dir/proxy.log" 2>&1 &
  proxy_pid=$!
  wait_until "$SERVER_TIMEOUT" test -s "$run_dir/proxy.port" || { cat "$run_dir/proxy.log" >&2; die "the S3 proxy did not start"; }
  s3_endpoint="http://127.0.0.1:$(cat "$run_dir/proxy.port")"

  "$repo/testing/start-moto.sh"
  moto_port="$(free_port)"
  "$repo/testing/start-moto.sh" "$moto_port" >"$moto_log" 2>&1 &
  moto_pid=$!
  wait_until "$SERVER_TIMEOUT" port_open "$moto_port" || { tail -20 "$moto_log" >&2; die "moto did not listen on $moto_port"; }
  AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY AWS_DEFAULT_REGION=$REGION \
    "$repo/.venv-moto/bin/python" -c '
import sys, boto3
boto3.client("ssm", endpoint_url=sys.argv[1]).put_parameter(
    Name=sys.argv[2] + "API_KEY", Value="s3cret", Type="SecureString", Overwrite=True)
' "http://127.0.0.1:$moto_port" "$ssm_path"
}

# ---- the box ---------------------------------------------------------------------------------------
# box_within SECONDS COMMAND...: run COMMAND inside the booted container (all its namespaces, a
# clean environment); ended (exit 124) after SECONDS.
box_within() {
  local limit=$1; shift
  timeout "$limit" nsenter -t "$box_pid" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}
# box COMMAND...: the same, for commands that answer at once (systemctl show, journalctl).
box() { box_within 60 "$@"; }
prop() { box systemctl show -p "$1" --value spotkeeper.service; }
journal() { box journalctl --no-pager -u spotkeeper.service "$@"; }
# Format 2: one object per restic snapshot under repo/snapshots/.
snapshot_count() { find "$s3_root/$BUCKET/$prefix/repo/snapshots" -type f 2>/dev/null | wc -l; }

write_config() {
  local extra="${1:-}"
  # Format 2 (the only format written): the repository password in a 0600 file under /etc,
  # which the unit's sandbox keeps readable (on EC2 it comes from SSM: password_ssm).
  mkdir -p "$box_root$(dirname "$BOX_PASSWORD")"
  ( umask 077; [[ -s "$box_root$BOX_PASSWORD" ]] || echo "systemd-check-password" >"$box_root$BOX_PASSWORD" )
  cat >"$box_root$BOX_CONFIG" <<EOF
# Written by testing/systemd-check.sh for one run.
[state]
dir = "$state_dir"
work_dir = "/var/lib/spotkeeper"

[s3]
bucket = "$BUCKET"
prefix = "$prefix"
region = "$REGION"
endpoint = "$s3_endpoint"
# Check 4's upload is throttled on purpose: give each request room.
timeout = "120s"

[repository]
password_file = "$BOX_PASSWORD"

[snapshot]
# Scheduled snapshots stay out of the way; the checks ask for theirs.
interval = "1h"

[secrets]
ssm_path = "$ssm_path"
env_file = "$ENV_FILE"
endpoint = "http://127.0.0.1:$moto_port"

[container]
name = "$container"
image = "$image"
ports = ["127.0.0.1:$health_port:18789"]
health_url = "http://127.0.0.1:$health_port/healthz"
health_interval = "1s"
stop_timeout = "10s"
start_timeout = "60s"
# This engine has no journald log driver.
log_driver = "json-file"

[container.environment]
WRITE_INTERVAL_MS = "200"
DRAIN_MS = "300"

[daemon]
socket = "/run/spotkeeper/control.sock"

[spot]
enabled = false

[metrics]
enabled = false

[verify]
daily = false
$extra
EOF
}

# The drop-in: test credentials (the endpoints are in the config), and a WatchdogSec= when given.
write_dropin() {
  local watchdog="${1:-}"
  mkdir -p "$(dirname "$box_root$BOX_DROPIN")"
  {
    echo "# Written by testing/systemd-check.sh: test credentials for the local S3 and SSM servers."
    echo "[Service]"
    echo "Environment=AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY AWS_REGION=$REGION"
    echo "Environment=AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true"
    if [[ -n "$watchdog" ]]; then echo "WatchdogSec=${watchdog}s"; fi
  } >"$box_root$BOX_DROPIN"
}

install_into_box() {
  install -D -m 0755 "$bin" "$box_root$BOX_BIN"
  install -D -m 0644 "$unit" "$box_root/etc/systemd/system/spotkeeper.service"
  # Requires=docker.service: the engine is the host's; a stand-in satisfies the dependency.
  cat >"$box_root/etc/systemd/system/docker.service" <<'EOF'
[Unit]
Description=stand-in for docker.service (the host's engine is bound in at /run/docker.sock)
[Service]
Type=oneshot
ExecStart=/bin/true
RemainAfterExit=yes
EOF
  mkdir -p "$(dirname "$box_root$BOX_CONFIG")" "$box_root$state_parent" "$box_root$ENV_DIR"
  write_config
  write_dropin
  # A login prompt on the console is noise in the log and slows the boot.
  ln -sf /dev/null "$box_root/etc/systemd/system/console-getty.service"
  echo "$machine" >"$box_root/etc/hostname"
}

# Boot is over: "running", or "degraded" (some unit failed; said below, not fatal for the checks).
box_booted() { [[ "$(box systemctl is-system-running 2>/dev/null)" =~ ^(running|degraded)$ ]]; }

boot_box() {
  systemd-nspawn -D "$box_root" -M "$machine" --boot --register=no --keep-unit --console=passive \
    --bind=/var/run/docker.sock:/run/docker.sock --bind="$state_parent" --bind="$ENV_DIR" \
    >"$run_dir/nspawn.log" 2>&1 &
  nspawn_pid=$!
  # PID 1 of the box is nspawn's child.
  wait_until 20 pgrep -P "$nspawn_pid" || { cat "$run_dir/nspawn.log" >&2; die "systemd-nspawn started no init"; }
  box_pid="$(pgrep -P "$nspawn_pid" | head -1)"
  if ! wait_until "$BOOT_TIMEOUT" box_booted; then
    tail -30 "$run_dir/nspawn.log" >&2
    die "the box did not finish booting within ${BOOT_TIMEOUT}s ($(box systemctl is-system-running 2>&1))"
  fi
  if [[ "$(box systemctl is-system-running 2>/dev/null)" == degraded ]]; then
    log "the box booted degraded: $(box systemctl --failed --plain --no-legend 2>&1 | paste -sd' ')"
  fi
}

# ---- results ---------------------------------------------------------------------------------------
passed=0 failed=0
pass() { echo "PASS   $1: $2"; passed=$((passed + 1)); }
# fail NAME WHY: prints the reason and the end of the unit's journal.
fail() {
  echo "FAIL   $1: $2"
  failed=$((failed + 1))
  journal -n 30 -o short-precise 2>&1 | sed 's/^/         | /'
}

# The unit is active and READY: waits out a pending restart or start, starts it if it is down.
ensure_active() {
  local deadline=$((SECONDS + restart_sec + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    case "$(prop ActiveState)" in
      active) return 0 ;;
      # activating: auto-restart pending, or READY=1 not sent yet; let systemd finish.
      activating | deactivating | reloading) sleep 0.5 ;;
      *) box_within "$START_TIMEOUT" systemctl start spotkeeper.service >/dev/null 2>&1 || sleep 0.5 ;;
    esac
  done
  return 1
}

# Predicates for wait_until.
restarted_since() { [[ "$(prop NRestarts)" -gt "$1" && "$(prop ActiveState)" == active ]]; }
restart_counted_since() { [[ "$(prop NRestarts)" -gt "$1" ]]; }
has_snapshot_entry() { [[ -n "$(journal -o json "$SNAPSHOT_FIELD=$1")" ]]; }
watchdog_timeouts() { journal -o cat | grep -ci 'watchdog timeout' || true; }

# Applies a new drop-in and restarts the unit with it.
restart_with_dropin() {
  write_dropin "${1:-}"
  box systemctl daemon-reload
  box_within "$STOP_TIMEOUT" systemctl restart spotkeeper.service
}

# ---- the checks ------------------------------------------------------------------------------------
check_ready() {
  local name="1 ready" rc=0 started status
  started=$SECONDS
  box_within "$START_TIMEOUT" systemctl start spotkeeper.service || rc=$?
  status="$(prop StatusText)"
  if [[ $rc -ne 0 ]]; then
    fail "$name" "systemctl start exited $rc (ActiveState=$(prop ActiveState), Result=$(prop Result))"
  elif [[ "$(prop ActiveState)" != active ]]; then
    fail "$name" "systemctl start returned but ActiveState=$(prop ActiveState)"
  elif [[ "$status" != *running* ]]; then
    fail "$name" "StatusText='$status' does not mention running"
  else
    pass "$name" "systemctl start returned after READY=1 in $((SECONDS - started))s; StatusText='$status'"
  fi
}

check_journal_fields() {
  local name="2 journal" out id
  ensure_active || { fail "$name" "the unit is not active"; return; }
  if ! out="$(box_within 120 "$BOX_BIN" --config "$BOX_CONFIG" snapshot --json 2>&1)"; then
    fail "$name" "spotkeeper snapshot failed: $out"
    return
  fi
  id="$(echo "$out" | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' | head -1)"
  [[ -n "$id" ]] || { fail "$name" "no snapshot id in: $out"; return; }
  # A field match: journald indexed the id as a field of its own.
  if wait_until 10 has_snapshot_entry "$id"; then
    pass "$name" "snapshot $id taken through the control socket; journal entry with $SNAPSHOT_FIELD=$id: $(journal -o cat "$SNAPSHOT_FIELD=$id" | tail -1)"
  else
    # Say what the entry carries instead (e.g. a prefixed name), so the fix is obvious.
    local fields
    fields="$(journal -o json | grep -F "\"$id\"" | grep -o '"[A-Z_]*":"'"$id"'"' | sort -u | paste -sd' ')"
    fail "$name" "no journal entry with the field $SNAPSHOT_FIELD=$id; the id is logged as: ${fields:-nothing}"
  fi
}

check_kill_restart() {
  local name="3 kill-restart" restarts pid new_pid marker="$state_dir/systemd-check-marker"
  ensure_active || { fail "$name" "the unit is not active"; return; }
  restarts="$(prop NRestarts)"
  pid="$(prop MainPID)"
  # Written after check 2's snapshot: a restore from S3 would remove it.
  echo "written after the last snapshot" >"$marker"
  box systemctl kill -s KILL spotkeeper.service
  if ! wait_until $((restart_sec + START_TIMEOUT)) restarted_since "$restarts"; then
    fail "$name" "not restarted and READY within $((restart_sec + START_TIMEOUT))s (NRestarts=$(prop NRestarts), ActiveState=$(prop ActiveState))"
    return
  fi
  new_pid="$(prop MainPID)"
  local decision
  decision="$(journal -o json "_PID=$new_pid" | grep '"boot restore decision"' | tail -1)"
  if [[ ! -e "$marker" ]]; then
    fail "$name" "restarted (pid $pid -> $new_pid) but the marker written after the last snapshot is gone: restored over local state"
  elif ! [[ "$decision" =~ \"(F_)?ACTION\":\"KeepLocal\" ]]; then
    fail "$name" "the new start (pid $new_pid) did not log a KeepLocal boot decision: ${decision:-no decision logged}"
  else
    pass "$name" "SIGKILL -> restarted by systemd after RestartSec=${restart_sec}s (NRestarts $restarts -> $(prop NRestarts), pid $pid -> $new_pid); the marker is still there; the new start logged 'boot restore decision' with ${BASH_REMATCH[0]}"
  fi
}

check_watchdog_slow_snapshot() {
  local name="4 watchdog-slow" restarts pid out rc=0 started took timeouts
  if ! restart_with_dropin "$WATCHDOG_SEC" || ! ensure_active; then
    fail "$name" "the unit did not start again with WatchdogSec=${WATCHDOG_SEC}s"
    return
  fi
  restarts="$(prop NRestarts)"
  pid="$(prop MainPID)"
  timeouts="$(watchdog_timeouts)"
  head -c $((SLOW_STATE_MIB * 1024 * 1024)) /dev/urandom >"$state_dir/systemd-check-incompressible.bin"
  touch "$slow_flag"
  # While it runs, sample the unit's STATUS= once a second: the daemon shows the snapshot's progress.
  rm -f "$run_dir/status-samples" "$run_dir/status-stop"
  (for _ in $(seq 180); do
    [[ -f "$run_dir/status-stop" ]] && break
    prop StatusText >>"$run_dir/status-samples" 2>/dev/null
    sleep 1
  done) &
  local sampler=$! progress_seen
  started=$SECONDS
  out="$(box_within 180 "$BOX_BIN" --config "$BOX_CONFIG" snapshot --json 2>&1)" || rc=$?
  took=$((SECONDS - started))
  touch "$run_dir/status-stop"
  wait "$sampler" || true
  progress_seen="$(grep -m1 '^snapshot: .*MiB' "$run_dir/status-samples" || true)"
  rm -f "$slow_flag" "$state_dir/systemd-check-incompressible.bin"
  local watchdog_log=""
  [[ "$(watchdog_timeouts)" -gt "$timeouts" ]] && watchdog_log="$(journal -o cat | grep -i 'watchdog timeout' | tail -1)"
  if [[ $rc -eq 0 && "$(prop NRestarts)" == "$restarts" && "$(prop MainPID)" == "$pid" && -z "$watchdog_log" ]]; then
    if ((took > WATCHDOG_SEC)) && [[ -z "$progress_seen" ]]; then
      fail "$name" "the ${took}s snapshot completed but its progress never showed in STATUS (samples: $(sort -u "$run_dir/status-samples" | head -3 | paste -sd'|'))"
    elif ((took > WATCHDOG_SEC)); then
      pass "$name" "a ${took}s snapshot under WatchdogSec=${WATCHDOG_SEC}s completed, daemon not killed (NRestarts=$restarts); STATUS showed \"$progress_seen\""
    else
      fail "$name" "the snapshot took only ${took}s, not longer than WatchdogSec=${WATCHDOG_SEC}s: the check proved nothing"
    fi
  else
    fail "$name" "snapshot exit $rc after ${took}s; NRestarts $restarts -> $(prop NRestarts); MainPID $pid -> $(prop MainPID); ${watchdog_log:-no watchdog message}; output: $(echo "$out" | tail -2 | paste -sd' ')"
  fi
}

check_watchdog_hung() {
  local name="5 watchdog-hung" restarts pid timeouts
  ensure_active || { fail "$name" "the unit is not active"; return; }
  restarts="$(prop NRestarts)"
  pid="$(prop MainPID)"
  timeouts="$(watchdog_timeouts)"
  box systemctl kill -s SIGSTOP spotkeeper.service
  if wait_until $((WATCHDOG_SEC + restart_sec + START_TIMEOUT)) restart_counted_since "$restarts"; then
    local why=""
    [[ "$(watchdog_timeouts)" -gt "$timeouts" ]] && why="$(journal -o cat | grep -i 'watchdog timeout' | tail -1)"
    if [[ -n "$why" ]]; then
      pass "$name" "SIGSTOPped daemon (pid $pid) killed by the watchdog and restarted (NRestarts $restarts -> $(prop NRestarts)): $why"
    else
      fail "$name" "restarted (NRestarts $restarts -> $(prop NRestarts)) but the journal has no watchdog timeout"
    fi
  else
    fail "$name" "a SIGSTOPped daemon was not restarted within $((WATCHDOG_SEC + restart_sec + START_TIMEOUT))s"
  fi
  # A stopped process that survived must not stay stopped.
  # shellcheck disable=SC2016 # $1 is expanded by the box's sh
  box sh -c 'kill -CONT "$1"' _ "$pid" 2>/dev/null || true
  ensure_active || true
}

check_stop() {
  local name="6 stop" before pid out rc=0 final
  ensure_active || { fail "$name" "the unit is not active"; return; }
  before="$(snapshot_count)"
  pid="$(prop MainPID)"
  echo "changed before stop" >"$state_dir/systemd-check-before-stop"
  [[ -e "$ENV_FILE" ]] || { fail "$name" "precondition: $ENV_FILE does not exist while the daemon runs"; return; }
  out="$(box_within "$STOP_TIMEOUT" systemctl stop spotkeeper.service 2>&1)" || rc=$?
  final="$(journal -o cat "_PID=$pid" | grep 'final snapshot' | tail -1)"
  local after
  after="$(snapshot_count)"
  if [[ $rc -ne 0 ]]; then
    fail "$name" "systemctl stop exited $rc: $out"
  elif [[ "$after" -le "$before" || -z "$final" ]]; then
    fail "$name" "no final snapshot: $before -> $after complete snapshots in S3; journal: ${final:-nothing about a final snapshot}"
  else
    pass "$name" "final snapshot on stop ($before -> $after complete snapshots in S3; Result=$(prop Result)): $final"
  fi
  # Here /run/openclaw is bound from the host's disk, where systemd's RuntimeDirectory= clean-up
  # refuses to delete: the file is gone only if the daemon removed it itself.
  local removed
  removed="$(journal -o cat "_PID=$pid" | grep -m1 -i 'secrets file removed' || true)"
  if [[ -e "$ENV_FILE" ]]; then
    fail "6 stop-env-file" "$ENV_FILE (the secrets) still exists after systemctl stop"
  else
    pass "6 stop-env-file" "$ENV_FILE is gone after systemctl stop; the daemon logged: ${removed:-nothing about it}"
  fi
}

check_config_error() {
  local name="7 config-error" rc=0 status before restarts state sub
  box systemctl stop spotkeeper.service 2>/dev/null || true
  # A misspelt key (it lands in [verify], the last section): deny_unknown_fields rejects it.
  write_config 'dayly = true'
  box_within "$START_TIMEOUT" systemctl start spotkeeper.service >/dev/null 2>&1 || rc=$?
  before="$(prop NRestarts)"
  # Long enough for a restart to have happened, had systemd scheduled one.
  sleep $((restart_sec + 3))
  status="$(prop ExecMainStatus)"
  restarts="$(prop NRestarts)"
  state="$(prop ActiveState)"
  sub="$(prop SubState)"
  local error
  error="$(journal -o cat "_PID=$(prop ExecMainPID)" | grep -m1 -i 'error' || true)"
  if [[ $rc -ne 0 && "$status" == 3 && "$restarts" == "$before" && "$state" == failed ]]; then
    pass "$name" "systemctl start failed; ExecMainStatus=3, NRestarts=$restarts still after $((restart_sec + 3))s, ActiveState=failed; the daemon said: ${error:-nothing}"
  else
    fail "$name" "systemctl start exit $rc; ExecMainStatus=$status NRestarts $before -> $restarts ActiveState=$state SubState=$sub (want 3, unchanged, failed); ${error:-}"
  fi
  write_config
}

# ---- main ------------------------------------------------------------------------------------------
total_start=$SECONDS
ensure_root
log "root ready after $((SECONDS - total_start))s"
ensure_s3s_fs
"$repo/testing/build-fake-image.sh" >/dev/null
start_servers
[[ -d /opt/openclaw ]] || { mkdir -p /opt/openclaw; created_opt=yes; }
mkdir -p "$state_parent"
[[ -d "$ENV_DIR" ]] || { mkdir -m 0700 "$ENV_DIR"; created_env_dir=yes; }
health_port="$(free_port)"
prepare_box_root
install_into_box
check_config_out="$("$bin" check-config --config "$box_root$BOX_CONFIG" 2>&1)" || die "the test config does not pass check-config: $check_config_out"
boot_box
log "box $machine booted after $((SECONDS - total_start))s"

# Each check prints its own PASS/FAIL lines; a check that ends without one is a FAIL too.
run_check() {
  local verdicts=$((passed + failed))
  # `|| true`: a failing command inside a check must not end the run (errexit is off in it).
  "$1" || true
  if ((passed + failed == verdicts)); then fail "$1" "ended without a verdict"; fi
}
run_check check_ready
run_check check_journal_fields
run_check check_kill_restart
run_check check_watchdog_slow_snapshot
run_check check_watchdog_hung
run_check check_stop
run_check check_config_error

log "done in $((SECONDS - total_start))s"
echo "systemd-check: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
