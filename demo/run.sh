#!/usr/bin/env bash
# make demo: a local S3 server and SSM emulator, the fake OpenClaw image, a seeded secret and a
# snapshot left by a "previous machine", then `spotkeeper run` in the foreground. Within a minute
# you see the boot restore, the container started, snapshots every 20 s and `spotkeeper status`.
# Ctrl-C stops the daemon the way systemd would: container first, then a final snapshot.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
bin="$repo/target/release/spotkeeper"
s3bin="$repo/target/release/examples/demo-s3"
demo="$(mktemp -d /tmp/spotkeeper-demo.XXXXXX)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3_port=$(free_port); ssm_port=$(free_port); app_port=$(free_port)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  docker rm -f spotkeeper-demo >/dev/null 2>&1 || true
  echo "demo files left in $demo"
}
trap cleanup EXIT

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=testsecret AWS_REGION=us-east-1
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true

echo "== building the fake OpenClaw image and the SSM emulator (first run: a minute or two)"
image=$(testing/build-fake-image.sh)
testing/start-moto.sh
"$s3bin" "$s3_port" "$demo/s3" demo-bucket & pids+=($!)
testing/start-moto.sh "$ssm_port" >/dev/null 2>&1 & pids+=($!)
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$ssm_port) 2>/dev/null && break; sleep 0.1; done
"$repo/.venv-moto/bin/python" - "$ssm_port" <<'PY'
import sys, boto3
ssm = boto3.client("ssm", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1")
ssm.put_parameter(Name="/openclaw/demo/OPENCLAW_API_KEY", Value="demo-secret-value", Type="SecureString", Overwrite=True)
PY
echo "== seeded secret /openclaw/demo/OPENCLAW_API_KEY in SSM"

# The repository password (format 2 encrypts every snapshot). On EC2 it lives in SSM
# (`[repository] password_ssm`, made by `spotkeeper init --create-password`); here a 0600 file.
( umask 077; head -c 32 /dev/urandom | base64 > "$demo/repository-password" )
echo "== repository password in $demo/repository-password (0600)"

cat > "$demo/previous.toml" <<EOF2
[state]
dir = "$demo/previous-machine/state"
work_dir = "$demo/previous-machine/work"
[s3]
bucket = "demo-bucket"
prefix = "lab"
endpoint = "http://127.0.0.1:$s3_port"
[repository]
password_file = "$demo/repository-password"
EOF2
mkdir -p "$demo/previous-machine/state/agents/main/sessions"
echo '{"seq":0,"text":"hello from the previous instance"}' > "$demo/previous-machine/state/agents/main/sessions/old.jsonl"
echo "== a previous instance takes the first snapshot (it creates the encrypted repository) before it is interrupted"
"$bin" --config "$demo/previous.toml" snapshot

cat > "$demo/spotkeeper.toml" <<EOF2
[state]
dir = "$demo/openclaw/.openclaw"
work_dir = "$demo/spotkeeper"
[s3]
bucket = "demo-bucket"
prefix = "lab"
endpoint = "http://127.0.0.1:$s3_port"
[repository]
password_file = "$demo/repository-password"
[snapshot]
interval = "20s"
[secrets]
ssm_path = "/openclaw/demo/"
env_file = "$demo/run/openclaw/.env"
refresh = "1m"
endpoint = "http://127.0.0.1:$ssm_port"
[container]
name = "spotkeeper-demo"
image = "$image"
ports = ["127.0.0.1:$app_port:18789"]
health_url = "http://127.0.0.1:$app_port/healthz"
stop_timeout = "10s"
log_driver = "json-file"
[container.environment]
WRITE_INTERVAL_MS = "200"
[daemon]
socket = "$demo/run/spotkeeper/control.sock"
[spot]
enabled = false     # not on EC2
[metrics]
enabled = false     # no CloudWatch here
EOF2
echo "== config: $demo/spotkeeper.toml"
( sleep 12; while sleep 20; do echo; echo "== spotkeeper status"; "$bin" --config "$demo/spotkeeper.toml" status || true; echo; done ) & pids+=($!)
echo "== spotkeeper run (Ctrl-C to stop with a final snapshot)"
"$bin" --config "$demo/spotkeeper.toml" run || true
echo
echo "== spotkeeper list"
"$bin" --config "$demo/spotkeeper.toml" list
