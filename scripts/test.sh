#!/usr/bin/env bash
# Runs the whole test suite: Rust unit and integration tests, then the end-to-end tests that
# drive the real gyrus binary, daemon, replicas and Python workers over HTTP on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-python.sh

echo "==> cargo test"
cargo build --locked -p gyrus-cli
cargo test --locked --workspace

echo "==> end-to-end tests"
.venv/bin/python examples/iris-python/train.py
export GYRUS_BIN="$PWD/target/debug/gyrus"
export GYRUS_UV="$PWD/.venv/bin/uv"
.venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider "$@"
