#!/usr/bin/env bash
# Reproduce the bundled model (docs/model.md) from the ACDC H5 split: seeded stages of
# `napari-sdnet train`, each starting from the previous one's file.
#
#   bash scripts/train_bundled.sh [DATA_DIR] [OUT_DIR]
#
# DATA_DIR defaults to ../shared/data/acdc_h5, OUT_DIR to runs/v3. Budgets are iterations, so
# any machine stops at the same point. The stages are resumable: a stage whose output exists is
# skipped, and one that was stopped (Ctrl-C, SIGTERM, a cluster time limit, a crash: its state
# OUT_DIR/<stage>.resume.safetensors is saved every 5 minutes) continues where it stopped when
# the script is run again. Run it under `nice` on a shared machine. Copy
# OUT_DIR/sdnet_compact_acdc3.safetensors to src/napari_sdnet/weights/ to ship it.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/acdc_h5}
OUT=${2:-runs/v3}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(--data "$DATA" --preset compact --structures all --labelled all --h5-spacing 1.5
  --scanner-augment --threads "${SDNET_THREADS:-1}" --patience 0)

stage() {  # stage OUTPUT ARGS...: run (or continue) one stage unless its output is complete
    local out=$1
    shift
    local state=${out%.safetensors}.resume.safetensors
    if [[ -f "$state" ]]; then
        echo "== $out: continuing the stopped run"
        "$PY" -m napari_sdnet.cli train "${COMMON[@]}" "$@" -o "$out" --resume
    elif [[ -f "$out" ]]; then
        echo "== $out exists, skipped"
    else
        echo "== $out"
        "$PY" -m napari_sdnet.cli train "${COMMON[@]}" "$@" -o "$out"
    fi
}

# 1. the segmenter: RV cavity, myocardium and LV cavity (3-channel M), Dice only, scanner-shift
#    augmentation, cosine rate over 40000 iterations
stage "$OUT/stage1.safetensors" --model-type unet --lr 1e-3 --lr-schedule cosine \
    --iterations 40000 --seed 0
# 2. Z head, reconstructor and image discriminator afresh, fitted to the frozen segmenter with
#    the SDNet losses, kept at the lowest validation reconstruction L1
stage "$OUT/sdnet_compact_acdc3.safetensors" --model-type sdnet --init "$OUT/stage1.safetensors" \
    --reinit decomposer.z_head --reinit reconstructor --reinit image_discriminator \
    --freeze decomposer.down --freeze decomposer.bottleneck --freeze decomposer.up \
    --freeze decomposer.mask_head --select-on reconstruction --lr 3e-4 --lr-schedule cosine \
    --iterations 6000 --seed 2
echo "wrote $OUT/sdnet_compact_acdc3.safetensors"
