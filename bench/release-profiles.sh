#!/usr/bin/env bash
# The release profile's options side by side: for each, a release build from scratch (its own
# target dir, the same command as `make release`), the binary's size, and the median wall time of
# a snapshot of the medium synthetic state to the local S3 server. Figures only; see
# docs/performance.md ("The release profile").
#   ./bench/release-profiles.sh                      all profiles below
#   ./bench/release-profiles.sh fat-1 thin-16        some of them
#   RUNS=5 ./bench/release-profiles.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
runs="${RUNS:-3}"
work="$(mktemp -d /tmp/spotkeeper-profiles.XXXXXX)"
trap 'kill "${s3_pid:-0}" 2>/dev/null || true' EXIT

# name -> "lto codegen-units"
declare -A PROFILES=(
  [fat-1]="fat 1"
  [thin-16]="thin 16"
  [thin-1]="thin 1"
  [off-16]="off 16"
)
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(fat-1 thin-16 off-16)

python3 bench/generate.py "$work/state" --scale medium >/dev/null
state_mib=$(du -sm "$work/state" | cut -f1)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

printf '%-8s %-10s %-9s %-10s %s\n' profile build_s size_MiB snapshot_s "(medium state, ${state_mib} MiB, median of $runs)"
for name in "${wanted[@]}"; do
  read -r lto units <<<"${PROFILES[$name]}"
  target="$work/target-$name"
  started=$(date +%s)
  CARGO_TARGET_DIR="$target" CARGO_PROFILE_RELEASE_LTO="$lto" CARGO_PROFILE_RELEASE_CODEGEN_UNITS="$units" \
    cargo build --locked --release --bin spotkeeper --example demo-s3 >"$work/build-$name.log" 2>&1
  build_s=$(($(date +%s) - started))
  bin="$target/release/spotkeeper"
  size=$(python3 -c "import os,sys; print(f'{os.path.getsize(sys.argv[1])/1048576:.1f}')" "$bin")

  port=$(free_port)
  "$target/release/examples/demo-s3" "$port" "$work/s3-$name" bench-bucket >/dev/null 2>&1 &
  s3_pid=$!
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  times=()
  for run in $(seq "$runs"); do
    cat >"$work/config-$name.toml" <<EOF
[state]
dir = "$work/state"
work_dir = "$work/work-$name-$run"
[s3]
bucket = "bench-bucket"
prefix = "run-$run"
region = "us-east-1"
endpoint = "http://127.0.0.1:$port"
EOF
    t0=$(date +%s.%N)
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=testsecret AWS_EC2_METADATA_DISABLED=true \
      "$bin" --config "$work/config-$name.toml" snapshot >/dev/null
    times+=("$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$t0" "$(date +%s.%N)")")
  done
  kill "$s3_pid" 2>/dev/null || true
  wait "$s3_pid" 2>/dev/null || true
  median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")
  printf '%-8s %-10s %-9s %-10s %s\n' "$name" "$build_s" "$size" "$median" "(${times[*]})"
  rm -rf "$target"
done
rm -rf "$work"
