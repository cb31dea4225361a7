"""One coherent napari session (issue #23): the docks together in a real window.

The model in use is shared (a fine-tuned model is what Segment uses next), one job runs at a
time, Undo restores exactly what it says, predicted and expert labels look different, the docks
fit a laptop screen, every kind of edit is listed, the latent preview hides nothing, and long
jobs show in napari's activity. A ``tiny`` untrained model: the masks mean nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QAbstractSlider,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QDockWidget,
    QLineEdit,
    QListWidget,
    QProgressBar,
)

from napari_sdnet import api
from napari_sdnet._napari._corrections import text_overlay
from napari_sdnet._napari._finetune_widget import FinetuneWidget
from napari_sdnet._napari._latent_widget import PREVIEW_NAME, LatentWidget
from napari_sdnet._napari._state import get_state

PLUGIN = "napari-sdnet"
TIMEOUT_MS = 60_000
DOCKS = ("Segmentation", "Fine-tuning", "Latent mixer", "Cardiac function")


def _finetuner(viewer) -> FinetuneWidget:
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tuning (test)")
    widget.device_combo.setCurrentText("cpu")
    return widget


def _phantom_segmented(viewer, segmenter):
    image, expert = viewer.open_sample(PLUGIN, "phantom")
    seg = segmenter(viewer, image)
    return image, expert, seg, viewer.layers[f"{image.name} myocardium"]


def _wait(widget, qtbot) -> None:
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def _settle(ms: int = 200) -> None:
    end = time.monotonic() + ms / 1000
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


# ------------------------------------------------------------- 1. the fine-tuned model is used
def test_finetuned_model_is_reused_when_segmenting_again(
    make_napari_viewer, qtbot, segmenter, errors, monkeypatch, tmp_path
):
    viewer = make_napari_viewer()
    image, _, seg, mask = _phantom_segmented(viewer, segmenter)
    state = get_state(viewer)
    base = state.model
    tune = _finetuner(viewer)
    mask.paint((2, 3, 64, 64), 2)
    tune.set_budget(steps=2)
    assert tune.finetune() is not None
    _wait(tune, qtbot)
    assert not errors()
    tuned = tune.last_model
    assert state.model is tuned and state.model_name() == "fine-tuned 1"
    # every model chooser offers it by name and shows it in use
    assert seg.model_combo.currentText() == "fine-tuned 1"
    assert seg.model_source() == "session:fine-tuned 1"
    assert [seg.model_combo.itemText(i) for i in range(seg.model_combo.count())][2:] == [
        "fine-tuned 1"
    ]

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded again")

    monkeypatch.setattr(api, "load_model", no_loading)
    assert seg.segment(image) is not None
    _wait(seg, qtbot)
    assert not errors(), errors()
    record = state.record_for(image)
    assert state.model is tuned and record.model_source == tuned.source
    np.testing.assert_array_equal(
        record.mask.layer.data, api.segment(tuned, image.data, image.scale).labels()
    )
    # the bundled/file model can be chosen again by hand
    seg.set_model(state.finetuned_models()[0].name)
    assert seg.model_source() == "session:fine-tuned 1"
    seg.model_combo.setCurrentIndex(1)
    assert seg.model_source() != "session:fine-tuned 1"
    assert base is not tuned

    # a saved model keeps its name and says where it went
    target = tune.save_model(tmp_path / "tuned.safetensors")
    assert target is not None
    assert seg.model_combo.itemText(2) == "fine-tuned 1, saved as tuned.safetensors"


# --------------------------------------- 2. one job at a time; Undo after an overlapping attempt
def test_segment_is_disabled_while_finetuning_and_undo_restores_what_it_says(
    make_napari_viewer, qtbot, segmenter, errors
):
    viewer = make_napari_viewer()
    image, _, seg, mask = _phantom_segmented(viewer, segmenter)
    state = get_state(viewer)
    base = state.model
    tune = _finetuner(viewer)
    mask.paint((1, 2, 64, 64), 2)
    before = np.array(mask.data, copy=True)
    n_layers = len(viewer.layers)
    tune.set_budget(seconds=60)
    assert tune.finetune() is not None
    qtbot.waitUntil(lambda: tune.loss_label.text().startswith("step"), timeout=TIMEOUT_MS)
    # the other widgets cannot start a job, and say why
    assert not seg.segment_button.isEnabled()
    assert seg.segment_button.toolTip().startswith("disabled: a fine-tuning is running")
    assert seg.segment(image) is None
    assert "fine-tuning is running" in errors()[-1]
    assert state.busy and state.job == "fine-tuning"
    assert tune.undo() is False  # nothing to undo yet, and a job runs
    tune.stop()
    _wait(tune, qtbot)
    assert seg.segment_button.isEnabled() and not seg.segment_button.toolTip().startswith("dis")
    assert len(viewer.layers) == n_layers  # the refused Segment made no layer
    tuned_mask = np.array(mask.data, copy=True)
    assert not np.array_equal(tuned_mask, before)

    # Undo names what it restores, and restores exactly that
    assert tune.undo()
    assert state.model is base and state.model_name() == "tiny.safetensors"
    np.testing.assert_array_equal(mask.data, before)
    text = tune.status.text()
    assert text.startswith("undone: ") and repr(mask.name) in text
    assert state.finetuned_models() == []
    assert seg.model_combo.count() == 2  # the undone model is no longer offered
    assert tune.edited == [(1, 2)]


def test_undo_after_a_new_segmentation_touches_only_the_layer_it_wrote(
    make_napari_viewer, qtbot, segmenter, errors
):
    viewer = make_napari_viewer()
    image, _, seg, mask = _phantom_segmented(viewer, segmenter)
    tune = _finetuner(viewer)
    mask.paint((0, 1, 64, 64), 2)
    before = np.array(mask.data, copy=True)
    tune.set_budget(steps=2)
    tune.finetune()
    _wait(tune, qtbot)
    # segmenting again (with the fine-tuned model): the edited layer is kept, a new one is made
    assert seg.segment(image) is not None
    _wait(seg, qtbot)
    new = viewer.layers[f"{image.name} myocardium [2]"]
    new_data = np.array(new.data, copy=True)
    assert tune.undo()
    np.testing.assert_array_equal(mask.data, before)  # the layer fine-tuning wrote
    np.testing.assert_array_equal(new.data, new_data)  # the newer layer is left alone
    assert repr(mask.name) in tune.status.text() and repr(new.name) not in tune.status.text()
    assert not errors()


# ------------------------------------------------------------------------ 3. colours and names
def test_predicted_and_expert_labels_have_distinct_named_colours(
    make_napari_viewer, segmenter
):
    viewer = make_napari_viewer()
    image, expert = viewer.open_sample(PLUGIN, "sunnybrook")
    segmenter(viewer, image, frame=0)
    predicted = viewer.layers[f"{image.name} myocardium"]
    for value in (1, 2, 3):
        a, b = predicted.colormap.map(np.array([value])), expert.colormap.map(np.array([value]))
        assert not np.allclose(a, b), value
        assert a[0, 3] == b[0, 3] == 1  # opaque
    assert np.allclose(predicted.colormap.map(np.array([0]))[0, 3], 0)  # background clear
    # the structure's name on hover (the features table)
    t, z, y, x = np.argwhere(expert.data == 2)[0]
    viewer.dims.set_current_step(0, t)  # the status reads the slice shown
    viewer.dims.set_current_step(1, z)
    status = expert.get_status((t, z, y, x))
    assert "myocardium (expert)" in status["value"]
    where = np.argwhere(predicted.data[t, z] == 2)
    if len(where):
        assert "myocardium (predicted)" in predicted.get_status((t, z, *where[0]))["value"]
    assert list(predicted.features["structure"])[1:] == [
        "RV cavity (predicted)",
        "myocardium (predicted)",
        "LV cavity (predicted)",
    ]
    # units and axis names from the file, on the plugin's layers too
    assert tuple(predicted.axis_labels) == ("t", "z", "y", "x")
    assert [str(u) for u in predicted.units] == [str(u) for u in image.units]
    assert str(image.units[1]) == "millimeter" and str(image.units[0]) in {"millisecond", "second"}


# ----------------------------------------------------------- 4. the docks fit a laptop screen
def test_all_docks_fit_a_1600_by_1000_window_and_status_is_never_hidden(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1600, 1000)
    widgets = {}
    for name in DOCKS:
        _, widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        _settle(50)
    _settle(300)
    assert window.height() <= 1000 and window.minimumSizeHint().height() <= 1000
    ours = [d for d in window.findChildren(QDockWidget) if "napari-sdnet" in d.windowTitle()]
    assert len(ours) == 4
    # one group of tabs: the dock shown has the height of the window, the others are tabs
    assert all(len(window.tabifiedDockWidgets(d)) == 3 for d in ours)
    shown = [d for d in ours if not d.visibleRegion().isEmpty()]
    assert len(shown) == 1 and shown[0].height() >= 700
    # the fine-tuning widget: its status line is not under the loss plot
    tune = widgets["Fine-tuning"]
    status, plot = tune.status.geometry(), tune.loss_plot.geometry()
    assert not status.intersects(plot) and not tune.loss_label.geometry().intersects(plot)
    assert tune.status.height() >= tune.status.sizeHint().height() - 1
    # the legend sits below the panels
    tune.loss_plot.add(1, {"dice_loss": 0.5, "recon_l1": 0.2, "unl_recon_l1": 0.3})
    tune.loss_plot.draw_now()
    legend = tune.loss_figure.legends[0]
    tune.loss_plot.draw()
    box = legend.get_window_extent()
    for ax in tune.loss_figure.axes:
        assert box.y1 <= ax.get_window_extent().y0 + 1


# ---------------------------------------------------------------- 5. every kind of edit listed
def test_every_kind_of_edit_is_listed_shown_and_navigable(
    make_napari_viewer, qtbot, segmenter
):
    viewer = make_napari_viewer()
    image, _, seg, mask = _phantom_segmented(viewer, segmenter)
    tune = _finetuner(viewer)
    base = np.array(mask.data, copy=True)
    # brush
    mask.brush_size = 7
    mask.paint((0, 1, 20, 20), 2)
    # fill (the background region of a slice)
    y, x = np.argwhere(base[1, 2] == 0)[0]
    mask.fill((1, 2, y, x), 3)
    # eraser on myocardium
    t, z, y, x = np.argwhere(base == 2)[0]
    mask.paint((t, z, y, x), 0)
    erased = (int(t), int(z))
    # direct assignment of the data
    data = np.array(mask.data, copy=True)
    data[3, 4, :4, :4] = 2
    mask.data = data
    _settle(400)
    expected = sorted({(0, 1), (1, 2), erased, (3, 4)})
    assert tune.edited == expected
    assert [tune.slice_list.item(i).text() for i in range(tune.slice_list.count())] == [
        f"t={a}, z={b}" for a, b in expected
    ]
    # napari's undo of the assignment is no edit: off the list
    mask.data = base.copy()
    _settle(400)
    assert tune.edited == []
    mask.paint((5, 5, 30, 30), 2)
    mask.undo()
    _settle(400)
    assert (5, 5) not in tune.edited
    # a listed slice navigates, and the viewer says it is a corrected one
    mask.paint((4, 3, 40, 40), 2)
    _settle(400)
    tune.corrections.show_slice(tune.edited.index((4, 3)))
    assert tune.corrections.current_slice() == (4, 3)
    overlay = text_overlay(viewer)
    assert overlay.visible and "corrected slice t=4, z=3" in overlay.text
    viewer.dims.set_current_step(0, 0)
    assert not overlay.visible


# ------------------------------------------------------------------ 6. the latent preview
def test_latent_preview_hides_nothing_and_follows_the_viewer(
    make_napari_viewer, segmenter, errors
):
    viewer = make_napari_viewer()
    image, _ = viewer.open_sample(PLUGIN, "phantom")
    mixer = LatentWidget(viewer)
    viewer.window.add_dock_widget(mixer, name="mixer (test)")
    viewer.dims.set_current_step(1, 2)
    segmenter(viewer, image)
    assert not errors()
    # no layer on top of the study: the preview is drawn in the dock
    assert PREVIEW_NAME not in [layer.name for layer in viewer.layers]
    assert viewer.layers[-1].name == f"{image.name} myocardium"
    assert mixer.preview is not None and mixer.preview_canvas._artist is not None
    np.testing.assert_array_equal(mixer.preview_canvas._artist.get_array(), mixer.preview)
    # it follows the viewer's t/z sliders
    viewer.dims.set_current_step(0, 5)
    viewer.dims.set_current_step(1, 4)
    assert mixer.mask_chooser.value() == (5, 4) == mixer.z_chooser.value()
    assert mixer.preview_name == "g(M t=5, z=4, Z t=5, z=4)"
    # interpolation starts toward another slice, so the t slider changes the preview
    toward = mixer.toward_chooser.value()
    assert toward != mixer.z_chooser.value()
    mixer.t_slider.setValue(100)
    assert mixer.interp.isChecked()
    np.testing.assert_allclose(mixer.z_values, mixer._slice(toward).z, atol=1e-6)
    # on request, the preview is also a layer
    mixer.show_layer.setChecked(True)
    assert mixer.preview_layer is not None and mixer.preview_layer.name == PREVIEW_NAME


# ------------------------------------------- 7. progress, activity, defaults, tooltips, help
def test_progress_activity_default_paths_tooltips_and_help(
    make_napari_viewer, qtbot, segmenter, tiny_model_file, monkeypatch
):
    from napari_sdnet._napari import _jobs

    viewer = make_napari_viewer()
    image, _ = viewer.open_sample(PLUGIN, "sunnybrook")
    seg = segmenter(viewer)
    assert seg.progress.text() == "no segmentation yet"
    seen = []
    real = _jobs.JobRunner.report

    def spy(self, done, total, text=""):
        seen.append((self._progress is not None, viewer.status))
        return real(self, done, total, text)

    monkeypatch.setattr(_jobs.JobRunner, "report", spy)
    seg.frames_combo.setCurrentText("current frame")
    assert seg.segment(image) is not None
    _wait(seg, qtbot)
    assert seen and all(bar for bar, _ in seen)  # napari's activity progress bar
    assert "napari-sdnet segmentation" in seen[-1][1]
    assert seg.progress.text().endswith("slices")
    # default save locations: the sample lives in the package, so the home folder
    asked = []
    seg.ask_save_path = lambda parent, suggested: asked.append(suggested)
    seg.export_mask()
    assert Path(asked[0]).parent == Path.home()
    # every control of every dock says what it does
    for name in DOCKS:
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        kinds = (
            QAbstractButton, QComboBox, QAbstractSpinBox, QAbstractSlider, QLineEdit,
            QListWidget, QProgressBar,
        )
        missing = [
            f"{type(w).__name__} {getattr(w, 'text', lambda: '')()!r}"
            for w in widget.findChildren(kinds)
            if not w.toolTip() and w.parent() is not None and not _inner(w)
        ]
        assert not missing, (name, missing)
    # a help page lists the workflow and the colours
    _, help_widget = viewer.window.add_plugin_dock_widget(PLUGIN, "napari-sdnet help")
    text = help_widget.browser.toPlainText()
    assert "Fine-tune" in text and "myocardium" in text and "home folder" in text


def _inner(widget) -> bool:
    """Parts of composite Qt controls (a combo's line edit, a spin box's editor)."""
    parent = widget.parent()
    kinds = QComboBox | QAbstractSpinBox | QAbstractItemView  # e.g. a table's corner button
    return isinstance(parent, kinds) or type(widget).__name__ == "QScrollBar"


@pytest.mark.parametrize("origin", ["predicted", "expert"])
def test_structure_style_names_every_structure(origin):
    from napari_sdnet._napari._layers import STRUCTURES, structure_style

    style = structure_style(origin)
    assert set(style["colormap"]) == {None, 0, *STRUCTURES}
    assert style["features"]["index"] == [0, 1, 2, 3]
    assert all(origin in s for s in style["features"]["structure"][1:])
