#!/usr/bin/env bash
# Installs Azurite (Microsoft's Azure Storage emulator, from npm) into .tools/azurite for the
# tests of models read from az:// URLs. Pinned; quick when it is already there. (The gs://
# tests' emulator, gcp-storage-emulator, comes from PyPI with tests/requirements.txt.)
set -euo pipefail
cd "$(dirname "$0")/.."
# 3.35.0 is the last release that runs on Node.js 20 (3.36 asks for 21, 3.37 for 22).
want="3.35.0"
bin=.tools/azurite/node_modules/.bin/azurite-blob
if [ -x "$bin" ] && [ "$(node -p 'require("./.tools/azurite/node_modules/azurite/package.json").version' 2>/dev/null)" = "$want" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "==> installing nodejs and npm (Debian packages)"
  sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
echo "==> installing azurite@$want into .tools/azurite"
mkdir -p .tools/azurite
npm install --prefix .tools/azurite --no-audit --no-fund --loglevel=error "azurite@$want" >/dev/null
