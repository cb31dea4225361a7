"""The "Cardiac function" dock widget, its menu command and the demo that shows it.

Real napari viewers (under Xvfb). Every number the widget shows must be the Qt-free module's
(napari_sdnet.cardiac), which tests/test_cardiac.py checks against voxel counting.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_sdnet import cardiac
from napari_sdnet._napari._function_widget import FunctionWidget, measure_selected_layer
from napari_sdnet._napari._segment_widget import SegmentWidget
from napari_sdnet.io.nifti import Geometry
from napari_sdnet.phantom import make_cine_phantom

PLUGIN = "napari-sdnet"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def phantom():
    return make_cine_phantom(n_frames=6, n_slices=3, shape=(48, 48), seed=1)


def _errors(messages) -> list[str]:
    return [m for s, m in messages if s == "error"]


def _measured(widget: FunctionWidget, qtbot) -> cardiac.CardiacFunction:
    qtbot.waitUntil(lambda: widget.worker is None and not widget._timer.isActive(),
                    timeout=TIMEOUT_MS)
    assert widget.result is not None, widget.status.text()
    return widget.result


def _table(widget: FunctionWidget) -> dict[str, str]:
    t = widget.table
    return {t.item(r, 0).text(): t.item(r, 1).text() for r in range(t.rowCount())}


def test_sample_contours_indices_curve_and_export(make_napari_viewer, qtbot, tmp_path, messages):
    viewer = make_napari_viewer()
    _image, contours = viewer.open_sample(PLUGIN, "sunnybrook")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Cardiac function")
    assert isinstance(widget, FunctionWidget)
    assert widget.select_layer(contours)
    widget.measure()
    r = _measured(widget, qtbot)
    assert not _errors(messages), messages
    geo = Geometry.from_metadata(contours.metadata["sdnet_geometry"])
    expected = cardiac.measure_labels(contours.data, geo.spacing, time_unit=geo.time_unit)
    assert r.indices() == expected.indices()
    assert r.ed_frame is not None and r.present("lv") and not r.present("rv")  # no RV contours
    table = _table(widget)
    assert table == dict(expected.index_rows())
    assert table["RV volumes, EF"] == "absent: no voxel labelled 1"
    assert table["LV EF (%)"] == f"{expected.ef('lv'):.1f}"
    ax = widget.figure.axes[0]
    labels = [line.get_label() for line in ax.lines]
    assert "LV cavity" in labels and "RV cavity" not in labels
    assert {t.get_text() for t in ax.texts} >= {"ED", "ES"}

    # export: asks for the path, never replaces a file without confirmation, atomic
    target = tmp_path / "function.json"
    widget.ask_save_path = lambda parent, suggested, kind: str(target)
    assert widget.export("JSON") == target
    assert json.loads(target.read_text())["lv_ef_percent"] == pytest.approx(expected.ef("lv"))
    target.write_text("mine")
    widget.confirm_overwrite = lambda parent, path: False
    assert widget.export("JSON") is None and target.read_text() == "mine"
    widget.confirm_overwrite = lambda parent, path: True
    csv_path = widget.export("CSV", tmp_path / "function.csv")
    assert csv_path.read_text() == expected.csv_text()
    assert widget.export("JSON") == target and "lv_edv_ml" in json.loads(target.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["function.csv", "function.json"]


def test_edits_are_measured_again_and_frames_can_be_set(
    make_napari_viewer, qtbot, phantom, messages
):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(phantom.labels.copy(), scale=phantom.spacing, name="painted")
    widget = FunctionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.chosen_layer() is layer
    widget.measure()
    before = _measured(widget, qtbot)
    assert any("no NIfTI geometry" in m for s, m in messages if s == "warning")
    assert before.indices() == cardiac.measure_labels(phantom.labels, phantom.spacing).indices()
    # the user erases the LV cavity on one slice of the ED frame, as with the brush
    data = layer.data
    erased = int(np.count_nonzero(data[0, 1] == 3))
    data[0, 1][data[0, 1] == 3] = 0
    layer.data = data
    qtbot.waitUntil(lambda: widget.result is not before, timeout=TIMEOUT_MS)
    after = _measured(widget, qtbot)
    voxel_ml = float(np.prod(phantom.spacing[1:])) / 1000
    assert after.volumes["lv"][0] == pytest.approx(before.volumes["lv"][0] - erased * voxel_ml)
    lv = [v for v in after.volumes["lv"]]
    assert after.ed_frame == int(np.argmax(lv)) != 0  # frame 0 is no longer the largest
    # ED / ES chosen by hand: the erased slice at ED is a gap worth a warning
    widget.ed_spin.setValue(0)
    widget.es_spin.setValue(2)
    r = _measured(widget, qtbot)
    assert (r.ed_frame, r.es_frame, r.ed_rule) == (0, 2, "set by the user")
    assert any("unlabelled slice(s) 1 between" in w for w in r.warnings)
    assert "warning: LV cavity has unlabelled slice(s) 1" in widget.messages_label.text()


def test_ed_and_es_layers_and_the_menu_command(make_napari_viewer, qtbot, phantom, messages):
    viewer = make_napari_viewer()
    sp = phantom.spacing[1:]
    ed = viewer.add_labels(phantom.labels[0], scale=sp, name="ED gt")
    es = viewer.add_labels(phantom.labels[3], scale=sp, name="ES gt")
    from npe2 import PluginManager

    menu = [item.command for item in PluginManager.instance().iter_menu("napari/layers/measure")]
    assert "napari-sdnet.measure_layer" in menu
    viewer.layers.selection.active = ed
    measure_selected_layer(viewer)  # Layers > Measure > Cardiac function...
    widget = next(w for w in viewer.window.dock_widgets.values()
                  if isinstance(w, FunctionWidget))
    assert widget.chosen_layer() is ed
    r = _measured(widget, qtbot)
    assert r.mode == "volume" and r.ed is None  # one phase: nothing to call ED by itself
    widget.select_layer(ed, es)
    r = _measured(widget, qtbot)
    expected = cardiac.measure_ed_es(phantom.labels[0], phantom.labels[3], sp)
    assert r.mode == "ed_es" and r.indices() == expected.indices()
    assert r.ed_frame is None and r.ef("lv") > 20 and not _errors(messages)


def test_follows_a_new_segmentation_of_a_myocardium_only_model(
    make_napari_viewer, qtbot, phantom, tiny_model_file, messages
):
    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.image[:2], scale=phantom.spacing, name="cine")
    function = FunctionWidget(viewer)
    viewer.window.add_dock_widget(function)
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment)
    segment.set_model(tiny_model_file)
    segment.set_device("cpu")
    assert segment.segment(image) is not None
    qtbot.waitUntil(lambda: segment.worker is None, timeout=TIMEOUT_MS)
    mask = segment.mask_layer_for(image)
    qtbot.waitUntil(lambda: function.result is not None, timeout=TIMEOUT_MS)
    r = _measured(function, qtbot)
    assert function.chosen_layer() is mask
    assert r.status["lv"] == r.status["rv"] == "absent: the model does not segment it"
    assert _table(function)["LV volumes, EF"] == "absent: the model does not segment it"
    assert "the model segments the myocardium only" in function.messages_label.text()


def test_demo_opens_the_sample_segmented_with_its_function(tiny_model_file, tmp_path):
    """The main job (scripts/demo.sh) with the tiny model: window drawn and saved."""
    png = tmp_path / "demo.png"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_sdnet._napari.launch", "--screenshot", str(png),
         "--model", tiny_model_file, "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    from skimage.io import imread

    shot = imread(png)
    assert shot.shape[0] > 500 and shot.shape[1] > 800 and shot[..., :3].std() > 10
