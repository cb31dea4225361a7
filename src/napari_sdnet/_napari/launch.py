"""Start napari with the plugin: the README's main job (``napari-sdnet view`` / ``demo``).

``python -m napari_sdnet._napari.launch [--screenshot PNG] [--model M] [--device D]`` (what
``scripts/demo.sh`` runs) opens the sample study, segments it with the segmentation widget and
shows the "Cardiac function" widget on the result (:func:`launch_demo`).
"""

from __future__ import annotations

import sys
from pathlib import Path

PLUGIN = "napari-sdnet"
WIDGET = "Segmentation"
FUNCTION_WIDGET = "Cardiac function"


def open_in_viewer(viewer, paths: list[str] | None = None, sample: bool = True) -> list:
    """Open ``paths`` with the plugin's reader, or the bundled sample study, in ``viewer``."""
    layers = []
    if paths:
        for path in paths:
            layers.extend(viewer.open(path, plugin=PLUGIN))
    elif sample:
        layers.extend(viewer.open_sample(PLUGIN, "sunnybrook"))
    return layers


def dock_segment_widget(viewer, layer=None):
    """Dock the "Segmentation" widget (on ``layer`` if given); returns the widget."""
    from napari_sdnet._napari._state import unwrap

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget = unwrap(widget)
    if layer is not None:
        widget.select_layer(layer)
    return widget


def dock_function_widget(viewer, layer=None, tabify: bool = True):
    """Dock the "Cardiac function" widget (measuring ``layer`` if given); returns the widget.

    ``tabify``: as a tab over the segmentation widget, so the table and curve get the height.
    """
    from napari_sdnet._napari._state import unwrap

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, FUNCTION_WIDGET, tabify=tabify)
    widget = unwrap(widget)
    if layer is not None:
        widget.select_layer(layer)
    return widget


def _bring_to_front(widget, now: bool = False) -> None:
    """Show ``widget``'s tab in front of the other napari-sdnet docks (after they are tabbed)."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    def raise_dock() -> None:
        dock = widget._dock() if hasattr(widget, "_dock") else None
        if dock is not None:
            dock.raise_()

    if now:
        QApplication.processEvents()
        raise_dock()
        QApplication.processEvents()
    else:
        QTimer.singleShot(200, raise_dock)


def _measure_segmentation(segment_widget, function_widget, image) -> None:
    """Run the function widget on the mask the segmentation widget made for ``image``."""
    mask = segment_widget.mask_layer_for(image)
    if mask is not None:
        function_widget.select_layer(mask)
        function_widget.measure()
        function_widget.wait()


def _show_mid_slice(viewer, layers: list, sample: bool) -> None:
    """Show a mid-ventricular slice (and, for the sample, a phase with expert contours)."""
    if layers and layers[0].ndim >= 3:
        viewer.dims.set_current_step(layers[0].ndim - 3, layers[0].data.shape[-3] // 2)
        if sample and layers[0].ndim == 4:
            from napari_sdnet.sample import sunnybrook_study

            viewer.dims.set_current_step(0, sunnybrook_study().labelled_frames()[0][1])


def _save_window(viewer, path: str | Path, size: tuple[int, int] = (1400, 900)) -> Path:
    from qtpy.QtWidgets import QApplication

    viewer.window.resize(*size)
    for _ in range(5):
        QApplication.processEvents()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(path=str(path), canvas_only=False)
    return path


def launch_viewer(
    paths: list[str] | None = None,
    sample: bool = True,
    screenshot: str | Path | None = None,
    model: str | None = None,
    device: str | None = None,
) -> None:
    """Open napari with ``paths`` (or the sample study) and the segmentation widget, and run it.

    ``model`` (``"bundled"`` or a file) and ``device`` preset the widget's choices.

    With ``screenshot`` the window is drawn, saved as a PNG and closed instead of running the
    event loop, so the same path can run on a machine with no screen (under Xvfb).
    """
    import napari

    viewer = napari.Viewer(title="napari-sdnet")
    layers = open_in_viewer(viewer, paths, sample)
    _show_mid_slice(viewer, layers, not paths and sample)
    images = [layer for layer in layers if layer._type_string == "image"]
    widget = dock_segment_widget(viewer, images[0] if images else None)
    if model is not None:
        widget.set_model(model)
    if device is not None:
        widget.set_device(device)
    if screenshot is None:
        napari.run()
        return
    _save_window(viewer, screenshot)
    print(f"screenshot written to {screenshot}")
    viewer.close()


def launch_demo(
    model: str = "bundled",
    device: str = "auto",
    screenshot: str | Path | None = None,
    frames: str = "all frames",
) -> None:
    """The main job: the sample study, segmented, with its cardiac function shown.

    Opens the sample study, docks the segmentation widget and starts segmenting every frame
    in the background; the "Cardiac function" widget, docked below it, measures the new mask as
    soon as it arrives (indices table and volume curve). With ``screenshot`` it waits for both,
    saves the window as a PNG and closes (works under Xvfb); errors are then raised.
    """
    import napari

    viewer = napari.Viewer(title="napari-sdnet")
    layers = open_in_viewer(viewer, None, sample=True)
    image = layers[0]
    _show_mid_slice(viewer, layers, sample=True)
    seg_widget = dock_segment_widget(viewer, image)
    seg_widget.set_model(model)
    seg_widget.set_device(device)
    seg_widget.frames_combo.setCurrentText(frames)
    function_widget = dock_function_widget(viewer)
    _bring_to_front(function_widget)  # what the plugin is for: the indices and the curve
    started = seg_widget.segment(image)
    if screenshot is None:
        napari.run()
        return
    try:
        if started is None:
            from napari_sdnet.errors import InputError

            raise InputError(seg_widget.status.text())
        seg_widget.wait()
        if seg_widget.last_error is not None:
            raise seg_widget.last_error
        _measure_segmentation(seg_widget, function_widget, image)
        _bring_to_front(function_widget, now=True)
        _save_window(viewer, screenshot, size=(1600, 1000))
        print(f"screenshot written to {screenshot}")
    finally:
        viewer.close()


def run_headless_demo(
    output: str | Path,
    model: str = "bundled",
    device: str = "auto",
    *,
    overwrite: bool = False,
    frames: str = "all frames",
) -> list[Path]:
    """The main job without an event loop: sample study -> segmentation widget -> files.

    Opens the sample study in a hidden napari viewer, docks the segmentation widget and runs
    its own code path (worker, layers, export): writes ``<output>/<name>_myocardium.nii.gz``
    (ACDC values, lined up with the sample's geometry) and ``<output>/screenshot.png``. Needs a
    display (an X server such as Xvfb). Raises the widget's error (e.g.
    :class:`~napari_sdnet.errors.CheckpointError` for a missing model) instead of showing it.
    """
    import napari
    from napari_sdnet._napari._export import default_mask_name
    from napari_sdnet.errors import InputError

    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: exists and is not a folder")
    viewer = napari.Viewer(title="napari-sdnet demo", show=False)
    try:
        layers = open_in_viewer(viewer, None, sample=True)
        image = layers[0]
        mask_path = output / default_mask_name(image)
        shot_path = output / "screenshot.png"
        for path in (mask_path, shot_path):
            if path.exists() and not overwrite:
                raise InputError(f"{path}: file exists; refusing to overwrite (pass --overwrite)")
        _show_mid_slice(viewer, layers, sample=True)
        widget = dock_segment_widget(viewer, image)
        widget.set_model(model)
        widget.set_device(device)
        widget.frames_combo.setCurrentText(frames)
        if widget.segment(image) is None:
            raise InputError(widget.status.text())
        widget.wait()
        if widget.last_error is not None:
            raise widget.last_error
        output.mkdir(parents=True, exist_ok=True)
        viewer.layers.selection.active = widget.mask_layer_for(image)
        written = widget.export_mask(mask_path, binary=False, overwrite=overwrite)
        if written is None:
            raise InputError(f"could not write {mask_path}: {widget.status.text()}")
        _measure_segmentation(widget, dock_function_widget(viewer), image)
        _save_window(viewer, shot_path, size=(1600, 1000))
        return [written, shot_path]
    finally:
        viewer.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m napari_sdnet._napari.launch``: :func:`launch_demo` (scripts/demo.sh)."""
    import argparse

    from napari_sdnet.errors import SDNetError

    parser = argparse.ArgumentParser(
        prog="python -m napari_sdnet._napari.launch",
        description="napari with the sample study segmented and its cardiac function shown",
    )
    parser.add_argument("--screenshot", type=Path, default=None, help="save the window, exit")
    parser.add_argument("--model", default="bundled", help="'bundled' or a .safetensors file")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    parser.add_argument("--frames", default="all", choices=("all", "current"))
    args = parser.parse_args(argv)
    try:
        frames = {"all": "all frames", "current": "current frame"}[args.frames]
        launch_demo(args.model, args.device, args.screenshot, frames)
    except SDNetError as exc:
        print(f"napari-sdnet demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
