"""Accuracy of a model on the real data in ../shared/data (hard myocardium Dice, per volume).

Three measurements, as the model card reports them:

1. ACDC H5 test split (40 volumes): ``api.evaluate`` = ``napari-sdnet evaluate --split test``.
2. ACDC NIfTI path: ``napari-sdnet predict`` on the raw test patients 001, 022, 024 (ED and ES);
   the written mask is read back with nibabel and compared with the ``_gt`` file in the
   original geometry (label 2).
3. Sunnybrook SC-HF-I-1 (another site and vendor, never trained on): Dice on its labelled
   frames (the slices listed in its JSON).

Usage::

    .venv/bin/python benchmarks/bench_accuracy.py --model bundled [--data ../shared/data]
        [--json out.json] [--device cpu] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_TEST_PATIENTS = ("patient001", "patient022", "patient024")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    from napari_sdnet.training.losses import hard_dice

    return hard_dice(a, b)


def nifti_path_dice(model_arg: str, root: Path, device: str) -> list[dict]:
    """``napari-sdnet predict`` on each test patient frame, compared in the original grid."""
    from napari_sdnet.cli import main

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for patient in NIFTI_TEST_PATIENTS:
            for gt in sorted((root / patient).glob(f"{patient}_frame*_gt.nii.gz")):
                image = gt.with_name(gt.name.replace("_gt", ""))
                out = Path(tmp) / f"{image.name}"
                code = main(["predict", str(image), "-o", str(out), "--model", model_arg,
                             "--device", device])
                if code != 0:
                    raise SystemExit(f"predict failed on {image}")
                pred, ref = nib.load(out), nib.load(gt)
                assert np.allclose(pred.affine, ref.affine) and pred.shape == ref.shape
                dice = _dice(np.asarray(pred.dataobj) == 2, np.asarray(ref.dataobj) == 2)
                rows.append({"volume_id": image.name.split(".")[0], "dice": round(dice, 4)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--data", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from napari_sdnet import api

    model = api.load_model(args.model, device=args.device)
    results: dict = {"model": args.model, "preset": model.info.preset,
                     "model_type": model.info.model_type}
    start = time.perf_counter()
    h5 = api.evaluate(model, args.data / "acdc_h5", split="test")
    results["acdc_h5_test"] = {"mean_myocardium_dice": round(h5.mean_myocardium_dice, 4),
                               "std": round(h5.std, 4), "n_volumes": h5.n_volumes,
                               "per_volume": h5.per_volume}
    print(f"ACDC H5 test: mean {h5.mean_myocardium_dice:.4f} +- {h5.std:.4f} over "
          f"{h5.n_volumes} volumes")
    rows = nifti_path_dice(args.model, args.data / "acdc_nifti", args.device)
    mean = float(np.mean([r["dice"] for r in rows]))
    results["acdc_nifti_predict"] = {"mean_myocardium_dice": round(mean, 4), "per_volume": rows}
    print(f"ACDC NIfTI predict (001, 022, 024; ED+ES): mean {mean:.4f} "
          + " ".join(f"{r['volume_id']}={r['dice']:.3f}" for r in rows))
    sb = api.evaluate(model, args.data / "sunnybrook")
    results["sunnybrook"] = {"mean_myocardium_dice": round(sb.mean_myocardium_dice, 4),
                             "mean_slice_dice": round(sb.mean_slice_dice, 4),
                             "n_volumes": sb.n_volumes, "per_volume": sb.per_volume}
    print(f"Sunnybrook SC-HF-I-1 labelled frames: mean per-volume {sb.mean_myocardium_dice:.4f}, "
          f"per-slice {sb.mean_slice_dice:.4f} ({sb.n_volumes} volumes)")
    results["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
