#!/usr/bin/env bash
# LocalStack (CloudWatch and CloudWatch Logs; CloudWatch speaking the current SDK's protocol) for spotkeeper's tests.
#
#   testing/start-localstack.sh          create the venv if missing, then exit
#   testing/start-localstack.sh PORT     ... then exec LocalStack on 127.0.0.1:PORT (no Docker)
#
# Versions are the ones TESTING.md verified: Python 3.13 from pyenv, and pins that each fixed a
# start-up failure. Ready when GET /_localstack/health answers.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv-localstack"
stamp="$venv/.installed-2026.3.0"
python="${LOCALSTACK_PYTHON:-$(pyenv root 2>/dev/null || echo /root/.pyenv)/versions/3.13.0/bin/python3}"

if [[ ! -f "$stamp" ]]; then
  exec 9>"${TMPDIR:-/tmp}/spotkeeper-venv-localstack.lock"
  flock 9
  if [[ ! -f "$stamp" ]]; then
    echo "start-localstack: creating $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'localstack-core[runtime]==2026.3.0' 'cbor2<6' \
      'pyopenssl==24.2.1' 'cryptography==43.0.3' 'service_identity==24.2.0' 'joserfc==1.1.0' >&2
    touch "$stamp"
  fi
  flock -u 9
  exec 9>&-
fi
[[ $# -eq 0 ]] && exit 0
port="$1"
data="$(mktemp -d)"
export GATEWAY_LISTEN="127.0.0.1:$port" SERVICES=cloudwatch,logs DNS_ADDRESS=0 DISABLE_EVENTS=1 \
  SKIP_SSL_CERT_DOWNLOAD=1 LOCALSTACK_VOLUME_DIR="$data" FILESYSTEM_ROOT="$data/fs"
exec "$venv/bin/python" -m localstack.runtime.main
