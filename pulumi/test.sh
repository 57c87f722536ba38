#!/usr/bin/env bash
# Unit tests of the Pulumi program with Pulumi's mocks: no pulumi CLI, no AWS account, no network
# once the virtualenv exists.
#
# The virtualenv is .venv-pulumi at the repository root (Pulumi.yaml names it too, for `pulumi up`).
# It is (re)made when missing or when requirements.txt changed (~370 MB; about 20 s with a warm pip
# cache, longer cold). Concurrent first calls are serialised with flock.
# Env: PYTHON (default python3) for a new venv. Extra arguments go to pytest.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="$repo/.venv-pulumi"
stamp="$venv/.requirements-$(sha256sum "$here/requirements.txt" | cut -c1-16)"

if [[ ! -f "$stamp" ]]; then
  exec 9>"${TMPDIR:-/tmp}/spotkeeper-venv-pulumi-$(printf %s "$repo" | md5sum | cut -c1-12).lock"
  flock 9
  if [[ ! -f "$stamp" ]]; then
    echo "pulumi/test.sh: creating $venv from pulumi/requirements.txt" >&2
    started=$SECONDS
    rm -rf "$venv"
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
    touch "$stamp"
    echo "pulumi/test.sh: virtualenv ready in $((SECONDS - started)) s" >&2
  fi
  flock -u 9
  exec 9>&-
fi

cd "$here"
# No .pytest_cache or __pycache__ in the work tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
