#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for realm_web: a Vulkan driver for WebGPU (Mesa's lavapipe, a CPU
# implementation, is installed alongside whatever GPU driver exists), and a virtual environment in .venv with
# realm_web and its test tools; for the browser path, Node.js/npm (the Pyodide runtime comes from npm, js/),
# Chromium (the browser tests drive /usr/bin/chromium) and the web bundle build/web/ (scripts/build_web.py).
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
if command -v dpkg >/dev/null 2>&1; then
  for pkg in libvulkan1 mesa-vulkan-drivers python3-venv; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  # pyenv/uv Pythons bring their own venv module; Debian's python3 needs python3-venv
  if python3 -c 'import ensurepip' >/dev/null 2>&1; then
    need=("${need[@]/python3-venv}")
  fi
  need=($(printf '%s\n' "${need[@]}" | grep -v '^$' || true))
  if [ "${#need[@]}" -gt 0 ]; then
    echo "setup: installing ${need[*]} (apt)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
else
  echo "setup: not a Debian/Ubuntu system; install a Vulkan driver (e.g. Mesa lavapipe) yourself" >&2
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[dev]"

# Wheels of realm_web's own dependencies for this machine (wgpu, numpy, jinja2 and theirs): tests/test_install.py
# installs the wheel it builds from the repo into a clean venv from these alone (pip --no-index), offline.
if [ ! -f build/wheelhouse/.complete ] || [ pyproject.toml -nt build/wheelhouse/.complete ]; then
  echo "setup: downloading realm_web's dependency wheels into build/wheelhouse/ (pip download)"
  rm -rf build/wheelhouse && mkdir -p build/wheelhouse
  if ! .venv/bin/python -m pip download -q --no-build-isolation -d build/wheelhouse . >build/wheelhouse.log 2>&1; then
    cat build/wheelhouse.log >&2
    exit 1
  fi
  touch build/wheelhouse/.complete
fi

# The Pyodide runtime, pinned in js/package.json (npm ci follows js/package-lock.json)
if [ ! -f js/node_modules/.package-lock.json ] || [ js/package.json -nt js/node_modules/.package-lock.json ] ||
   { [ -f js/package-lock.json ] && [ js/package-lock.json -nt js/node_modules/.package-lock.json ]; }; then
  echo "setup: installing js/ dependencies (npm)"
  if [ -f js/package-lock.json ]; then
    (cd js && npm ci --no-audit --no-fund --loglevel=error)
  else
    (cd js && npm install --no-audit --no-fund --loglevel=error)
  fi
fi
.venv/bin/python scripts/build_web.py
echo "setup: done ($(.venv/bin/python --version), realm_web in .venv, web bundle in build/web/)"
