"""Screenshot of the napari-sdnet docks together in a 1600 x 1000 window (real window).

Needs a display; headless::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_docks.py \
        [--model bundled|PATH] [--out docs/images]

Segments the bundled sample study with the segmentation widget, docks the fine-tuning, latent
mixer and cardiac function widgets too (they open as tabs of one dock, so they fit the window
together), shows the predicted mask as a contour over the expert contours (told apart by their
colours) and writes ``docks_together.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZE = (1600, 1000)


def settle(n: int = 30) -> None:
    import time

    from qtpy.QtWidgets import QApplication

    for _ in range(n):
        QApplication.processEvents()
        time.sleep(0.02)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled", help="'bundled' or a .safetensors file")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args(argv)

    from screenshot_segment import open_segmented_sample  # this folder

    args.out.mkdir(parents=True, exist_ok=True)
    viewer, image, contours, seg = open_segmented_sample(args.model, SIZE)
    for name in ("Fine-tuning", "Latent mixer", "Cardiac function"):
        viewer.window.add_plugin_dock_widget("napari-sdnet", name)
        settle(10)
    mask = seg.mask_layer_for(image)
    mask.contour = 1
    mask.opacity = 1.0
    contours.opacity = 0.6
    seg._dock().raise_()  # the segmentation tab in front
    viewer.layers.selection.active = mask
    viewer.window.resize(*SIZE)
    settle()
    window = viewer.window._qt_window
    print(f"window {window.width()} x {window.height()}")
    path = args.out / "docks_together.png"
    viewer.screenshot(path=str(path), canvas_only=False)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
