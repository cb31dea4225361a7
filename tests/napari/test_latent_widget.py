"""The "Latent mixer" dock widget in a real napari viewer (under Xvfb).

A ``tiny`` untrained model (the images mean nothing; the mechanics are what is tested: which
slices are mixed, that the preview lines up with the study and follows every control, the layer
rules, the Figure 3 export and the heat map). The numbers of the mixing itself are tested with
the bundled model in tests/test_latent.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg

from napari_sdnet import api, latent
from napari_sdnet._napari._latent_widget import PREVIEW_NAME, LatentWidget
from napari_sdnet._napari._segment_widget import FRAMES_CURRENT, SegmentWidget
from napari_sdnet._napari._state import get_state

PLUGIN = "napari-sdnet"
TIMEOUT_MS = 60_000


def _segment(viewer, qtbot, model_file, layer, frame=None):
    seg_widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg_widget, name="Segmentation (test)")
    seg_widget.set_model(model_file)
    seg_widget.set_device("cpu")
    if frame is not None:
        seg_widget.frames_combo.setCurrentText(FRAMES_CURRENT)
        viewer.dims.set_current_step(0, frame)
    assert seg_widget.segment(layer) is not None
    qtbot.waitUntil(lambda: seg_widget.worker is None, timeout=TIMEOUT_MS)
    return seg_widget


def _errors(messages) -> list[str]:
    return [m for s, m in messages if s == "error"]


def test_mixer_on_a_cine_study_segmented_frame_by_frame(
    make_napari_viewer, qtbot, tiny_model_file, tmp_path, messages
):
    viewer = make_napari_viewer()
    image, _contours = viewer.open_sample(PLUGIN, "sunnybrook")
    # a user's own layer called "latent preview" is never touched
    user = viewer.add_image(np.zeros((8, 8), np.float32), name=PREVIEW_NAME)

    # the npe2 contribution docks it; nothing is segmented yet
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Latent mixer")
    assert isinstance(widget, LatentWidget)
    widget.show_layer.setChecked(True)  # the preview also as a layer (off by default)
    assert widget.chosen_image() is None and not widget.add_button.isEnabled()
    assert "segment one" in widget.status.text()

    viewer.dims.set_current_step(1, 6)
    seg_widget = _segment(viewer, qtbot, tiny_model_file, image, frame=0)
    assert widget.chosen_image() is image  # record_changed reached the mixer
    assert widget.mask_chooser.value() == (0, 6) == widget.z_chooser.value()
    seg_widget.frames_combo.setCurrentText(FRAMES_CURRENT)
    viewer.dims.set_current_step(0, 7)
    assert seg_widget.segment(image) is not None
    qtbot.waitUntil(lambda: seg_widget.worker is None, timeout=TIMEOUT_MS)
    assert not _errors(messages), messages
    record = get_state(viewer).record_for(image)
    assert sorted(record.frames) == [0, 7] and record.segmentation is None
    frames = [
        widget.mask_chooser.frame.itemText(i) for i in range(widget.mask_chooser.frame.count())
    ]
    assert frames == ["0", "7"]

    # the preview: one 2D layer on the study's in-plane grid, in the image's units
    preview = widget.preview_layer
    assert preview is not None and preview is not user and preview.name == f"{PREVIEW_NAME} [2]"
    np.testing.assert_array_equal(user.data, 0)
    assert preview.data.shape == (144, 144)
    np.testing.assert_allclose(preview.scale, image.scale[-2:])
    np.testing.assert_allclose(preview.translate, image.translate[-2:])
    assert get_state(viewer).is_made_by_plugin(preview)
    recon = viewer.layers["SC-HF-I-1 cine reconstruction"]

    def shown(t, z):  # the plugin's reconstruction layer: g(M, Z) of (t, z) in image units
        return recon.data[t, z]

    # M and Z of the same slice: the segmentation's own reconstruction
    widget.set_choice(mask_from=(7, 4), z_from=(7, 4))
    np.testing.assert_allclose(preview.data, shown(7, 4), rtol=1e-4, atol=1e-2)
    assert widget.preview_name == "g(M t=7, z=4, Z t=7, z=4)"
    own = preview.data.copy()

    # every control changes the preview, and what it shows is the headless computation
    model = get_state(viewer).model
    seg0, seg7 = record.frames[0], record.frames[7]
    s04, s74, s78 = (
        latent.latent_slice(seg0, 4),
        latent.latent_slice(seg7, 4),
        latent.latent_slice(seg7, 8),
    )
    before = len(widget.timings_ms)
    widget.mask_chooser.slice.setValue(8)  # M from (7, 8), Z from (7, 4)
    expected = latent.mix(model, s78, s74.z, grid=seg7.grid, denormalise=True)
    np.testing.assert_allclose(preview.data, expected, atol=1e-4)
    assert not np.allclose(preview.data, own)
    widget.null_mask.setChecked(True)
    expected = latent.mix(model, None, s74.z, grid=seg7.grid, denormalise=True)
    np.testing.assert_allclose(preview.data, expected, atol=1e-4)
    assert widget.preview_name == "g(0, Z t=7, z=4)"
    widget.null_mask.setChecked(False)
    widget.zero_z.setChecked(True)
    np.testing.assert_array_equal(widget.z_values, 0)
    widget.zero_z.setChecked(False)
    widget.set_choice(toward=(0, 4), t=0.5)
    np.testing.assert_allclose(widget.z_values, 0.5 * (s74.z + s04.z), atol=1e-6)
    assert "->t=0, z=4 0.50" in widget.preview_name
    widget.t_slider.setValue(100)
    np.testing.assert_allclose(widget.z_values, s04.z, atol=1e-6)
    widget.z_sliders[3].setValue(40)  # +0.2
    assert widget.z_values[3] == pytest.approx(min(s04.z[3] + 0.2, 1.0), abs=1e-6)
    widget.z_sliders[5].setValue(-100)  # -0.5, clipped at 0
    assert widget.z_values[5] == pytest.approx(max(s04.z[5] - 0.5, 0.0), abs=1e-6)
    assert widget.z_labels[3].text() == f"{widget.z_values[3]:.2f}"
    assert widget.preview_name.endswith("edited)")
    assert len(widget.timings_ms) >= before + 7

    # Add as layer: a new layer each time, the preview layer stays the preview
    kept = widget.add_as_layer()
    assert kept is not None and kept is not preview
    assert kept.name == f"SC-HF-I-1 cine {widget.preview_name}"
    np.testing.assert_array_equal(kept.data, preview.data)
    np.testing.assert_allclose(kept.scale, image.scale[-2:])
    assert kept.metadata["sdnet_z"] == pytest.approx(list(widget.z_values))
    again = widget.add_as_layer()
    assert again.name == f"{kept.name} [2]"
    kept_data = kept.data.copy()

    # Reset: back to the M slice's own reconstruction; kept layers are not changed
    widget.reset()
    assert widget.z_chooser.value() == (7, 8) and not widget.interp.isChecked()
    assert all(s.value() == 0 for s in widget.z_sliders)
    np.testing.assert_allclose(preview.data, shown(7, 8), rtol=1e-4, atol=1e-2)
    np.testing.assert_array_equal(kept.data, kept_data)

    # the heat map: Z of the 12 slices of frame 7, or of the 2 segmented phases of slice 8
    assert isinstance(widget.heat_canvas, FigureCanvasQTAgg)
    np.testing.assert_array_equal(widget.heat_values, seg7.z)
    assert widget.heat_row == 8
    widget.z_chooser.slice.setValue(5)  # the outline follows the Z slice
    assert widget.heat_row == 5 and widget.heat_axes.patches[0].get_y() == pytest.approx(4.5)
    qtbot.waitUntil(lambda: not widget._heat_timer.isActive(), timeout=2000)
    widget.z_chooser.slice.setValue(8)
    widget.heat_mode.setCurrentIndex(1)
    np.testing.assert_array_equal(widget.heat_values, np.stack([seg0.z[8], seg7.z[8]]))
    assert widget.heat_canvas.isVisibleTo(widget) and widget.heat_canvas.minimumHeight() >= 200

    # a deleted preview layer is made again
    viewer.layers.remove(preview)
    widget.mask_chooser.slice.setValue(2)
    assert widget.preview_layer is not preview and widget.preview_layer in viewer.layers

    # Figure 3 for the M and Z slices (dialogs replaced)
    widget.set_choice(mask_from=(0, 3), z_from=(7, 8))
    out = tmp_path / "fig3"  # .png is added
    widget.ask_figure_path = lambda parent, suggested: str(out)
    asked = []
    widget.confirm_overwrite = lambda parent, path: asked.append(path) or False
    written = widget.export_figure3()
    assert written == tmp_path / "fig3.png" and written.stat().st_size > 10_000
    import matplotlib.image as mpimg

    png = mpimg.imread(written)
    assert png.shape[1] > 2 * png.shape[0]
    assert widget.export_figure3() is None and asked == [written]  # refused: file kept
    widget.confirm_overwrite = lambda parent, path: True
    assert widget.export_figure3() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig3.png"]
    widget.ask_figure_path = lambda parent, suggested: None  # cancelled
    assert widget.export_figure3() is None
    widget.set_choice(z_from=(0, 3))
    assert widget.export_figure3(tmp_path / "same.png") is None
    assert "two different slices" in _errors(messages)[-1]
    assert not (tmp_path / "same.png").exists()


def test_mixer_on_a_volume_and_model_rules(make_napari_viewer, qtbot, tiny_model_file, messages):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, (5, 96, 80)).astype(np.float32)
    image = viewer.add_image(data, name="vol", scale=(8.0, 1.5, 1.5), translate=(0, 10, -5))
    viewer.dims.set_current_step(0, 2)
    widget = LatentWidget(viewer)
    widget.show_layer.setChecked(True)
    viewer.window.add_dock_widget(widget, name="mixer (test)")
    _segment(viewer, qtbot, tiny_model_file, image)
    assert widget.chosen_image() is image
    assert widget.mask_chooser.value() == (None, 2)
    assert not widget.mask_chooser.frame.isVisibleTo(widget)
    assert not widget.heat_mode.isEnabled()
    preview = widget.preview_layer
    assert preview.data.shape == (96, 80)
    np.testing.assert_allclose(preview.scale, (1.5, 1.5))
    np.testing.assert_allclose(preview.translate, (10, -5))
    np.testing.assert_array_equal(preview.extent.world[:, -2:], image.extent.world[:, -2:])
    seg = get_state(viewer).record_for(image).segmentation
    np.testing.assert_allclose(preview.data, seg.reconstruction_intensity[2], rtol=1e-4, atol=1e-3)
    widget.set_choice(mask_from=(None, 0), z_from=(None, 4))
    expected = api.mix_slices(
        get_state(viewer).model, seg, 0, 4, on_input_grid=True, denormalise=True
    )
    np.testing.assert_allclose(preview.data, expected, atol=1e-4)
    np.testing.assert_array_equal(widget.heat_values, seg.z)
    assert widget.mask_chooser.slice.maximum() == 4

    # a model other than the one that segmented the image: no mixing, a clear message
    state = get_state(viewer)
    other = api.load_model(tiny_model_file, device="cpu")
    other.source = "another.safetensors"
    state.model = other
    assert "segment it again" in widget.status.text()
    assert widget.add_as_layer() is None
    assert "segment it again" in _errors(messages)[-1]
    n_layers = len(viewer.layers)
    assert widget.export_figure3() is None and len(viewer.layers) == n_layers


def test_mixer_busy_resegmentation_and_a_2d_image(
    make_napari_viewer, qtbot, tiny_model_file, messages
):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    vol = viewer.add_image(rng.normal(50, 10, (4, 64, 64)).astype(np.float32), name="vol")
    widget = LatentWidget(viewer)
    widget.show_layer.setChecked(True)
    viewer.window.add_dock_widget(widget, name="mixer (test)")
    seg_widget = _segment(viewer, qtbot, tiny_model_file, vol)
    widget.set_choice(mask_from=(None, 1), z_from=(None, 3), zero_z=True)
    first = widget.preview.copy()

    # while a job runs on the viewer, the mixer waits; it catches up when the job ends
    state = get_state(viewer)
    state.busy = True
    widget.set_choice(zero_z=False)
    assert "waiting" in widget.status.text()
    np.testing.assert_array_equal(widget.preview, first)
    state.busy = False
    assert widget.preview_name == "g(M z=1, Z z=3)"

    # a new segmentation of the same image: new Z, the choices stay
    old_z = state.record_for(vol).segmentation.z.copy()
    vol.data = vol.data * 2.0 + rng.normal(0, 5, vol.data.shape).astype(np.float32)
    assert seg_widget.segment(vol) is not None
    qtbot.waitUntil(lambda: seg_widget.worker is None, timeout=TIMEOUT_MS)
    new_z = state.record_for(vol).segmentation.z
    assert not np.allclose(new_z, old_z)
    assert widget.mask_chooser.value() == (None, 1) and widget.z_chooser.value() == (None, 3)
    np.testing.assert_array_equal(widget.heat_values, new_z)

    # a 2D image: one slice, no slice choosers; Figure 3 needs two slices
    flat = viewer.add_image(rng.normal(50, 10, (64, 64)).astype(np.float32), name="flat")
    _segment(viewer, qtbot, tiny_model_file, flat)
    assert widget.chosen_image() is vol  # the user's choice stays; the new one is listed
    assert [widget.layer_combo.itemText(i) for i in range(widget.layer_combo.count())] == [
        "vol",
        "flat",
    ]
    vol.name = "volume"  # renaming shows in the list
    assert widget.layer_combo.itemText(0) == "volume"
    assert widget.select_image(flat) and widget.chosen_image() is flat
    assert widget.mask_chooser.value() == (None, None)
    assert not widget.mask_chooser.slice.isVisibleTo(widget)
    seg = state.record_for(flat).segmentation
    np.testing.assert_allclose(widget.preview, seg.reconstruction_intensity, rtol=1e-4, atol=1e-3)
    assert widget.preview_layer.data.shape == (64, 64)
    assert widget.heat_values.shape == (1, 16)
    widget.null_mask.setChecked(True)
    assert widget.preview_name == "g(0, Z slice)"
    assert widget.export_figure3("unused.png") is None
    assert "two different slices" in _errors(messages)[-1]
    # choosing the volume again works
    assert widget.select_image(vol) and widget.chosen_image() is vol
    assert widget.preview_layer.data.shape == (64, 64)


def test_mixer_with_a_three_structure_model(
    make_napari_viewer, qtbot, three_model_file, tmp_path, messages
):
    """M of three channels (RV, myocardium, LV): mixing, the null mask and Figure 3."""
    viewer = make_napari_viewer()
    data = np.random.default_rng(1).normal(100, 20, (4, 80, 80)).astype(np.float32)
    image = viewer.add_image(data, name="vol", scale=(8.0, 1.5, 1.5))
    viewer.dims.set_current_step(0, 1)
    widget = LatentWidget(viewer)
    widget.show_layer.setChecked(True)
    viewer.window.add_dock_widget(widget, name="mixer (test)")
    _segment(viewer, qtbot, three_model_file, image)
    assert not _errors(messages), messages
    state = get_state(viewer)
    seg = state.record_for(image).segmentation
    assert seg.model_mask.shape[1] == 3
    preview = widget.preview_layer
    np.testing.assert_allclose(preview.data, seg.reconstruction_intensity[1], rtol=1e-4, atol=1e-3)
    widget.set_choice(mask_from=(None, 0), z_from=(None, 3), null_mask=True)
    expected = api.mix_slices(
        state.model, seg, 0, 3, null_mask=True, on_input_grid=True, denormalise=True
    )
    np.testing.assert_allclose(preview.data, expected, atol=1e-4)
    written = widget.export_figure3(tmp_path / "fig3.png")
    assert written is not None and written.stat().st_size > 0
    assert not _errors(messages), messages
