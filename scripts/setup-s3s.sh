#!/usr/bin/env bash
# Installs s3s-fs (a real S3-compatible server on the local file system) into .tools/ for the
# tests of models read from s3:// URLs. Pinned; quick when it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
want="s3s-fs 0.14.1"
if [ -x .tools/bin/s3s-fs ] && [ "$(.tools/bin/s3s-fs --version 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "==> installing $want into .tools/ (about 2 minutes)"
cargo install --quiet --locked s3s-fs@0.14.1 --features binary --root .tools
