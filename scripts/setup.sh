#!/usr/bin/env bash
# One-time, idempotent set-up on a fresh Debian/Ubuntu machine (also what CI runs):
#   1. system libraries napari needs with no screen (Xvfb, Mesa OpenGL, the xcb/xkb libs of Qt),
#   2. a virtual environment in .venv (override with SDNET_VENV),
#   3. the CPU build of PyTorch FIRST (a bare `torch` requirement would pull a multi-GB CUDA
#      build), then napari-sdnet with its `testing` extra (PyQt6, pytest, pytest-qt, pytest-xvfb).
# On a machine whose pip index has no local CPU wheel, set
#   SDNET_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# (or install the torch build you want into the venv beforehand: an importable torch is kept).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libdbus-1-3 libfontconfig1
  libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0
  libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1)

if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]})); then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
else
  echo "setup: no apt-get here; make sure Xvfb and an OpenGL driver (Mesa) are installed" >&2
fi

VENV=${SDNET_VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing the CPU build of PyTorch ${SDNET_TORCH_VERSION:-2.13.0}"
  "${PIP[@]}" install "torch==${SDNET_TORCH_VERSION:-2.13.0}" \
    ${SDNET_TORCH_INDEX_URL:+--index-url "$SDNET_TORCH_INDEX_URL"}
fi
echo "setup: installing napari-sdnet[testing] (editable)"
"${PIP[@]}" install -e ".[testing]"
echo "setup: done ($("$VENV/bin/python" -c 'import torch, napari; print("torch", torch.__version__, "/ napari", napari.__version__)'))"
