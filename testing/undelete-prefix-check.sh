#!/usr/bin/env bash
# testing/undelete-prefix.py against moto's S3 with versioning (testing/undelete-prefix-test.py).
# Makes .venv-moto when missing (testing/start-moto.sh), then runs the tests with its Python
# (boto3 comes with moto). Extra arguments go to unittest. SEED=N replays one generated schedule.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/testing/start-moto.sh"
export PYTHONDONTWRITEBYTECODE=1
exec "$repo/.venv-moto/bin/python" "$repo/testing/undelete-prefix-test.py" "$@"
