#!/usr/bin/env bash
# Installs the offscreen GL libraries MuJoCo's CPU renderer needs (render-replay, the render stage, its
# tests and bench/bench_render.py): EGL on Mesa's llvmpipe (MUJOCO_GL=egl, the default) and OSMesa
# (MUJOCO_GL=osmesa, the fallback). Idempotent: installs only the packages that are missing, and is a
# no-op when all are present. Needs root (apt-get) the first time.
set -euo pipefail

PACKAGES=(libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6)
missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "[render] GL libraries present: ${PACKAGES[*]}"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "[render] missing ${missing[*]} and there is no apt-get: install EGL/OSMesa (Mesa) with your package manager" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "[render] missing ${missing[*]}; installing them needs root: run" >&2
    echo "          sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
echo "[render] installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "[render] installed ${missing[*]}"
