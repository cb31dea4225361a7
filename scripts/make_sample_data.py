"""Build the bundled sample study from the public-domain Sunnybrook SC-HF-I-1 cine series.

The full 256 x 256 x 12 x 20 study (about 12 MB compressed) is cropped in-plane to a
144 x 144 window centred on the labelled myocardium so the package stays small (about 5 MB).
nibabel's slicer updates the affine, so the crop keeps its position in scanner space; the time
step (pixdim[4]) and units are kept. The expert contours are cropped the same way and the list
of labelled frames is copied. Run from the repository root:

    python scripts/make_sample_data.py [--shared ../shared/data/sunnybrook]
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np

CROP = 144
OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "napari_sdnet" / "data"
STEM = "sunnybrook_sc-hf-i-1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook",
    )
    args = parser.parse_args()
    image = nib.load(args.shared / "SCD0000101_4d.nii.gz")
    labels = nib.load(args.shared / "SCD0000101_4d_gt.nii.gz")
    lab = np.asarray(labels.dataobj)
    xs, ys = np.nonzero(lab.any(axis=(2, 3)))
    cx, cy = (xs.min() + xs.max()) // 2, (ys.min() + ys.max()) // 2
    x0 = int(np.clip(cx - CROP // 2, 0, image.shape[0] - CROP))
    y0 = int(np.clip(cy - CROP // 2, 0, image.shape[1] - CROP))
    window = (slice(x0, x0 + CROP), slice(y0, y0 + CROP))

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for src, suffix in ((image, ""), (labels, "_gt")):
        cropped = src.slicer[window]
        out = nib.Nifti1Image(np.asarray(cropped.dataobj), cropped.affine, cropped.header)
        out.header["descrip"] = b"Sunnybrook SC-HF-I-1 (CC0), cropped by napari-sdnet"
        # The source contours' header says 1 ms between phases; the image's 37.5 ms is right.
        out.header.set_zooms(image.header.get_zooms())
        out.header.set_xyzt_units(*image.header.get_xyzt_units())
        # nibabel compresses fast (level 1); level 9 keeps the wheel small.
        target = OUT_DIR / f"{STEM}_cine{suffix}.nii.gz"
        target.write_bytes(gzip.compress(out.to_bytes(), compresslevel=9, mtime=0))

    info = json.loads((args.shared / "SCD0000101_labelled.json").read_text())
    info["crop_xy_origin"] = [x0, y0]
    info["crop_xy_size"] = [CROP, CROP]
    info["shape_xyzt"] = [CROP, CROP, *image.shape[2:]]
    info["source"] = "Sunnybrook Cardiac Data, SC-HF-I-1 (SCD0000101), CC0 1.0"
    (OUT_DIR / f"{STEM}_labelled.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"crop origin x={x0} y={y0}, size {CROP}; written to {OUT_DIR}")


if __name__ == "__main__":
    main()
