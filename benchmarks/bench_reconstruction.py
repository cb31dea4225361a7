"""How well a model's reconstructor g(M, Z) rebuilds the input (what latent mixing relies on).

For each model given, on the bundled Sunnybrook sample study (every slice of every frame) and,
when ``../shared`` is present, on the ACDC H5 test split (every slice of the 40 volumes):

* L1 between the reconstruction g(round(M), Z) and the preprocessed input on the model grid
  ([-1, 1] scale; mean over pixels and slices),
* Pearson correlation of reconstruction and input per slice (median over slices),
* the same two for a "mean image" baseline (the mean preprocessed slice of that data set: what a
  reconstructor that ignores Z at best achieves with one image),
* the M effect: mean |g(M, Z) - g(0, Z)| inside M over that outside M (slices with >= 50
  pixels in M; median; M = the myocardium, or with a three-structure M any of the three);
* issue #16's target: on the raw ACDC NIfTI test patients 001, 022, 024 (ED and ES), the median
  per-slice Pearson r between the input and the reconstruction ``predict --reconstruction``
  writes (``Segmentation.reconstruction_intensity``, on the input grid) in a 120 mm x 120 mm
  window at the image centre.

Usage::

    .venv/bin/python benchmarks/bench_reconstruction.py --model bundled other.safetensors \
        [--threads 2] [--json out.json]
    .venv/bin/python benchmarks/bench_reconstruction.py --state runs/v3/X.resume.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _measure(model, images: np.ndarray) -> dict:
    from napari_sdnet import api
    from napari_sdnet.inference import predict_slices

    out = predict_slices(model.network, images, batch_size=32)
    recon = out.reconstruction
    l1 = float(np.mean(np.abs(recon - images)))
    mean_image = images.mean(axis=0)
    l1_mean = float(np.mean(np.abs(mean_image[None] - images)))

    r = [_corr(recon[i], images[i]) for i in range(len(images))]
    r_mean = [_corr(mean_image, images[i]) for i in range(len(images))]
    prob = out.probability  # (N, S, S), or (N, C, S, S) for a multi-channel M
    # "inside M": the myocardium of a one-channel M; any structure of a multi-channel one
    masks = prob >= 0.5 if prob.ndim == 3 else (prob >= 0.5).any(axis=1)
    big = np.flatnonzero(masks.reshape(len(masks), -1).sum(axis=1) >= 50)
    ratios = []
    if len(big):
        null = api.reconstruct(model, np.zeros_like(prob[big], np.float32), out.z[big])
        diff = np.abs(recon[big] - null)
        for k, i in enumerate(big):
            inside, outside = diff[k][masks[i]].mean(), diff[k][~masks[i]].mean()
            ratios.append(float(inside / max(outside, 1e-9)))
    return {
        "slices": len(images),
        "l1": round(l1, 4),
        "l1_mean_image": round(l1_mean, 4),
        "pearson_median": round(float(np.nanmedian(r)), 3),
        "pearson_median_mean_image": round(float(np.nanmedian(r_mean)), 3),
        "mask_effect_in_out_median": round(float(np.median(ratios)), 1) if ratios else None,
        "mask_effect_slices": len(ratios),
    }


def _sample_images(model) -> np.ndarray:
    from napari_sdnet.io.nifti import read_nifti
    from napari_sdnet.preprocess import preprocess_volume
    from napari_sdnet.sample import sunnybrook_study

    vol = read_nifti(sunnybrook_study().image)
    slices, _ = preprocess_volume(vol.data, vol.geometry.spacing[-2:], model.preprocess)
    size = model.config.image_size
    return slices.reshape(-1, size, size)


def _acdc_test_images(model, root: Path) -> np.ndarray | None:
    from napari_sdnet.io.datasets import iter_acdc_h5

    if not root.is_dir():
        return None
    # the spacing the model assumed for H5 files in training (as `napari-sdnet evaluate`)
    spacing = model.info.training.get("h5_spacing") or model.preprocess.target_spacing
    parts = [r.slices for r in iter_acdc_h5(root, "test", model.preprocess, spacing)]
    return np.concatenate(parts) if parts else None


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _nifti_window(model, root: Path, window_mm: float = 120.0) -> dict | None:
    """Median per-slice Pearson r of input and reconstruction in a central window (mm)."""
    from napari_sdnet import api
    from napari_sdnet.io.nifti import read_nifti

    if not root.is_dir():
        return None
    r = []
    for pid in ("patient001", "patient022", "patient024"):
        for path in sorted((root / pid).glob(f"{pid}_frame??.nii.gz")):
            vol = read_nifti(path)
            seg = api.segment(model, vol.data, vol.geometry.spacing, precision="fp32")
            recon = seg.reconstruction_intensity
            sy, sx = vol.geometry.spacing[-2:]
            h, w = vol.data.shape[-2:]
            hy, hx = round(window_mm / 2 / sy), round(window_mm / 2 / sx)
            cy, cx = h // 2, w // 2
            win = np.s_[..., max(0, cy - hy) : cy + hy, max(0, cx - hx) : cx + hx]
            image = np.asarray(vol.data, np.float32)[win].reshape(-1, 2 * hy, 2 * hx)
            rec = recon[win].reshape(image.shape)
            r += [_corr(rec[i], image[i]) for i in range(len(image))]
    return {
        "slices": len(r),
        "window_mm": window_mm,
        "pearson_median": round(float(np.nanmedian(r)), 3),
        "pearson_q25_q75": [round(float(q), 3) for q in np.nanpercentile(r, [25, 75])],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="*", default=["bundled"])
    parser.add_argument("--state", type=Path, nargs="*", default=[],
                        help="also the kept weights of stopped trainings (*.resume.safetensors)")
    parser.add_argument("--data", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import sys

    from napari_sdnet import api

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_structures import model_from_state

    models = [(s, lambda s=s: api.load_model(s, device="cpu")) for s in args.model]
    models += [(str(p), lambda p=p: model_from_state(p)) for p in args.state]
    results = {}
    for source, load in models:
        model = load()
        row = {"sample": _measure(model, _sample_images(model))}
        acdc = _acdc_test_images(model, args.data / "acdc_h5")
        if acdc is not None:
            row["acdc_h5_test"] = _measure(model, acdc)
        window = _nifti_window(model, args.data / "acdc_nifti")
        results[source] = row
        if window is not None:
            print(f"{source} on the ACDC NIfTI test patients ({window['slices']} slices, "
                  f"{window['window_mm']:.0f} mm window): Pearson r median "
                  f"{window['pearson_median']} (quartiles {window['pearson_q25_q75']})")
            results[source]["acdc_nifti_test_window"] = window
        for name, m in ((k, v) for k, v in row.items() if "l1" in v):
            print(f"{source} on {name} ({m['slices']} slices): L1 {m['l1']} (mean image "
                  f"{m['l1_mean_image']}), Pearson r median {m['pearson_median']} (mean image "
                  f"{m['pearson_median_mean_image']}), M effect in/out "
                  f"{m['mask_effect_in_out_median']} ({m['mask_effect_slices']} slices)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
