"""Screenshots of the "Segmentation" widget on the bundled sample study (real window).

Needs a display; headless::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_segment.py \
        [--model bundled|PATH] [--out docs/images]

Writes ``segment_widget.png`` (the widget docked after segmenting the study) and
``segment_correct.png`` (the mask in paint mode, label 2, zoomed on the heart) into ``--out``.
The model defaults to the bundled one when it is installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def open_segmented_sample(model: str, size: tuple[int, int]):
    """A napari window with the sample study segmented by the segmentation widget (1 thread).

    Returns ``(viewer, image, contours, widget)``; raises SystemExit with the widget's message
    when segmenting fails. Shared by the screenshot scripts.
    """
    import napari
    import torch

    from napari_sdnet._napari.launch import _show_mid_slice, dock_segment_widget, open_in_viewer

    torch.set_num_threads(1)
    viewer = napari.Viewer(title="napari-sdnet")
    viewer.window.resize(*size)
    layers = open_in_viewer(viewer, None, sample=True)
    image, contours = layers
    _show_mid_slice(viewer, layers, sample=True)
    widget = dock_segment_widget(viewer, image)
    widget.set_model(model)
    widget.set_device("cpu")
    if widget.segment(image) is None:
        raise SystemExit(widget.status.text())
    widget.wait()
    if widget.last_error is not None:
        raise SystemExit(f"error: {widget.last_error}")
    return viewer, image, contours, widget


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled", help="'bundled' or a .safetensors file")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args(argv)

    from qtpy.QtWidgets import QApplication

    args.out.mkdir(parents=True, exist_ok=True)
    viewer, image, contours, widget = open_segmented_sample(args.model, (1600, 1000))
    contours.visible = False
    mask = widget.mask_layer_for(image)
    viewer.layers.selection.active = mask

    def shot(name: str) -> None:
        for _ in range(10):
            QApplication.processEvents()
        path = args.out / name
        viewer.screenshot(path=str(path), canvas_only=False)
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")

    viewer.window.resize(1600, 1000)
    shot("segment_widget.png")

    # correcting: paint mode on the mask, label 2, zoomed on the heart
    mask.mode = "paint"
    mask.selected_label = 2
    mask.brush_size = 4
    viewer.scene.camera.zoom *= 1.6
    ys, xs = contours.data[tuple(int(s) for s in viewer.dims.current_step[:2])].nonzero()
    if len(ys):
        sy, sx = image.scale[-2:]
        viewer.scene.camera.center = (float(ys.mean() * sy), float(xs.mean() * sx))
    shot("segment_correct.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
