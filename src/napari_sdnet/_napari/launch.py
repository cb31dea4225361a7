"""Start napari with the plugin: the README's main job (``napari-sdnet view`` / ``demo``)."""

from __future__ import annotations

from pathlib import Path

PLUGIN = "napari-sdnet"
WIDGET = "SDNet segmentation"


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
    """Dock the "SDNet segmentation" widget (on ``layer`` if given); returns the widget."""
    from napari_sdnet._napari._state import unwrap

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget = unwrap(widget)
    if layer is not None:
        widget.select_layer(layer)
    return widget


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
        _save_window(viewer, shot_path)
        return [written, shot_path]
    finally:
        viewer.close()
