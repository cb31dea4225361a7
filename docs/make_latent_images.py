"""Make the latent-mixer images of the docs (real napari window; run under Xvfb without a screen).

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python docs/make_latent_images.py \\
        [--out docs/images] [--figure3 fig3.png]

Writes ``latent_mixer.png``: the napari window with the sample study segmented with the bundled
model by the segmentation widget, then the "Latent mixer" showing g(M of z=8, Z of z=3)
at t=0 beside the input and its reconstruction (napari's grid mode). With ``--figure3``, also
the mixer's "Figure 3..." PNG for the same two slices. (``docs/images/figure3_sample.png`` is
made by the example in docs/api.md.)
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images")
    parser.add_argument("--figure3", type=Path, help="also save the mixer's Figure 3 PNG here")
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-sdnet")
    image, contours = viewer.open_sample("napari-sdnet", "sunnybrook")
    seg_dock, seg_widget = viewer.window.add_plugin_dock_widget(
        "napari-sdnet", "Segmentation"
    )
    seg_widget.set_model("bundled")
    seg_widget.set_device("cpu")
    if seg_widget.segment(image) is None:
        raise SystemExit(seg_widget.status.text())
    seg_widget.wait()
    if seg_widget.last_error is not None:
        raise seg_widget.last_error
    viewer.window.remove_dock_widget(seg_dock)  # room for the mixer

    viewer.dims.set_current_step(0, 0)
    viewer.dims.set_current_step(1, 3)
    _, mixer = viewer.window.add_plugin_dock_widget("napari-sdnet", "Latent mixer")
    mixer.show_layer.setChecked(True)  # the preview also as a layer (it is drawn in the dock)
    # side by side (napari's grid mode): the input, its reconstruction g(M_3, Z_3) and the
    # preview g(M_8, Z_3)
    recon = viewer.layers[f"{image.name} reconstruction"]
    for layer in viewer.layers:
        layer.visible = layer in (image, recon, mixer.preview_layer)
    viewer.grid.enabled = True
    viewer.grid.shape = (1, 3)
    mixer.set_choice(mask_from=(0, 8), z_from=(0, 3))
    viewer.layers.selection.active = mixer.preview_layer
    viewer.window.resize(1800, 1000)
    for _ in range(10):
        QApplication.processEvents()
    viewer.reset_view()
    for _ in range(5):
        QApplication.processEvents()
    mixer.heat_canvas.draw()
    for _ in range(5):
        QApplication.processEvents()
    args.out.mkdir(parents=True, exist_ok=True)
    shot = args.out / "latent_mixer.png"
    viewer.screenshot(path=str(shot), canvas_only=False)
    print(f"wrote {shot}; preview: {mixer.preview_name}; {mixer.status.text()}")
    if args.figure3 is not None:
        written = mixer.export_figure3(args.figure3, overwrite=True)
        print(f"wrote {written}")
    viewer.close()


if __name__ == "__main__":
    main()
