"""Fine-tuning on a few expert slices of a study from another site (issue: fine-tune feature).

Starting from a model (default: the bundled one) on the Sunnybrook SC-HF-I-1 cine study (GE,
never seen in training), give it the expert myocardium on N of the study's contoured slices,
fine-tune with a step budget (default: the API's, 150 steps) or a time budget through
``api.finetune`` (the code path of the widget and of ``napari-sdnet finetune``), re-segment,
and report hard myocardium Dice on the OTHER contoured slices (pooled over those slices = 3D
Dice of that part, and the per-slice mean) before and after, with the time taken. The N given
slices are spread evenly over the contoured ones.

``--study acdc-val`` does the same on the first K volumes of the ACDC H5 VALIDATION split
(``--volumes K``; never the test split): a second check of the fine-tuning settings, which
were chosen on the Sunnybrook study. Each volume is one 3D study (every slice with myocardium
counts as contoured; H5 pixels taken as 1.5 mm); the table reports the mean over volumes.
``--steps`` sets the step budget (results independent of the machine's load), ``--seconds``
replaces it by a time budget, ``--lr-schedule`` compares the learning-rate schedules.

Usage::

    .venv/bin/python benchmarks/bench_finetune.py [--model bundled] [--n 1 2 4]
        [--steps 150 | --seconds 60] [--seeds 0 1 2] [--threads 2] [--json out.json]
    .venv/bin/python benchmarks/bench_finetune.py --study acdc-val --volumes 6 --n 2 \
        --steps 150 --lr-schedule constant --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_sdnet import choices


def _given_slice(expert: np.ndarray, predicted: np.ndarray, structures) -> np.ndarray:
    """What a user hands to fine-tuning for one slice. A myocardium-only model: the expert
    myocardium (label 2). A model of several structures: the model's own labels corrected
    with the expert's, as a user correcting the segmentation layer would leave them: every
    structure the expert drew (the Sunnybrook study: myocardium and LV cavity) is the
    expert's, the rest (the RV cavity, which it has no contours of) stays the model's."""
    if tuple(structures) == ("myocardium",):
        return np.where(expert == 2, 2, 0).astype(np.uint8)
    drawn = [v for v in (1, 2, 3) if (expert == v).any()]
    keep = np.isin(predicted, [v for v in (1, 2, 3) if v not in drawn])
    out = np.where(keep, predicted, 0)
    return np.where(np.isin(expert, drawn), expert, out).astype(np.uint8)


def _scores(mask: np.ndarray, gt: np.ndarray, slices: list[tuple[int, int]]) -> dict:
    from napari_sdnet.training.losses import hard_dice

    pred = np.stack([mask[t, z] > 0 for z, t in slices])
    ref = np.stack([gt[t, z] == 2 for z, t in slices])
    per_slice = [hard_dice(p, r) for p, r in zip(pred, ref, strict=True)]
    return {
        "pooled": round(hard_dice(pred, ref), 4),
        "per_slice": round(float(np.mean(per_slice)), 4),
    }


def _sunnybrook(data: Path):
    """The Sunnybrook study: (name, image (t, z, y, x), gt, spacing, contoured (z, t))."""
    from napari_sdnet.io.nifti import read_nifti

    root = data / "sunnybrook"
    vol = read_nifti(root / "SCD0000101_4d.nii.gz")
    gt = read_nifti(root / "SCD0000101_4d_gt.nii.gz").data
    info = json.loads((root / "SCD0000101_labelled.json").read_text())
    contoured = [(int(z), int(t)) for z, t in info["myocardium_frames_zt"]]
    yield "SCD0000101", vol.data, gt, vol.geometry.spacing, contoured


def _acdc_val(data: Path, volumes: int):
    """The first ``volumes`` ACDC H5 validation volumes, each as a one-frame 4D study."""
    from itertools import islice

    from napari_sdnet.io.datasets import iter_acdc_h5

    for record in islice(iter_acdc_h5(data / "acdc_h5", split="val"), volumes):
        image = np.asarray(record.image, np.float32)[None]
        gt = np.asarray(record.labels, np.uint8)[None]
        contoured = [(z, 0) for z in range(gt.shape[1]) if (gt[0, z] == 2).any()]
        yield record.volume_id, image, gt, (10.0, 1.5, 1.5), contoured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--data", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--study", choices=("sunnybrook", "acdc-val"), default="sunnybrook")
    parser.add_argument("--volumes", type=int, default=6, help="acdc-val: volumes used")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 2, 4])
    budget_args = parser.add_mutually_exclusive_group()
    budget_args.add_argument("--seconds", type=float, default=None, help="time budget")
    budget_args.add_argument("--steps", type=int, default=None,
                             help="step budget (default: the API's, api.FINETUNE_STEPS)")
    parser.add_argument("--lr-schedule", choices=choices.LR_SCHEDULES, default=None,
                        help="default: the API's (api.FINETUNE_SCHEDULE)")
    parser.add_argument("--freeze", nargs="*", default=[], metavar="PREFIX",
                        help="parameter-name prefixes not to fine-tune")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="fine-tuning seeds (batch order, augmentation); one run per seed")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_sdnet import api

    schedule = args.lr_schedule or api.FINETUNE_SCHEDULE
    budget = ({"seconds": args.seconds} if args.seconds is not None
              else {"steps": args.steps or api.FINETUNE_STEPS})
    model = api.load_model(args.model, device="cpu")
    results = {"model": args.model, "study": args.study, "budget": budget,
               "lr": api.FINETUNE_LR, "lr_schedule": schedule, "freeze": args.freeze,
               "threads": torch.get_num_threads(), "runs": []}
    studies = (_sunnybrook(args.data) if args.study == "sunnybrook"
               else _acdc_val(args.data, args.volumes))
    gains: dict[int, list[float]] = {}
    for name, image, gt, spacing, contoured in studies:
        t0 = time.perf_counter()
        base = api.segment(model, image, spacing)
        base_mask, base_labels = base.mask, base.labels()
        seg_seconds = time.perf_counter() - t0
        print(f"{name} {image.shape}, {len(contoured)} contoured slices; segmentation "
              f"{seg_seconds:.1f} s", flush=True)
        for n in args.n:
            if n >= len(contoured):
                continue
            picks = np.linspace(0, len(contoured) - 1, n + 2)[1:-1]
            given = [contoured[int(round(i))] for i in picks]
            others = [s for s in contoured if s not in given]
            labels = np.zeros(gt.shape, np.uint8)
            for z, t in given:
                labels[t, z] = _given_slice(gt[t, z], base_labels[t, z], model.config.structures)
            before = _scores(base_mask, gt, others)
            for seed in args.seeds:
                start = time.perf_counter()
                new = api.run(api.finetune(model, image, labels, spacing, seed=seed,
                                           lr_schedule=schedule, freeze=args.freeze,
                                           **budget))
                tune_seconds = time.perf_counter() - start
                after_mask = api.segment(new, image, spacing).mask
                total = time.perf_counter() - start
                after = _scores(after_mask, gt, others)
                steps = new.info.training["finetuned"][-1]["steps"]
                gains.setdefault(n, []).append(after["pooled"] - before["pooled"])
                row = {"study": name, "n_given": n, "seed": seed, "given_zt": given,
                       "n_evaluated": len(others), "before": before, "after": after,
                       "steps": steps, "finetune_seconds": round(tune_seconds, 1),
                       "finetune_plus_resegment_seconds": round(total, 1)}
                results["runs"].append(row)
                print(f"{name} N={n} seed {seed} given {given}: Dice on the other "
                      f"{len(others)} contoured slices {before['pooled']:.3f} -> "
                      f"{after['pooled']:.3f} (per-slice {before['per_slice']:.3f} -> "
                      f"{after['per_slice']:.3f}); fine-tune {steps} steps in "
                      f"{tune_seconds:.0f} s, with re-segmentation {total:.0f} s", flush=True)
    results["mean_gain"] = {str(n): round(float(np.mean(g)), 4) for n, g in gains.items()}
    for n, g in gains.items():
        print(f"N={n}: mean Dice gain {np.mean(g):+.4f} over {len(g)} runs ({schedule} lr)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
