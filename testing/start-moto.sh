#!/usr/bin/env bash
# moto (AWS emulator: SSM, S3, ...) for spotkeeper's tests.
#
#   testing/start-moto.sh          create the venv if missing, then exit
#   testing/start-moto.sh PORT     ... then exec moto_server on 127.0.0.1:PORT
#
# The venv lives in .venv-moto at the repository root and is made once (about
# a minute); later calls only check a stamp file. Concurrent first calls are
# serialised with flock. Ready when GET http://127.0.0.1:PORT/ answers 200;
# POST /moto-api/reset wipes all state between tests.
# Env: PYTHON (default python3) to choose the interpreter for a new venv.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv-moto"
pin='moto[server]==5.2.5'
stamp="$venv/.installed-moto-5.2.5"

if [[ ! -f "$stamp" ]]; then
  # The lock lives outside the work tree so that nothing new needs ignoring.
  exec 9>"${TMPDIR:-/tmp}/spotkeeper-venv-moto-$(printf %s "$repo" | md5sum | cut -c1-12).lock"
  flock 9
  if [[ ! -f "$stamp" ]]; then
    echo "start-moto: creating $venv with $pin" >&2
    rm -rf "$venv"
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$pin" >&2
    touch "$stamp"
  fi
  flock -u 9
  exec 9>&-
fi

if [[ $# -eq 0 ]]; then
  exit 0
fi
port="$1"
if ! [[ "$port" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 [PORT]" >&2
  exit 2
fi
exec "$venv/bin/moto_server" -H 127.0.0.1 -p "$port"
