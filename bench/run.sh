#!/usr/bin/env bash
# make bench: install the tools that are missing, build spotkeeper and the local S3 server (release),
# then run bench/run.py with the given arguments (default: small and medium, 3 runs each).
#   ./bench/run.sh --scales small,medium,large --runs 3
#   BENCH_NO_BUILD=1 ./bench/run.sh ...       use the binaries already in target/release
# Not part of `make test`; nothing here asserts a time. See docs/performance.md.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

export DEBIAN_FRONTEND=noninteractive
need_apt=()
for tool in rclone restic zstd; do
  command -v "$tool" >/dev/null || need_apt+=("$tool")
done
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bench: installing ${need_apt[*]}" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi

# aws-cli: the machine's own when it works (1.x or 2.x), else one in bench/.venv.
if [ -x bench/.venv/bin/aws ] || ! aws --version >/dev/null 2>&1; then
  if ! [ -x bench/.venv/bin/aws ]; then
    echo "bench: installing awscli into bench/.venv" >&2
    python3 -m venv bench/.venv
    bench/.venv/bin/pip install -q awscli >&2
  fi
  export PATH="$repo/bench/.venv/bin:$PATH"
fi

if [ "${BENCH_NO_BUILD:-}" != 1 ]; then
  cargo build --locked --release --bin spotkeeper --example demo-s3 >&2
fi
exec python3 bench/run.py "$@"
