#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up what is missing, lint, then every test.
# Under CI=true a missing WebGPU adapter fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
.venv/bin/ruff check .
(cd js && npm test --silent)  # the SDK's unit tests (node:test); the browser tests are in tests/browser
.venv/bin/python -m pytest "$@"
