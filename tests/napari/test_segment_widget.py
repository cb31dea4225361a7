"""The "Segmentation" dock widget, its per-viewer state and the headless demo.

Real napari viewers (under Xvfb) and a ``tiny`` untrained model saved in a temporary folder:
the masks mean nothing, the tests check shapes, alignment, values, the layer rules and the
messages. One torch thread (see tests/test_api.py for why).
"""

from __future__ import annotations

import threading

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_sdnet import api
from napari_sdnet._napari._segment_widget import (
    FRAMES_CURRENT,
    SegmentWidget,
    segment_selected_layer,
)
from napari_sdnet._napari._state import get_state
from napari_sdnet.sample import sunnybrook_study

PLUGIN = "napari-sdnet"
TIMEOUT_MS = 60_000


def _widget(viewer, model_file: str) -> SegmentWidget:
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segmentation (test)")
    widget.set_model(model_file)
    widget.set_device("cpu")
    return widget


def _run(widget: SegmentWidget, qtbot, layer=None) -> None:
    assert widget.segment(layer) is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def _errors(messages) -> list[str]:
    return [m for s, m in messages if s == "error"]


# ------------------------------------------------------------------------ sample study, 4D
def test_segment_sample_aligned_saved_and_exported(
    make_napari_viewer, qtbot, tiny_model_file, tmp_path, messages
):
    viewer = make_napari_viewer()
    image, _contours = viewer.open_sample(PLUGIN, "sunnybrook")
    # the npe2 widget contribution docks it
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segmentation")
    assert isinstance(widget, SegmentWidget)
    assert widget.chosen_layer() is image
    widget.set_model(tiny_model_file)
    widget.set_device("cpu")
    assert widget.device_label.text().startswith("cpu")
    _run(widget, qtbot)
    assert not _errors(messages), messages

    mask = viewer.layers["SC-HF-I-1 cine myocardium"]
    recon = viewer.layers["SC-HF-I-1 cine reconstruction"]
    assert mask._type_string == "labels" and recon._type_string == "image"
    assert mask.data.shape == recon.data.shape == image.data.shape == (20, 12, 144, 144)
    assert mask.data.dtype == np.uint8 and set(np.unique(mask.data)) <= {0, 2}
    assert mask.data.any()
    for layer in (mask, recon):
        np.testing.assert_array_equal(layer.scale, image.scale)
        np.testing.assert_array_equal(layer.translate, image.translate)
        np.testing.assert_array_equal(layer.extent.world, image.extent.world)
        assert layer.metadata["sdnet_geometry"] == image.metadata["sdnet_geometry"]
        assert layer.metadata is not image.metadata
    assert mask.selected_label == 2 and not recon.visible
    assert widget.progress.value() == widget.progress.maximum() == 240

    record = get_state(viewer).record_for(image)
    assert record.mask.layer is mask and record.reconstruction.layer is recon
    assert record.segmentation.z.shape == (20, 12, 16)
    assert record.segmentation.model_mask.shape == (20, 12, 64, 64)
    assert get_state(viewer).is_made_by_plugin(mask)
    assert not get_state(viewer).is_made_by_plugin(_contours)

    # File > Save Selected Layer(s) through the plugin's writer: lined up with the study
    source = nib.load(sunnybrook_study().image)
    viewer.layers.selection = {mask}
    saved = tmp_path / "saved.nii.gz"
    viewer.layers.save(str(saved), selected=True, plugin=PLUGIN)
    np.testing.assert_array_equal(nib.load(saved).affine, source.affine)
    np.testing.assert_array_equal(np.asarray(nib.load(saved).dataobj).T, mask.data)

    # Export mask... (dialogs replaced): ACDC values, then binary, then overwrite rules
    out = tmp_path / "exported"  # no suffix: .nii.gz is added
    widget.ask_save_path = lambda parent, suggested: str(out)
    asked = []
    widget.confirm_overwrite = lambda parent, path: asked.append(path) or False
    written = widget.export_mask()
    assert written == tmp_path / "exported.nii.gz"
    back = nib.load(written)
    np.testing.assert_array_equal(back.affine, source.affine)
    assert back.header.get_zooms() == source.header.get_zooms()
    np.testing.assert_array_equal(np.asarray(back.dataobj).T, mask.data)
    assert back.get_data_dtype() == np.uint8

    widget.export_values.setCurrentIndex(1)  # binary
    assert widget.export_mask() is None and asked == [written]  # refused: file kept
    np.testing.assert_array_equal(np.asarray(nib.load(written).dataobj).T, mask.data)
    widget.confirm_overwrite = lambda parent, path: True
    assert widget.export_mask() == written
    binary = np.asarray(nib.load(written).dataobj).T
    np.testing.assert_array_equal(binary, (mask.data == 2).astype(np.uint8))
    np.testing.assert_array_equal(nib.load(written).affine, source.affine)
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]

    widget.ask_save_path = lambda parent, suggested: None  # cancelled dialog
    assert widget.export_mask() is None


# ------------------------------------------------------------------- re-running, edits, 2D
def test_rerun_updates_untouched_layer_and_keeps_painted_one(
    make_napari_viewer, qtbot, tiny_model_file, messages
):
    viewer = make_napari_viewer()
    image, _ = viewer.open_sample(PLUGIN, "phantom")
    # a layer the user made with the name the plugin would use: never touched
    user = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="phantom cine myocardium")
    widget = _widget(viewer, tiny_model_file)
    widget.select_layer(image)
    _run(widget, qtbot)
    assert not user.data.any()
    mask = viewer.layers["phantom cine myocardium [2]"]
    n_layers = len(viewer.layers)
    first = mask.data.copy()

    _run(widget, qtbot)  # untouched: updated in place
    assert len(viewer.layers) == n_layers
    assert viewer.layers["phantom cine myocardium [2]"] is mask
    np.testing.assert_array_equal(mask.data, first)  # same model, same image

    mask.data[0, 0, :5, :5] = 2  # the user paints (napari paints in place)
    mask.refresh()
    edited = mask.data.copy()
    _run(widget, qtbot)
    assert len(viewer.layers) == n_layers + 1
    np.testing.assert_array_equal(mask.data, edited)  # the painted layer is kept
    new = viewer.layers["phantom cine myocardium [3]"]
    record = get_state(viewer).record_for(image)
    assert record.mask.layer is new and record.reconstruction.layer.name.endswith("reconstruction")
    assert any("[3]" in m for s, m in messages if s == "info"), messages
    assert not _errors(messages)

    # a 2D image works too
    flat = viewer.add_image(image.data[2, 3], name="one slice", scale=image.scale[-2:])
    _run(widget, qtbot, flat)
    assert viewer.layers["one slice myocardium"].data.shape == flat.data.shape
    assert any("not opened from a NIfTI file" in m for s, m in messages if s == "warning")


def test_current_frame_mode_writes_only_that_frame(
    make_napari_viewer, qtbot, tiny_model_file, messages
):
    viewer = make_napari_viewer()
    image, _ = viewer.open_sample(PLUGIN, "phantom")
    widget = _widget(viewer, tiny_model_file)
    widget.select_layer(image)
    assert widget.frames_combo.isEnabled()
    widget.frames_combo.setCurrentText(FRAMES_CURRENT)
    viewer.dims.set_current_step(0, 3)
    assert widget.current_frame(image) == 3
    _run(widget, qtbot)
    assert not _errors(messages), messages
    mask = viewer.layers["phantom cine myocardium"]
    assert mask.data.shape == image.data.shape  # stays 4D: saves aligned
    model = api.load_model(tiny_model_file, "cpu")
    expected = api.segment(model, image.data[3], image.scale[1:]).labels()
    np.testing.assert_array_equal(mask.data[3], expected)
    assert not np.delete(mask.data, 3, axis=0).any()
    record = get_state(viewer).record_for(image)
    assert record.segmentation is None and set(record.frames) == {3}
    assert record.result_for(3)[0].z.shape == (6, 16)

    # paint frame 1, segment frame 5: written in place, the painted frame 1 is kept
    mask.data[1, 2, 10:20, 10:20] = 2
    before = mask.data.copy()
    viewer.dims.set_current_step(0, 5)
    _run(widget, qtbot)
    assert viewer.layers["phantom cine myocardium"] is mask
    assert "phantom cine myocardium [2]" not in viewer.layers
    expected5 = api.segment(model, image.data[5], image.scale[1:]).labels()
    np.testing.assert_array_equal(mask.data[5], expected5)
    np.testing.assert_array_equal(np.delete(mask.data, 5, 0), np.delete(before, 5, 0))


# -------------------------------------------------------------------------------- cancel
def test_cancel_mid_run_adds_no_layer(
    make_napari_viewer, qtbot, tiny_model_file, messages, monkeypatch
):
    from qtpy.QtCore import QCoreApplication, QEvent

    viewer = make_napari_viewer()
    image, _ = viewer.open_sample(PLUGIN, "phantom")
    gates = [threading.Event()]
    real = api.segment_iter

    def slow(*args, **kwargs):
        gate = gates[-1]
        for i, item in enumerate(real(*args, **kwargs)):
            yield item
            if i == 1:
                gate.wait(10)

    monkeypatch.setattr(api, "segment_iter", slow)
    widget = _widget(viewer, tiny_model_file)
    widget.batch_size = 4
    n_layers = len(viewer.layers)
    widget.segment(image)
    qtbot.waitUntil(lambda: widget.progress.value() > 0, timeout=TIMEOUT_MS)
    assert not widget.segment_button.isEnabled() and widget.cancel_button.isEnabled()
    widget.cancel()
    gates[-1].set()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert len(viewer.layers) == n_layers
    assert get_state(viewer).record_for(image) is None
    assert any("cancelled" in m for s, m in messages if s == "info")
    assert widget.segment_button.isEnabled() and not get_state(viewer).busy

    # closing the widget mid-run stops its job too
    gates.append(threading.Event())
    worker = widget.segment(image)
    ended = []
    worker.finished.connect(lambda: ended.append(True))
    qtbot.waitUntil(lambda: widget.progress.value() > 0, timeout=TIMEOUT_MS)
    viewer.window.remove_dock_widget(widget)
    widget.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
    assert worker.abort_requested
    gates[-1].set()
    qtbot.waitUntil(lambda: bool(ended), timeout=TIMEOUT_MS)
    assert len(viewer.layers) == n_layers


# ------------------------------------------------------------------------------ messages
def test_messages_for_bad_input_and_bad_models(
    make_napari_viewer, qtbot, tiny_model_file, tmp_path, messages, monkeypatch
):
    viewer = make_napari_viewer()
    widget = _widget(viewer, tiny_model_file)
    assert widget.segment() is None
    assert "no image layer" in _errors(messages)[-1]

    five = viewer.add_image(np.zeros((2, 2, 3, 16, 16), np.float32), name="five")
    assert widget.chosen_layer() is None  # not offered
    assert widget.segment() is None
    assert "'five' is 5D" in _errors(messages)[-1]
    assert not widget.select_layer(five)

    flat = viewer.add_image(np.full((3, 32, 32), 7.0, np.float32), name="flat")
    assert widget.chosen_layer() is flat
    _run(widget, qtbot)
    assert "constant" in _errors(messages)[-1]
    assert "flat myocardium" not in viewer.layers

    nan = viewer.add_image(np.full((32, 32), np.nan, np.float32), name="nan")
    _run(widget, qtbot, nan)
    assert "no finite values" in _errors(messages)[-1]

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a model")
    widget.set_model(bad)
    _run(widget, qtbot, flat)
    assert _errors(messages)[-1].startswith("cannot load the model:")
    assert "bad.safetensors" in _errors(messages)[-1]

    widget.set_model(tmp_path / "missing.safetensors")
    _run(widget, qtbot, flat)
    assert "missing.safetensors" in _errors(messages)[-1]

    # CUDA out of memory: memory freed, device switched to CPU, the user told to retry
    ok = viewer.add_image(np.random.default_rng(0).random((2, 32, 32), np.float32), name="ok")
    widget.set_model(tiny_model_file)
    widget.set_device("auto")

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # pragma: no cover

    monkeypatch.setattr(api, "segment_iter", oom)
    _run(widget, qtbot, ok)
    assert "out of memory" in _errors(messages)[-1] and "retry" in _errors(messages)[-1]
    assert widget.device_combo.currentText() == "cpu"
    assert get_state(viewer).model is None
    assert "ok myocardium" not in viewer.layers


def test_layers_menu_command_docks_widget_on_selected_layer(make_napari_viewer, messages):
    from napari._app_model import get_app_model
    from npe2 import PluginManager

    viewer = make_napari_viewer()
    menus = PluginManager.instance().get_manifest(PLUGIN).contributions.menus
    assert [i.command for i in menus["napari/layers/segment"]] == ["napari-sdnet.segment_layer"]
    items = get_app_model().menus.get_menu("napari/layers/segment")
    ours = [i for i in items if getattr(i, "command", None) and i.command.id.startswith(PLUGIN)]
    assert [i.command.id for i in ours] == ["napari-sdnet.segment_layer"]
    assert ours[0].when.eval({"active_layer_type": "image"})
    assert not ours[0].when.eval({"active_layer_type": "labels"})
    a = viewer.add_image(np.zeros((3, 16, 16), np.float32), name="a")
    b = viewer.add_image(np.zeros((3, 16, 16), np.float32), name="b")
    viewer.layers.selection.active = a
    get_app_model().commands.execute_command("napari-sdnet.segment_layer").result()
    widget = viewer.window.dock_widgets["Segmentation (napari-sdnet)"]
    assert isinstance(widget, SegmentWidget) and widget.chosen_layer() is a
    viewer.layers.selection.active = b
    segment_selected_layer(viewer)  # the same widget, now on b
    assert widget.chosen_layer() is b
    five = viewer.add_image(np.zeros((2, 2, 2, 8, 8), np.float32), name="five")
    viewer.layers.selection.active = five
    segment_selected_layer(viewer)
    assert "'five' is 5D" in _errors(messages)[-1]


# ------------------------------------------------------------------------- headless demo
def test_headless_demo_writes_aligned_mask_and_screenshot(tiny_model_file, tmp_path, capsys):
    from napari_sdnet import cli

    out = tmp_path / "demo"
    rc = cli.main(
        ["demo", "--headless", "-o", str(out), "--model", tiny_model_file, "--device", "cpu"]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    mask_path = out / "sunnybrook_sc-hf-i-1_cine_myocardium.nii.gz"
    assert f"wrote {mask_path}" in printed and f"wrote {out / 'screenshot.png'}" in printed
    source = nib.load(sunnybrook_study().image)
    mask = nib.load(mask_path)
    np.testing.assert_array_equal(mask.affine, source.affine)
    assert mask.shape == source.shape
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 2}
    assert (out / "screenshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # outputs are never replaced without --overwrite
    rc = cli.main(["demo", "--headless", "-o", str(out), "--model", tiny_model_file])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


@pytest.mark.skipif(api.bundled_model_path().is_file(), reason="a bundled model is installed")
def test_headless_demo_without_bundled_model_says_so(tmp_path, capsys):
    from napari_sdnet import cli

    rc = cli.main(["demo", "--headless", "-o", str(tmp_path / "d"), "--device", "cpu"])
    assert rc == 2
    assert "no bundled model is installed yet" in capsys.readouterr().err
    assert not (tmp_path / "d" / "screenshot.png").exists()


def test_slice_position_shows_units_and_indices(make_napari_viewer):
    """The canvas says where the sliders stand in ms / mm and as frame / slice numbers."""
    from napari_sdnet._napari._dock import POSITION_OVERLAY, show_slice_position

    viewer = make_napari_viewer()
    viewer.add_image(
        np.zeros((20, 12, 16, 16), np.float32),
        scale=(35.5, 10.0, 1.4, 1.4),
        units=("millisecond", "millimeter", "millimeter", "millimeter"),
        axis_labels=("t", "z", "y", "x"),
    )
    show_slice_position(viewer)
    show_slice_position(viewer)  # a second widget: still one overlay, one connection
    viewer.dims.current_step = (3, 7, 0, 0)
    overlay = viewer.canvas.overlays[POSITION_OVERLAY]
    assert overlay.visible and overlay.position == "top_right"
    assert not viewer.canvas.overlays["text"].visible  # left to the corrected-slice mark
    # the indices as napari's sliders show them (from 0)
    assert overlay.text == "t = 106.5 ms (frame 3 of 0-19)\nz = 70 mm (slice 7 of 0-11)"
    viewer.dims.ndisplay = 3  # z is displayed now: only t is listed
    assert overlay.text.splitlines() == ["t = 106.5 ms (frame 3 of 0-19)"]
