"""Fine-tuning on a few expert slices of a study from another site (issue: fine-tune feature).

Starting from a model (default: the bundled one) on the Sunnybrook SC-HF-I-1 cine study (GE,
never seen in training), give it the expert myocardium on N of the study's contoured slices,
fine-tune with a time budget through ``api.finetune`` (the code path of the widget and of
``napari-sdnet finetune``), re-segment, and report hard myocardium Dice on the OTHER contoured
slices (pooled over those slices = 3D Dice of that part, and the per-slice mean) before and
after, with the time taken. The N given slices are spread evenly over the contoured ones.

Usage::

    .venv/bin/python benchmarks/bench_finetune.py [--model bundled] [--n 1 2 4]
        [--seconds 60] [--seeds 0 1 2] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _scores(mask: np.ndarray, gt: np.ndarray, slices: list[tuple[int, int]]) -> dict:
    from napari_sdnet.training.losses import hard_dice

    pred = np.stack([mask[t, z] > 0 for z, t in slices])
    ref = np.stack([gt[t, z] == 2 for z, t in slices])
    per_slice = [hard_dice(p, r) for p, r in zip(pred, ref, strict=True)]
    return {
        "pooled": round(hard_dice(pred, ref), 4),
        "per_slice": round(float(np.mean(per_slice)), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--data", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="fine-tuning seeds (batch order, augmentation); one run per seed")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_sdnet import api
    from napari_sdnet.io.nifti import read_nifti

    root = args.data / "sunnybrook"
    vol = read_nifti(root / "SCD0000101_4d.nii.gz")
    gt = read_nifti(root / "SCD0000101_4d_gt.nii.gz").data
    info = json.loads((root / "SCD0000101_labelled.json").read_text())
    contoured = [(int(z), int(t)) for z, t in info["myocardium_frames_zt"]]
    spacing = vol.geometry.spacing
    model = api.load_model(args.model, device="cpu")
    t0 = time.perf_counter()
    base_mask = api.segment(model, vol.data, spacing).mask
    seg_seconds = time.perf_counter() - t0
    results = {"model": args.model, "budget_seconds": args.seconds,
               "threads": torch.get_num_threads(), "segment_seconds": round(seg_seconds, 1),
               "runs": []}
    print(f"study {vol.data.shape}, {len(contoured)} contoured slices; segmentation "
          f"{seg_seconds:.1f} s")
    for n in args.n:
        picks = np.linspace(0, len(contoured) - 1, n + 2)[1:-1] if n < len(contoured) else []
        given = [contoured[int(round(i))] for i in picks]
        others = [s for s in contoured if s not in given]
        labels = np.zeros(gt.shape, np.uint8)
        for z, t in given:
            labels[t, z] = np.where(gt[t, z] == 2, 2, 0)
        before = _scores(base_mask, gt, others)
        for seed in args.seeds:
            start = time.perf_counter()
            new = api.run(api.finetune(model, vol.data, labels, spacing, seconds=args.seconds,
                                       seed=seed))
            tune_seconds = time.perf_counter() - start
            after_mask = api.segment(new, vol.data, spacing).mask
            total = time.perf_counter() - start
            after = _scores(after_mask, gt, others)
            steps = new.info.training["finetuned"][-1]["steps"]
            row = {"n_given": n, "seed": seed, "given_zt": given, "n_evaluated": len(others),
                   "before": before, "after": after, "steps": steps,
                   "finetune_seconds": round(tune_seconds, 1),
                   "finetune_plus_resegment_seconds": round(total, 1)}
            results["runs"].append(row)
            print(f"N={n} seed {seed} given {given}: Dice on the other {len(others)} contoured "
                  f"slices {before['pooled']:.3f} -> {after['pooled']:.3f} (per-slice "
                  f"{before['per_slice']:.3f} -> {after['per_slice']:.3f}); fine-tune "
                  f"{steps} steps in {tune_seconds:.0f} s, with re-segmentation {total:.0f} s",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
