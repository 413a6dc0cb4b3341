#!/usr/bin/env bash
# Create .venv and install apr with its test, eval, scale and objectstore extras (the suite runs the graph on Dask
# and a work root in an S3 bucket); a no-op when pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.apr-installed
want="$(sha256sum pyproject.toml | cut -c1-64)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing apr and its pinned dependencies into .venv (first time: ~2 min)"
  .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q -e '.[test,eval,scale,objectstore]'
  echo "$want" > "$stamp"
fi
