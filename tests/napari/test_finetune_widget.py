"""The "Fine-tuning" dock widget.

Real napari viewer (under Xvfb), the synthetic phantom study and a ``tiny`` untrained model
saved in a temporary folder: the masks mean nothing, the tests check which slices are written,
the model bookkeeping (undo, save) and the messages. One torch thread (tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sdnet import api
from napari_sdnet._napari._finetune_widget import NO_EDIT_MESSAGE, FinetuneWidget
from napari_sdnet._napari._segment_widget import SegmentWidget
from napari_sdnet._napari._state import get_state

PLUGIN = "napari-sdnet"
TIMEOUT_MS = 60_000


def _errors(messages) -> list[str]:
    return [m for s, m in messages if s == "error"]


def _segmented(viewer, qtbot, model_file, layer_name="myocardium", widgets=None):
    """The phantom study segmented with the segmentation widget: (image, mask layer); the
    widget is appended to ``widgets`` when given."""
    image, _ = viewer.open_sample(PLUGIN, "phantom")
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segmentation (test)")
    seg.set_model(model_file)
    seg.set_device("cpu")
    seg.select_layer(image)
    seg.segment(image)
    qtbot.waitUntil(lambda: seg.worker is None, timeout=TIMEOUT_MS)
    if widgets is not None:
        widgets.append(seg)
    return image, viewer.layers[f"{image.name} {layer_name}"]


def _wait(widget, qtbot) -> None:
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def test_finetune_keeps_edited_slices_undo_and_save(
    make_napari_viewer, qtbot, tiny_model_file, tmp_path, messages
):
    viewer = make_napari_viewer()
    image, mask = _segmented(viewer, qtbot, tiny_model_file)
    state = get_state(viewer)
    base_model = state.model
    assert base_model is not None
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tuning")
    assert isinstance(widget, FinetuneWidget)
    widget.device_combo.setCurrentText("cpu")
    assert widget.chosen_image() is image and widget.mask_layer() is mask
    assert widget.lr_spin.value() == pytest.approx(api.FINETUNE_LR)  # one default everywhere

    # nothing painted yet
    assert widget.finetune() is None
    assert _errors(messages)[-1] == NO_EDIT_MESSAGE

    # the user paints label 2 on (t=2, z=3) with the brush API: the paint event lists it
    viewer.dims.set_current_step(0, 2)
    viewer.dims.set_current_step(1, 3)
    mask.brush_size = 9
    mask.paint((2, 3, 64, 64), 2)
    assert widget.edited == [(2, 3)]
    assert widget.slice_list.item(0).text() == "t=2, z=3"
    # a stroke with another label: listed, with a warning that only label 2 counts
    mask.data_setitem((np.array([5]), np.array([1]), np.array([10]), np.array([10])), 1)
    assert widget.edited == [(2, 3), (5, 1)]
    assert "only label 2" in [m for s, m in messages if s == "warning"][-1]
    widget.remove_slice((5, 1))
    assert widget.edited == [(2, 3)] and widget.slice_list.count() == 1
    # the current slice can be added by hand, and removed again
    viewer.dims.set_current_step(0, 0)
    assert widget.add_current_slice() == (0, 3) and widget.slice_list.count() == 2
    widget.slice_list.item(0).setSelected(True)
    widget.remove_selected()
    assert widget.edited == [(2, 3)]

    before = np.array(mask.data, copy=True)
    messages.clear()
    # the default budget is the API's step budget (the same result on any machine)
    assert widget.budget_kind.currentText() == "steps"
    assert widget.budget_value.value() == api.FINETUNE_STEPS
    widget.set_budget(steps=2)
    worker = widget.finetune()
    assert worker is not None and widget.run_button.text() == "Stop"
    _wait(widget, qtbot)
    assert not _errors(messages), messages
    assert widget.run_button.text() == "Fine-tune"
    new_model = widget.last_model
    assert new_model is not None and state.model is new_model and new_model is not base_model
    assert new_model.info.training["finetuned"][-1]["labelled_slices"] == 1
    assert new_model.info.training["finetuned"][-1]["steps"] == 2
    assert widget.progress.value() == 100 and widget.loss_label.text().startswith("step 2: ")
    # the last losses (not the empty final report), in words rather than the trainer's keys
    text = widget.loss_label.text()
    assert "Dice loss, corrected slices" in text and "reconstruction error" in text
    assert not any(k in text for k in ("dice_loss", "recon_l1", "labelled", "discriminators"))
    # the loss plot: Dice loss and reconstruction errors in two panels, raw and smoothed
    assert [x for x, _ in widget.loss_history["dice_loss"]] == [1, 2]
    assert set(widget.loss_history) == {"dice_loss", "recon_l1", "unl_recon_l1"}
    dice_axes, recon_axes = widget.loss_figure.axes
    assert len(dice_axes.lines) == 2 and len(recon_axes.lines) == 4
    assert list(dice_axes.lines[0].get_xdata()) == [1, 2]
    legend = [t.get_text() for t in widget.loss_figure.legends[0].get_texts()]
    assert legend == [
        "Dice loss, corrected slices",
        "reconstruction error, corrected slices",
        "reconstruction error, other slices",
    ]

    # the edited slice is untouched, every other slice is the new model's segmentation
    np.testing.assert_array_equal(mask.data[2, 3], before[2, 3])
    expected = api.segment(new_model, image.data, image.scale).labels()
    keep = np.zeros(mask.data.shape[:2], bool)
    keep[2, 3] = True
    np.testing.assert_array_equal(mask.data[~keep], expected[~keep])
    record = state.record_for(image)
    assert record.mask.layer is mask and state.is_made_by_plugin(mask)
    assert record.mask.untouched(0) and not record.mask.untouched(2)  # frame 2 holds the edit
    assert record.model_source == new_model.source

    # Save model...: a loadable file; an existing file is not replaced without confirmation
    target = tmp_path / "tuned"
    widget.ask_save_path = lambda parent, suggested: str(target)
    written = widget.save_model()
    assert written == tmp_path / "tuned.safetensors"
    loaded = api.load_model(written, "cpu")
    assert loaded.info.training["finetuned"][-1]["steps"] == 2
    asked = []
    widget.confirm_overwrite = lambda parent, path: asked.append(path) or False
    stamp = written.stat().st_mtime_ns
    assert widget.save_model() is None and asked == [written]
    assert written.stat().st_mtime_ns == stamp

    # Undo: the previous model and mask are back
    assert widget.undo_button.isEnabled()
    assert widget.undo()
    assert state.model is base_model
    np.testing.assert_array_equal(mask.data, before)
    assert not widget.undo_button.isEnabled() and widget.edited == [(2, 3)]
    assert "bundled" not in widget.status.text() and repr(mask.name) in widget.status.text()


def test_stop_keeps_model_and_messages(make_napari_viewer, qtbot, tiny_model_file, messages):
    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tuning (test)")
    assert widget.finetune() is None
    assert "no segmented study" in _errors(messages)[-1]

    image, mask = _segmented(viewer, qtbot, tiny_model_file)
    assert widget.chosen_image() is image
    widget.device_combo.setCurrentText("cpu")
    # the user erases the slice (label 0) and paints another label: refused, label 2 needed
    ys, xs = np.nonzero(mask.data[1, 2])
    if ys.size:
        n = ys.size
        mask.data_setitem((np.full(n, 1), np.full(n, 2), ys, xs), 0)
    mask.data_setitem((np.array([1]), np.array([2]), np.array([30]), np.array([30])), 3)
    assert widget.edited == [(1, 2)]
    assert widget.finetune() is None
    assert "label 2" in _errors(messages)[-1]

    mask.paint((1, 2, 64, 64), 2)
    messages.clear()
    widget.set_budget(seconds=60)
    worker = widget.finetune()
    assert worker is not None
    qtbot.waitUntil(lambda: widget.loss_label.text().startswith("step"), timeout=TIMEOUT_MS)
    widget.run_button.click()  # Stop
    _wait(widget, qtbot)
    assert not _errors(messages), messages
    record = widget.last_model.info.training["finetuned"][-1]
    assert 1 <= record["steps"] and record["seconds"] < 60
    assert get_state(viewer).model is widget.last_model
    assert "stopped" in widget.status.text()
    assert not get_state(viewer).busy and widget.run_button.text() == "Fine-tune"


def test_3d_study_errors_and_payload_fallback(
    make_napari_viewer, qtbot, tiny_model_file, messages, monkeypatch
):
    from napari_sdnet._napari import _finetune_widget as fw
    from napari_sdnet.errors import InputError

    viewer = make_napari_viewer()
    study, _ = viewer.open_sample(PLUGIN, "phantom")
    image = viewer.add_image(study.data[0], name="frame0", scale=study.scale[1:])
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segmentation (test)")
    seg.set_model(tiny_model_file)
    seg.set_device("cpu")
    seg.segment(image)
    qtbot.waitUntil(lambda: seg.worker is None, timeout=TIMEOUT_MS)
    mask = viewer.layers["frame0 myocardium"]
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tuning (test)")
    assert widget.select_image(image) and widget.mask_layer() is mask
    widget.device_combo.setCurrentText("cpu")
    mask.paint((2, 40, 40), 2)
    assert widget.edited == [(2,)] and widget.slice_list.item(0).text() == "z=2"

    # a payload the widget does not understand: the changed slices are found by comparison
    assert fw._painted_slices([object()], 3) is None
    mask.data[4, 0, 0] = 2
    widget._on_paint(type("E", (), {"value": [object()], "type": "paint"})())
    assert widget.edited == [(2,), (4,)]
    widget.remove_slice((4,))

    # errors from the API and running out of memory are shown as messages
    real_finetune = api.finetune

    def bad(*args, **kwargs):
        raise InputError("labels of another shape")
        yield  # pragma: no cover

    monkeypatch.setattr(api, "finetune", bad)
    widget.set_budget(steps=1)
    widget.finetune()
    _wait(widget, qtbot)
    assert _errors(messages)[-1] == "labels of another shape"

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # pragma: no cover

    monkeypatch.setattr(api, "finetune", oom)
    widget.device_combo.setCurrentText("auto")
    widget.finetune()
    _wait(widget, qtbot)
    assert "out of memory" in _errors(messages)[-1]
    assert widget.device_combo.currentText() == "cpu"
    assert widget.last_model is None and not widget.undo_button.isEnabled()

    monkeypatch.setattr(api, "finetune", real_finetune)
    before = np.array(mask.data, copy=True)
    messages.clear()
    widget.finetune()
    _wait(widget, qtbot)
    assert not _errors(messages), messages
    np.testing.assert_array_equal(mask.data[2], before[2])
    expected = api.segment(widget.last_model, image.data, image.scale).labels()
    np.testing.assert_array_equal(np.delete(mask.data, 2, 0), np.delete(expected, 2, 0))
    record = get_state(viewer).record_for(image)
    assert not record.mask.untouched()  # it holds the user's slice: a re-run makes a new layer
    assert widget.undo()
    np.testing.assert_array_equal(mask.data, before)


def test_slices_painted_while_training_are_kept(
    make_napari_viewer, qtbot, tiny_model_file, messages
):
    viewer = make_napari_viewer()
    image, mask = _segmented(viewer, qtbot, tiny_model_file)
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tuning (test)")
    widget.device_combo.setCurrentText("cpu")
    mask.paint((0, 1, 64, 64), 2)
    widget.set_budget(seconds=60)
    messages.clear()
    assert widget.finetune() is not None
    qtbot.waitUntil(lambda: widget.loss_label.text().startswith("step"), timeout=TIMEOUT_MS)
    mask.paint((6, 4, 20, 20), 2)  # painted while training runs
    painted = np.array(mask.data[6, 4], copy=True)
    widget.stop()
    _wait(widget, qtbot)
    assert not _errors(messages), messages
    assert widget.edited == [(0, 1), (6, 4)]
    np.testing.assert_array_equal(mask.data[6, 4], painted)


def test_a_three_structure_model_in_the_docks(
    make_napari_viewer, qtbot, three_model_file, messages
):
    """One Labels layer of the three structures; corrections of any of them fine-tune."""
    viewer = make_napari_viewer()
    widgets: list = []
    image, layer = _segmented(viewer, qtbot, three_model_file, "segmentation", widgets)
    seg = widgets[0]
    assert not _errors(messages), messages
    assert f"{image.name} myocardium" not in viewer.layers
    state = get_state(viewer)
    expected = api.segment(state.model, image.data, image.scale).labels()
    np.testing.assert_array_equal(layer.data, expected)
    assert set(np.unique(layer.data)) <= {0, 1, 2, 3}
    assert "RV / myocardium / LV found on" in seg.status.text()

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tuning")
    widget.device_combo.setCurrentText("cpu")
    assert widget.mask_layer() is layer
    viewer.dims.set_current_step(0, 2)
    viewer.dims.set_current_step(1, 3)
    layer.brush_size = 9
    messages.clear()
    layer.paint((2, 3, 64, 64), 3)  # the LV cavity: counts for this model, no warning
    layer.paint((2, 3, 40, 40), 1)  # the RV cavity too
    assert widget.edited == [(2, 3)]
    assert not [m for s, m in messages if s == "warning"], messages
    layer.data_setitem((np.array([5]), np.array([1]), np.array([10]), np.array([10])), 4)
    assert "only labels 1 (RV), 2 (myocardium) and 3 (LV) count" in messages[-1][1]
    widget.remove_slice((5, 1))
    painted = np.array(layer.data[2, 3], copy=True)
    widget.set_budget(steps=2)
    assert widget.finetune() is not None
    _wait(widget, qtbot)
    assert not _errors(messages), messages
    new_model = widget.last_model
    assert new_model.config.structures == ("rv", "myocardium", "lv")
    assert new_model.info.training["finetuned"][-1]["labelled_slices"] == 1
    # the corrected slice kept, the rest the new model's three-structure segmentation
    np.testing.assert_array_equal(layer.data[2, 3], painted)
    again = api.segment(new_model, image.data, image.scale).labels()
    np.testing.assert_array_equal(layer.data[0], again[0])
