#!/usr/bin/env bash
# Creates .venv (test tools, uv, scikit-learn for the examples' training scripts) if it is
# missing or its requirements changed. Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${GYRUS_PYTHON:-python3}"
stamp=.venv/.requirements.sha256
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "==> creating .venv with $($PY --version)"
"$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# uv installs the rest: faster than pip, and its cache then holds the wheels (tensorflow-cpu,
# onnxruntime) that gyrus installs into GYRUS_HOME/runtime on the first deploy of a test.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "$(grep '^uv==' tests/requirements.txt)"
.venv/bin/uv pip install --quiet --python .venv/bin/python -r tests/requirements.txt
echo "$want" > "$stamp"
