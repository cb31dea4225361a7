"""Do test-time flips or keeping the largest connected component help? (issue #16, point 2)

Measured on the ACDC H5 **validation** split only (20 volumes; the test split and the Sunnybrook
study are never used to choose settings), as it is and under simulated vendor shifts of its
intensities (gamma 0.5 and 2.0 on the [0, 1]-scaled model-grid image, and a Gaussian blur of
sigma 1 pixel), per-volume 3D Dice of each structure on the model grid:

* ``plain``: the model's own labels (arg-max over background and structures);
* ``lcc``: per structure, only the largest 3D connected component (26-connectivity) is kept
  (``napari_sdnet.postprocess.largest_components``, what ``segment`` now does);
* ``flip2``: probabilities averaged over the image and its left-right mirror;
* ``flip4``: ... over the image and its three mirrors (left-right, up-down, both);
* and the flips followed by ``lcc``.

Usage::

    .venv/bin/python benchmarks/bench_postprocess.py --model runs/v3/stage1.safetensors \
        [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SDNET_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shifted(slices: np.ndarray, shift: str) -> np.ndarray:
    """A simulated vendor shift of model-grid images in [-1, 1]."""
    from scipy import ndimage

    unit = np.clip((slices + 1) / 2, 0, 1)
    if shift == "gamma0.5":
        unit = unit**0.5
    elif shift == "gamma2":
        unit = unit**2.0
    elif shift == "blur1":
        unit = ndimage.gaussian_filter(unit, sigma=(0, 1, 1))
    return (unit * 2 - 1).astype(np.float32)


def probabilities(net, slices: np.ndarray, flips: int) -> np.ndarray:
    """(z, C, S, S) structure probabilities, averaged over ``flips`` mirrors (1, 2 or 4)."""
    from napari_sdnet.inference import predict_slices

    axes = [(), (-1,), (-2,), (-2, -1)][:flips]
    total = None
    for ax in axes:
        x = np.ascontiguousarray(np.flip(slices, ax) if ax else slices)
        p = predict_slices(net, x, batch_size=32).probability
        p = np.flip(p, ax) if ax else p
        total = p if total is None else total + p
    return total / len(axes)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum() + b.sum())
    return 1.0 if s == 0 else 2.0 * float((a & b).sum()) / s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from napari_sdnet import api
    from napari_sdnet.io.datasets import iter_acdc_h5
    from napari_sdnet.io.slices import ACDC_LABELS, model_grid_labels
    from napari_sdnet.postprocess import largest_components
    from napari_sdnet.segmentation import structure_labels

    model = api.load_model(args.model, device="cpu")
    structures = model.config.structures
    values = [ACDC_LABELS[s] for s in structures]
    spacing = model.info.training.get("h5_spacing") or 1.5
    records = list(iter_acdc_h5(DATA / "acdc_h5", "val", model.preprocess, spacing))
    variants = ["plain", "lcc", "flip2", "flip2+lcc", "flip4", "flip4+lcc"]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for shift in ("none", "gamma0.5", "gamma2", "blur1"):
        scores: dict[str, dict[str, list[float]]] = {
            v: {s: [] for s in structures} for v in variants
        }
        for rec in records:
            truth = model_grid_labels(rec.labels, rec.grid)
            slices = rec.slices if shift == "none" else shifted(rec.slices, shift)
            for flips in (1, 2, 4):
                prob = probabilities(model.network, slices, flips)
                labels = structure_labels(np.moveaxis(prob, 1, 0), structures)
                name = "plain" if flips == 1 else f"flip{flips}"
                for variant, lab in ((name, labels), (
                    "lcc" if flips == 1 else f"{name}+lcc", largest_components(labels, values)
                )):
                    for s, v in zip(structures, values, strict=True):
                        scores[variant][s].append(dice(lab == v, truth == v))
        results[shift] = {
            v: {s: round(float(np.mean(x)), 4) for s, x in per.items()} for v, per in scores.items()
        }
        for v in variants:
            row = results[shift][v]
            mean = np.mean(list(row.values()))
            print(f"{shift:9s} {v:10s} mean {mean:.4f}  "
                  + "  ".join(f"{s} {d:.4f}" for s, d in row.items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
