#!/usr/bin/env bash
# Reproduce the bundled model (docs/model.md) from the ACDC H5 split: four seeded stages of
# `napari-sdnet train`, each starting from the previous one's file.
#
#   bash scripts/train_bundled.sh [DATA_DIR] [OUT_DIR]
#
# DATA_DIR defaults to ../shared/data/acdc_h5, OUT_DIR to runs/bundled. About 2 hours on one CPU
# thread (the budgets are wall-clock seconds: another machine stops at other iterations).
# A stage whose output exists is skipped, so the script can be re-run after an interruption.
# Copy OUT_DIR/sdnet_compact_acdc.safetensors to src/napari_sdnet/weights/ to ship it.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/acdc_h5}
OUT=${2:-runs/bundled}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
COMMON=(--data "$DATA" --preset compact --labelled all --h5-spacing 1.5 --threads 1)

stage() {  # stage OUTPUT ARGS...: run one stage unless its output exists
    local out=$1
    shift
    if [[ -f "$out" ]]; then
        echo "== $out exists, skipped"
    else
        echo "== $out"
        "$PY" -m napari_sdnet.cli train "${COMMON[@]}" "$@" -o "$out"
    fi
}

# 1. decomposer warm-up, Dice only (the paper's U-Net baseline)
stage "$OUT/stage1.safetensors" --model-type unet --lr 1e-3 --seconds 1500 --seed 0
# 2. the SDNet losses (the paper's weights)
stage "$OUT/stage2.safetensors" --model-type sdnet --init "$OUT/stage1.safetensors" \
    --seconds 1500 --seed 0
# 3. the segmenter again, Dice only, lower rate
stage "$OUT/stage3.safetensors" --model-type unet --init "$OUT/stage2.safetensors" \
    --lr 3e-4 --seconds 2400 --seed 1
# 4. Z head, reconstructor and image discriminator afresh, fitted to the frozen segmenter
stage "$OUT/sdnet_compact_acdc.safetensors" --model-type sdnet --init "$OUT/stage3.safetensors" \
    --reinit decomposer.z_head --reinit reconstructor --reinit image_discriminator \
    --freeze decomposer.down --freeze decomposer.bottleneck --freeze decomposer.up \
    --freeze decomposer.mask_head --select-on reconstruction --lr 3e-4 --seconds 2100 --seed 2
echo "wrote $OUT/sdnet_compact_acdc.safetensors"
