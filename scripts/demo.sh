#!/usr/bin/env bash
# Set up (idempotent) and run the main job: napari with the plugin and the bundled sample study
# (Sunnybrook SC-HF-I-1 cine), segmented by the bundled model in the segmentation widget, with
# the "Cardiac function" widget showing its indices and volume curve. With no display, it runs
# under Xvfb instead and saves a screenshot of the window to out/demo.png. Extra arguments go to
# `python -m napari_sdnet._napari.launch` (--model FILE, --device cpu, --frames current).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${SDNET_VENV:-.venv}
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec "$VENV/bin/python" -m napari_sdnet._napari.launch "$@"
fi
echo "demo: no display found; running under Xvfb and writing out/demo.png"
mkdir -p out
exec xvfb-run -a -s "-screen 0 1600x1000x24" "$VENV/bin/python" -m napari_sdnet._napari.launch \
  --screenshot out/demo.png "$@"
