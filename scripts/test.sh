#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. napari's tests need OpenGL: pytest-xvfb
# starts a virtual X server by itself. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${SDNET_VENV:-.venv}
exec "$VENV/bin/python" -m pytest "$@"
