"""Screenshot of an ACDC image with its expert labels, opened through the napari-sdnet reader.

Needs the real data (``../shared/data`` or ``SDNET_SHARED_DATA``) and a display; headless::

    xvfb-run -a -s "-screen 0 1400x1000x24" .venv/bin/python scripts/screenshot_acdc_labels.py

Writes ``docs/images/acdc_patient001_labels.png`` (or the path given as first argument).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    import napari

    data = Path(os.environ.get("SDNET_SHARED_DATA", REPO.parent / "shared" / "data"))
    folder = data / "acdc_nifti" / "patient001"
    image_path = folder / "patient001_frame01.nii.gz"
    gt_path = folder / "patient001_frame01_gt.nii.gz"
    if not image_path.exists():
        print(f"ACDC patient001 not found in {folder}", file=sys.stderr)
        return 1
    out = Path(argv[0]) if argv else REPO / "docs" / "images" / "acdc_patient001_labels.png"
    out.parent.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(title="napari-sdnet: ACDC patient001 ED with labels")
    viewer.window.resize(1200, 860)
    viewer.open([str(image_path), str(gt_path)], plugin="napari-sdnet")
    labels = viewer.layers["patient001_frame01_gt"]
    labels.opacity = 0.5
    n_slices = labels.data.shape[0]
    viewer.dims.axis_labels = ("z", "y", "x")
    viewer.dims.set_point(0, labels.scale[0] * (n_slices // 2))  # mid slice, world units (mm)
    viewer.reset_view()
    viewer.screenshot(path=str(out), canvas_only=False)
    viewer.close()
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
