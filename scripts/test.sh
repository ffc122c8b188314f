#!/usr/bin/env bash
# Runs the whole test suite: Rust unit and integration tests, then the end-to-end tests that
# drive the real gyrus binary, daemon, replicas and Python workers over HTTP on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-python.sh
# The gyrus Python module (gyrus.onnx.save_model/load_model) from this checkout.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps ./python
# A real S3-compatible server for the tests of s3:// models.
scripts/setup-s3s.sh
# Azurite, for the tests of az:// models (gs:// uses gcp-storage-emulator from PyPI).
scripts/setup-emulators.sh
# Debian's Chromium and ChromeDriver, for the dashboard's browser tests.
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  echo "==> installing chromium and chromium-driver (Debian packages)"
  sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
export GYRUS_TEST_S3S_FS="$PWD/.tools/bin/s3s-fs"

echo "==> cargo test"
# The engines' tests run real ONNX Runtime and TensorFlow (the libraries of the onnxruntime and
# tensorflow-cpu wheels in .venv) on models generated here; the end-to-end tests leave
# ORT_DYLIB_PATH and GYRUS_TF_LIBRARY unset so that gyrus installs its own runtimes, as it does
# for a new user.
models="$PWD/target/test-models"
.venv/bin/python scripts/make_models.py "$models" >/dev/null
tf_models="$PWD/target/test-tf-models"
.venv/bin/python scripts/make_tf_models.py "$tf_models" >/dev/null 2>&1 \
  || .venv/bin/python scripts/make_tf_models.py "$tf_models"
ort_lib="$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)"
tf_lib="$(ls .venv/lib/python3*/site-packages/tensorflow/libtensorflow_cc.so.2 | head -n 1)"
cargo build --locked -p gyrus-cli
ORT_DYLIB_PATH="$PWD/$ort_lib" GYRUS_TEST_MODELS="$models" \
  GYRUS_TF_LIBRARY="$PWD/$tf_lib" GYRUS_TEST_TF_MODELS="$tf_models" \
  cargo test --locked --workspace

echo "==> end-to-end tests"
.venv/bin/python examples/iris-python/train.py
.venv/bin/python examples/tensorflow-iris/train.py >/dev/null 2>&1 \
  || .venv/bin/python examples/tensorflow-iris/train.py
export GYRUS_BIN="$PWD/target/debug/gyrus"
export GYRUS_UV="$PWD/.venv/bin/uv"
.venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider "$@"
