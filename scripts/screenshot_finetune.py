"""Screenshot of the "Fine-tuning" widget after a short fine-tuning (real window).

Needs a display; headless::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_finetune.py \
        [--model bundled|PATH] [--steps 60] [--out docs/images]

Segments the bundled sample study with the segmentation widget, then "corrects" two of its
contoured slices by painting the expert myocardium into the mask layer (through the layer's
paint API, so the fine-tuning widget sees paint events as it does for a brush), fine-tunes
for ``--steps`` steps and writes ``finetune_widget.png`` into ``--out``: the 1600 x 1000 window
with the fine-tuning tab in front (the corrected-slice list, the readable loss plot, the status
line; the viewer marks the corrected slice shown).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled", help="'bundled' or a .safetensors file")
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps (default 60)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args(argv)

    from qtpy.QtWidgets import QApplication
    from screenshot_segment import open_segmented_sample  # this folder

    from napari_sdnet.sample import sunnybrook_study

    args.out.mkdir(parents=True, exist_ok=True)
    viewer, image, contours, seg = open_segmented_sample(args.model, (1600, 1000))
    mask = seg.mask_layer_for(image)
    _, widget = viewer.window.add_plugin_dock_widget("napari-sdnet", "Fine-tuning")
    widget.device_combo.setCurrentText("cpu")

    # the "corrections" on two contoured slices: every structure the model segments and the
    # expert drew (the myocardium; with a three-structure model also the LV cavity) painted as
    # the expert's; the rest (the RV, which the study has no contours of) left as the model made
    from napari_sdnet._napari._state import get_state
    from napari_sdnet.io.slices import ACDC_LABELS

    segmented = [ACDC_LABELS[s] for s in get_state(viewer).model.config.structures]
    frames = sunnybrook_study().labelled_frames()
    given = [frames[len(frames) // 3], frames[2 * len(frames) // 3]]
    for z, t in given:
        old = np.asarray(mask.data[t, z])
        expert = np.asarray(contours.data[t, z])
        drawn = [v for v in segmented if (expert == v).any()]
        new = np.where(np.isin(old, [v for v in segmented if v not in drawn]), old, 0)
        new = np.where(np.isin(expert, drawn), expert, new).astype(old.dtype)
        for value in np.unique(new[new != old]):
            ys, xs = np.nonzero((new == value) & (new != old))
            index = (np.full_like(ys, t), np.full_like(ys, z), ys, xs)
            mask.data_setitem(index, int(value))
    print(f"edited slices: {widget.edited}")
    z, t = given[0]
    viewer.dims.set_current_step(0, t)
    viewer.dims.set_current_step(1, z)
    contours.visible = False
    widget.set_budget(steps=args.steps)
    if widget.finetune() is None:
        print(widget.status.text(), file=sys.stderr)
        return 1
    while widget.worker is not None:
        QApplication.processEvents()
    if widget.last_error is not None:
        print(f"error: {widget.last_error}", file=sys.stderr)
        return 1
    widget._dock().raise_()  # the fine-tuning tab in front (the docks are tabs of one dock)
    viewer.layers.selection.active = mask
    viewer.window.resize(1600, 1000)
    for _ in range(20):
        QApplication.processEvents()
    path = args.out / "finetune_widget.png"
    viewer.screenshot(path=str(path), canvas_only=False)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB); {widget.status.text()}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
