"""Start napari with the plugin: the README's main job (``napari-sdnet view``)."""

from __future__ import annotations

from pathlib import Path

PLUGIN = "napari-sdnet"


def open_in_viewer(viewer, paths: list[str] | None = None, sample: bool = True) -> list:
    """Open ``paths`` with the plugin's reader, or the bundled sample study, in ``viewer``."""
    layers = []
    if paths:
        for path in paths:
            layers.extend(viewer.open(path, plugin=PLUGIN))
    elif sample:
        layers.extend(viewer.open_sample(PLUGIN, "sunnybrook"))
    return layers


def launch_viewer(
    paths: list[str] | None = None,
    sample: bool = True,
    screenshot: str | Path | None = None,
) -> None:
    """Open napari with ``paths`` (or the sample study) and run it.

    With ``screenshot`` the window is drawn, saved as a PNG and closed instead of running the
    event loop, so the same path can run on a machine with no screen (under Xvfb).
    """
    import napari

    viewer = napari.Viewer(title="napari-sdnet")
    layers = open_in_viewer(viewer, paths, sample)
    if layers and layers[0].ndim >= 3:
        # Show a mid-ventricular slice (and, for the sample, a phase with expert contours).
        viewer.dims.set_current_step(layers[0].ndim - 3, layers[0].data.shape[-3] // 2)
        if not paths and sample and layers[0].ndim == 4:
            from napari_sdnet.sample import sunnybrook_study

            viewer.dims.set_current_step(0, sunnybrook_study().labelled_frames()[0][1])
    if screenshot is None:
        napari.run()
        return
    from qtpy.QtWidgets import QApplication

    viewer.window._qt_window.resize(1400, 900)
    for _ in range(5):
        QApplication.processEvents()
    Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(path=str(screenshot), canvas_only=False)
    print(f"screenshot written to {screenshot}")
    viewer.close()
