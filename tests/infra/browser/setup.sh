#!/usr/bin/env bash
# Installs the headless browser the viewer tests and bench/bench_web.py drive: Debian's Chromium
# (plus a font so text renders), never `playwright install` (that downloads a browser build).
# Idempotent: a no-op when /usr/bin/chromium exists. Needs root (apt-get) the first time.
set -euo pipefail

CHROMIUM=${GRAIL_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
    echo "[browser] $CHROMIUM present: $("$CHROMIUM" --version 2>/dev/null || echo unknown version)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "[browser] $CHROMIUM is missing and installing it needs root: run" >&2
    echo "          sudo apt-get install -y --no-install-recommends chromium fonts-dejavu-core" >&2
    exit 1
fi
echo "[browser] installing chromium from Debian"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
echo "[browser] $("$CHROMIUM" --version 2>/dev/null || echo "chromium installed")"
