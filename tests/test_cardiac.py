"""Cardiac function (napari_sdnet.cardiac, api.measure*, ``napari-sdnet measure``).

Volumes are checked against plain voxel counting (on the phantom, hand-made arrays and the
real ACDC expert labels); the rules (ED/ES, absent structures, warnings) on small arrays.
"""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

from napari_sdnet import api, cardiac
from napari_sdnet.cli import main
from napari_sdnet.errors import InputError
from napari_sdnet.io.nifti import Geometry, read_nifti, write_nifti
from napari_sdnet.phantom import make_cine_phantom, write_phantom_nifti

ACDC = {"rv": 1, "myocardium": 2, "lv": 3}
JSON_KEYS = {
    "lv_edv_ml",
    "lv_esv_ml",
    "lv_sv_ml",
    "lv_ef_percent",
    "lv_mass_g",
    "rv_edv_ml",
    "rv_esv_ml",
    "rv_ef_percent",
    "ed_frame",
    "es_frame",
}


def _counted_ml(labels: np.ndarray, value: int, spacing) -> float:
    """Plain voxel counting: the reference every measurement must agree with."""
    return np.count_nonzero(labels == value) * float(np.prod(spacing[-3:])) / 1000.0


@pytest.fixture(scope="module")
def phantom():
    return make_cine_phantom(n_frames=8, n_slices=4, shape=(64, 64), seed=3)


# ---------------------------------------------------------------------------- the module
def test_cardiac_module_loads_no_qt_napari_or_torch(modules_loaded_by):
    loaded = modules_loaded_by("import napari_sdnet.cardiac")
    assert not {m.split(".")[0] for m in loaded} & {"torch", "napari", "qtpy", "PyQt6"}


def test_hand_made_cine_gives_the_exact_numbers():
    # 2 frames, 3 slices of 4x5 voxels at 10 x 2 x 1.5 mm = 30 mm^3 = 0.03 ml per voxel
    lab = np.zeros((2, 3, 4, 5), np.uint8)
    lab[0, :, :2, :] = 3  # LV at frame 0: 3 slices x 10 voxels = 30 voxels
    lab[1, 1, :1, :] = 3  # LV at frame 1: 5 voxels
    lab[:, :, 3, :] = 2  # myocardium: 15 voxels per frame
    lab[0, :2, 2, :2] = 1  # RV at frame 0: 4 voxels; frame 1: 2
    lab[1, 0, 2, :2] = 1
    r = cardiac.measure_labels(lab, (25.0, 10.0, 2.0, 1.5), time_unit="msec")
    assert r.ed_frame == 0 and r.es_frame == 1 and r.ed_rule == "largest LV cavity volume"
    ind = r.indices()
    assert ind["lv_edv_ml"] == pytest.approx(0.9) and ind["lv_esv_ml"] == pytest.approx(0.15)
    assert ind["lv_sv_ml"] == pytest.approx(0.75)
    assert ind["lv_ef_percent"] == pytest.approx(100 * 0.75 / 0.9)
    assert ind["rv_edv_ml"] == pytest.approx(0.12) and ind["rv_ef_percent"] == pytest.approx(50)
    assert ind["lv_mass_g"] == pytest.approx(15 * 0.03 * 1.05)
    rows = r.per_frame_rows()
    assert [row["time_ms"] for row in rows] == [0.0, 25.0]
    assert rows[0]["ed"] and rows[1]["es"]
    # per-slice rows add up to the per-frame volumes; the single-slice LV at ES is flagged
    sl = r.per_slice_rows()
    assert len(sl) == 6 and sum(x["lv_ml"] for x in sl if x["frame"] == 1) == pytest.approx(0.15)
    assert any("LV cavity is labelled on one slice only (1) at ES" in w for w in r.warnings)
    assert any("outside 0-90" in w for w in r.warnings) is False


def test_phantom_cine_agrees_with_voxel_counting(phantom):
    r = cardiac.measure_labels(phantom.labels, phantom.spacing, time_unit="msec")
    for s, v in ACDC.items():
        counted = [_counted_ml(f, v, phantom.spacing) for f in phantom.labels]
        np.testing.assert_allclose(r.volumes[s], counted, rtol=1e-12)
    # the phantom's own ED/ES are the frames of largest/smallest LV volume
    assert (r.ed_frame, r.es_frame) == (phantom.ed_frame, phantom.es_frame)
    lv = [_counted_ml(f, 3, phantom.spacing) for f in phantom.labels]
    assert r.ef("lv") == pytest.approx(100 * (max(lv) - min(lv)) / max(lv))
    assert 30 < r.ef("lv") < 80 and not r.warnings
    assert r.lv_mass_g == pytest.approx(1.05 * _counted_ml(phantom.labels[0], 2, phantom.spacing))


def test_absent_structures_are_absent_not_zero(phantom, tmp_path):
    lab = np.where(phantom.labels == 1, 0, phantom.labels)  # no RV contours (Sunnybrook)
    r = cardiac.measure_labels(lab, phantom.spacing)
    assert r.status["rv"] == "absent: no voxel labelled 1" and not r.present("rv")
    assert all(v is None for v in r.volumes["rv"])
    ind = r.indices()
    assert ind["rv_edv_ml"] is None and ind["rv_ef_percent"] is None
    assert ind["lv_edv_ml"] > 0
    path = cardiac.write_json(r, tmp_path / "f.json")
    data = json.loads(path.read_text())
    assert data["rv_edv_ml"] is None and data["structures"]["rv"].startswith("absent")
    rows = list(csv.DictReader(cardiac.write_csv(r, tmp_path / "f.csv").open()))
    assert len(rows) == 8 and all(row["rv_ml"] == "" for row in rows)
    assert "RV volumes, EF" in dict(r.index_rows())


def test_ed_es_override_and_errors(phantom):
    r = cardiac.measure_labels(phantom.labels, phantom.spacing, ed=1, es=3)
    assert (r.ed_frame, r.es_frame, r.ed_rule) == (1, 3, "set by the user")
    lv = r.volumes["lv"]
    assert r.ef("lv") == pytest.approx(100 * (lv[1] - lv[3]) / lv[1])
    with pytest.raises(InputError, match="outside the cine"):
        cardiac.measure_labels(phantom.labels, phantom.spacing, es=8)
    with pytest.raises(InputError, match="spacing"):
        cardiac.measure_labels(phantom.labels, (1.0, 1.0))
    with pytest.raises(InputError, match="non-integer"):
        cardiac.measure_labels(phantom.labels + 0.5, phantom.spacing)
    with pytest.raises(InputError, match="3D"):
        cardiac.measure_labels(phantom.labels[0, 0], (1.0, 1.0))
    with pytest.raises(InputError, match="convention"):
        cardiac.measure_labels(phantom.labels, phantom.spacing, convention="ukbb")


def test_partial_labels_implausible_ef_gaps_and_conventions(phantom):
    lab = phantom.labels.copy()
    lab[2:6] = 0  # frames 2-5 unlabelled (Sunnybrook-style): not "zero volume"
    r = cardiac.measure_labels(lab, phantom.spacing)
    assert r.volumes["lv"][3] is None and r.ed_frame in (0, 1, 6, 7)
    assert any("unlabelled on 4 of 8 frames (2-5)" in n for n in r.notes)
    # a slice missing inside the LV at ED, and ES larger than ED -> warnings
    lab = phantom.labels.copy()
    lab[0, 1] = 0
    r = cardiac.measure_labels(lab, phantom.spacing, ed=4, es=0)
    assert r.ef("lv") < 0
    assert any("LV EF" in w and "outside 0-90" in w for w in r.warnings)
    assert any("unlabelled slice(s) 1 between" in w for w in r.warnings)
    # M&Ms values: 1 = LV, 3 = RV -> the same numbers with LV and RV swapped
    mnms = np.choose(phantom.labels, [0, 3, 2, 1]).astype(np.uint8)
    a = cardiac.measure_labels(phantom.labels, phantom.spacing)
    b = cardiac.measure_labels(mnms, phantom.spacing, convention="mnms")
    assert a.indices() == b.indices()
    # a 0/1 myocardium mask read as ACDC would be an RV: say so
    binary = (phantom.labels == 2).astype(np.uint8)
    r = cardiac.measure_labels(binary, phantom.spacing)
    assert any("'binary' convention" in w for w in r.warnings)
    r = cardiac.measure_labels(binary, phantom.spacing, convention="binary")
    assert r.lv_mass_g == pytest.approx(a.lv_mass_g) and not r.present("lv")


def _two_slice_cine(n_frames: int = 4) -> np.ndarray:
    """``(t, 2, 6, 6)`` ACDC labels: myocardium and RV on both slices of every frame."""
    lab = np.zeros((n_frames, 2, 6, 6), np.uint8)
    lab[:, :, 0, :] = 2
    lab[:, :, 5, :3] = 1
    return lab


def test_one_frame_with_an_lv_cavity_leaves_es_undetermined_not_ef_zero():
    lab = _two_slice_cine()
    lab[2, :, 1:3, 1:4] = 3  # the LV cavity on frame 2 only
    r = cardiac.measure_labels(lab, (1.0, 1.0, 1.0))
    assert r.ed_frame == 2 and r.es_frame is None
    assert r.es_rule == "only one frame with an LV cavity; set ES by hand"
    ind = r.indices()
    assert ind["lv_edv_ml"] == pytest.approx(12 / 1000)
    for s in ("lv", "rv"):  # absent, not 0
        assert ind[f"{s}_esv_ml"] is None and ind[f"{s}_sv_ml"] is None
        assert ind[f"{s}_ef_percent"] is None
    assert not any("same frame" in w for w in r.warnings)
    assert "undetermined (only one frame with an LV cavity" in dict(r.index_rows())["ES"]
    # the same volume on every frame: no ES either
    lab = _two_slice_cine()
    lab[:, :, 1:3, 1:4] = 3
    r = cardiac.measure_labels(lab, (1.0, 1.0, 1.0))
    assert r.ed_frame == 0 and r.es_frame is None and r.ef("lv") is None and r.ef("rv") is None
    assert "equal" in r.es_rule
    # ED = ES chosen by hand is still measured, with a warning
    r = cardiac.measure_labels(lab, (1.0, 1.0, 1.0), ed=1, es=1)
    assert r.ef("lv") == 0.0 and r.sv("lv") == 0.0
    assert any("same frame (1), as set by hand" in w for w in r.warnings)


def test_ed_and_es_labelled_on_different_slices_are_flagged():
    lab = np.zeros((3, 3, 6, 6), np.uint8)
    lab[:, :, 0, :] = 2
    lab[:, :, 5, :3] = 1  # RV on the same 3 slices of every frame
    lab[0, :, 1:4, 1:4] = 3  # 3 slices x 9 voxels
    lab[1, :2, 1:4, 1:3] = 3  # 2 slices x 6 voxels: smallest, because a slice is unlabelled
    lab[2, :, 1:4, 1:3] = 3  # 3 slices x 6 voxels
    r = cardiac.measure_labels(lab, (1.0, 1.0, 1.0))
    assert (r.ed_frame, r.es_frame) == (0, 1)
    expected = "LV cavity labelled on 3 slices at ED but 2 at ES: normal as the base and apex move"
    assert any(w.startswith(expected) and w.endswith("biases the EF") for w in r.warnings)
    assert not any(w.startswith("RV cavity labelled") for w in r.warnings)
    # as many slices, but not the same ones
    shifted = lab[[0, 1]].copy()
    shifted[0, 2][shifted[0, 2] == 3] = 0  # ED: slices 0-1
    shifted[1] = np.roll(shifted[1], 1, axis=0)  # ES: slices 1-2
    r = cardiac.measure_labels(shifted, (1.0, 1.0, 1.0))
    assert (r.ed_frame, r.es_frame) == (0, 1)
    expected = "LV cavity labelled on slices 0-1 at ED but 1-2 at ES: normal as the base"
    assert any(w.startswith(expected) and w.endswith("biases the EF") for w in r.warnings)
    # labelled on the same slices (also when set by hand): no such warning
    assert not any(
        "biases the EF" in w for w in cardiac.measure_labels(lab[[0, 2]], (1, 1, 1)).warnings
    )
    r = cardiac.measure_labels(lab, (1.0, 1.0, 1.0), ed=0, es=2)
    assert not any("biases the EF" in w for w in r.warnings)
    r = cardiac.measure_labels(lab, (1.0, 1.0, 1.0), ed=2, es=1)
    assert any("LV cavity labelled on 3 slices at ED but 2" in w for w in r.warnings)


def test_chosen_frames_without_a_cavity_and_ed_without_lv_follow_the_myocardium():
    lab = _two_slice_cine(4)
    lab[:2, :, 1:3, 1:4] = 3  # the LV cavity on frames 0-1 only
    lab[3] = 0
    lab[3, :, 5, :3] = 1  # frame 3: RV only
    r = cardiac.measure_labels(lab, (1.0, 1.0, 1.0), es=3)
    assert r.esv("lv") is None and r.ef("lv") is None
    assert any(
        "LV cavity is unlabelled on the ES set by the user (frame 3): no LV ESV, SV or EF" in n
        for n in r.notes
    )
    r = cardiac.measure_labels(lab, (1.0, 1.0, 1.0), ed=3, es=0)
    assert any("LV cavity is unlabelled on the ED set by the user (frame 3)" in n for n in r.notes)
    assert any("myocardium is unlabelled on the ED set by the user" in n for n in r.notes)
    # no LV cavity anywhere, myocardium on frame 2 only: ED is frame 2, not the empty frame 0
    myo = np.zeros((4, 2, 6, 6), np.uint8)
    myo[2, :, 0, :] = 2
    r = cardiac.measure_labels(myo, (1.0, 1.0, 1.0))
    assert r.ed_frame == 2 and r.es_frame is None
    assert r.ed_rule == "first frame with myocardium; no LV cavity"
    assert r.lv_mass_g == pytest.approx(12 / 1000 * 1.05)
    assert any("ED is taken as frame 2, the first frame with myocardium" in n for n in r.notes)
    # myocardium on frame 0: frame 0, as before
    myo[0, :, 0, :] = 2
    r = cardiac.measure_labels(myo, (1.0, 1.0, 1.0))
    assert r.ed_frame == 0 and r.ed_rule == "first frame; no LV cavity"


def test_myocardium_only_model_output_reports_mass_and_says_why_cavities_are_absent(
    phantom, tiny_model_file
):
    model = api.load_model(tiny_model_file, "cpu")
    seg = api.segment(model, phantom.image[:, :2], phantom.spacing)
    # the real Segmentation, with the phantom's myocardium as its binary mask (model output)
    seg = dataclasses.replace(seg, mask=(phantom.labels[:, :2] == 2).astype(np.uint8))
    assert api.segmented_structures(seg) == ("myocardium",)
    r = api.measure_segmentation(seg, phantom.spacing)
    assert r.status["lv"] == r.status["rv"] == "absent: the model does not segment it"
    assert "the model segments the myocardium only" in r.notes[0]
    assert r.indices()["lv_ef_percent"] is None and r.indices()["lv_edv_ml"] is None
    assert r.ed_frame == 0 and r.es_frame is None  # no LV curve: ED = first frame, documented
    myo = _counted_ml(phantom.labels[0, :2], 2, phantom.spacing)
    assert r.lv_mass_g == pytest.approx(1.05 * myo)

    # a model of three structures (its labels() hold ACDC 1/2/3) goes through the same call
    three = dataclasses.replace(
        seg, structures=cardiac.STRUCTURES, label_map=phantom.labels[:, :2].astype(np.uint8)
    )
    r3 = api.measure_segmentation(three, phantom.spacing)
    assert r3.present("lv") and r3.present("rv") and not r3.notes
    assert r3.indices() == cardiac.measure_labels(phantom.labels[:, :2], phantom.spacing).indices()


def test_writes_are_atomic_and_never_overwrite(phantom, tmp_path):
    r = cardiac.measure_labels(phantom.labels, phantom.spacing)
    target = tmp_path / "out.json"
    cardiac.write_json(r, target)
    with pytest.raises(InputError, match="refusing to overwrite"):
        cardiac.write_csv(r, target)
    cardiac.write_csv(r, target, overwrite=True)
    assert target.read_text().startswith("phase,frame,time_ms,lv_ml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary left
    with pytest.raises(InputError, match="does not exist"):
        cardiac.write_json(r, tmp_path / "no" / "x.json")


# ------------------------------------------------------------------------------------- CLI
def test_cli_measure_labels_of_a_cine(tmp_path, capsys):
    image, labels = write_phantom_nifti(tmp_path, n_frames=6, n_slices=3, shape=(48, 48))
    out_json, out_csv = tmp_path / "f.json", tmp_path / "f.csv"
    rc = main(["measure", "--labels", str(labels), "--json", str(out_json), "--csv", str(out_csv)])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "LV EF (%)" in printed and "ED" in printed and f"wrote {out_json}" in printed
    data = json.loads(out_json.read_text())
    assert JSON_KEYS <= set(data) and data["ed_frame"] == 0 and data["es_frame"] == 3
    vol = read_nifti(labels)
    assert data["lv_edv_ml"] == pytest.approx(_counted_ml(vol.data[0], 3, vol.geometry.spacing))
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 6
    for t, row in enumerate(rows):
        counted = _counted_ml(vol.data[t], 2, vol.geometry.spacing)
        assert float(row["myocardium_ml"]) == pytest.approx(counted)
    # never overwrites without --overwrite; bad inputs are one-line errors
    assert main(["measure", "--labels", str(labels), "--json", str(out_json)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (
        main(
            [
                "measure",
                "--labels",
                str(labels),
                "--json",
                str(out_json),
                "--overwrite",
                "--ed",
                "1",
                "--es",
                "2",
            ]
        )
        == 0
    )
    assert json.loads(out_json.read_text())["ed_frame"] == 1
    capsys.readouterr()
    assert main(["measure", "--labels", str(image)]) == 2
    assert "does not look like a label map" in capsys.readouterr().err
    assert main(["measure", str(labels)]) == 2
    assert "pass --labels" in capsys.readouterr().err


def test_cli_measure_with_a_model_says_cavities_are_absent(tmp_path, tiny_model_file, capsys):
    image, _ = write_phantom_nifti(tmp_path, n_frames=3, n_slices=2, shape=(48, 48))
    out = tmp_path / "m.json"
    rc = main(
        ["measure", str(image), "--model", tiny_model_file, "--device", "cpu", "--json", str(out)]
    )
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "LV cavity and RV cavity are absent: the model segments the myocardium only" in printed
    data = json.loads(out.read_text())
    assert data["lv_edv_ml"] is None and data["rv_ef_percent"] is None
    assert data["structures"]["lv"] == "absent: the model does not segment it"
    assert data["labels_from"].startswith("model ")
    # an ED and an ES volume, in that order; --ed/--es make no sense there
    vol = read_nifti(image)
    geo = Geometry.from_scale(vol.geometry.spacing[1:], shape=vol.data.shape[1:])
    ed, es = tmp_path / "ed.nii.gz", tmp_path / "es.nii.gz"
    write_nifti(ed, vol.data[0], geo)
    write_nifti(es, vol.data[1], geo)
    out2 = tmp_path / "two.json"
    rc = main(
        [
            "measure",
            str(ed),
            str(es),
            "--model",
            tiny_model_file,
            "--device",
            "cpu",
            "--json",
            str(out2),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    data = json.loads(out2.read_text())
    assert data["mode"] == "ed_es" and data["ed_frame"] is None and data["es_frame"] is None
    assert data["lv_ef_percent"] is None
    capsys.readouterr()
    assert main(["measure", str(ed), str(es), "--ed", "0", "--model", tiny_model_file]) == 2
    assert "--ed/--es" in capsys.readouterr().err
    assert main(["measure", str(ed), "--model", tiny_model_file]) == 2
    assert "give a 4D cine, or an ED and an ES volume" in capsys.readouterr().err


# -------------------------------------------------------------------------------- real data
def _acdc_pairs(root):
    for patient in sorted(root.iterdir()):
        gts = sorted(patient.glob("*_gt.nii.gz"))
        ed = next(g for g in gts if "_frame01_" in g.name)
        yield patient.name, ed, next(g for g in gts if g != ed)


@pytest.mark.shared_data
def test_acdc_expert_labels_agree_with_voxel_counting_and_give_plausible_ef(
    acdc_nifti, tmp_path, capsys
):
    efs = {}
    for name, ed, es in _acdc_pairs(acdc_nifti):
        out = tmp_path / f"{name}.json"
        assert main(["measure", "--labels", str(ed), str(es), "--json", str(out)]) == 0
        data = json.loads(out.read_text())
        a, b = read_nifti(ed), read_nifti(es)
        sa, sb = a.geometry.spacing, b.geometry.spacing
        assert data["lv_edv_ml"] == pytest.approx(_counted_ml(a.data, 3, sa), rel=1e-9)
        assert data["lv_esv_ml"] == pytest.approx(_counted_ml(b.data, 3, sb), rel=1e-9)
        assert data["rv_edv_ml"] == pytest.approx(_counted_ml(a.data, 1, sa), rel=1e-9)
        assert data["rv_esv_ml"] == pytest.approx(_counted_ml(b.data, 1, sb), rel=1e-9)
        mass = 1.05 * _counted_ml(a.data, 2, sa)
        assert data["lv_mass_g"] == pytest.approx(mass, rel=1e-9)
        assert data["ed_frame"] is None and data["es_frame"] is None
        efs[name] = data["lv_ef_percent"]
        assert 5 < efs[name] < 85 and 5 < data["rv_ef_percent"] < 85, (name, data)
    assert len(efs) == 10
    # dilated cardiomyopathy (002-005) pump poorly, hypertrophic hearts (021-025) well
    assert max(efs[f"patient00{i}"] for i in (2, 3, 4, 5)) < 35
    assert min(efs[f"patient02{i}"] for i in (1, 2, 3, 4, 5)) > 55


@pytest.mark.shared_data
def test_bundled_model_on_acdc_measures_what_it_segments(acdc_nifti, capsys):
    if not api.bundled_model_path().is_file():
        pytest.skip("no bundled model installed")
    name, ed_gt, es_gt = next(_acdc_pairs(acdc_nifti))  # patient001, a test patient
    ed, es = (p.with_name(p.name.replace("_gt", "")) for p in (ed_gt, es_gt))
    model = api.load_model("bundled", "cpu")
    a, b = read_nifti(ed), read_nifti(es)
    r = api.measure(model, a.data, a.geometry.spacing, b.data, b.geometry.spacing)
    expert = cardiac.measure_ed_es(
        read_nifti(ed_gt).data, read_nifti(es_gt).data, a.geometry.spacing, b.geometry.spacing
    )
    assert r.present("myocardium")
    if "lv" in model.config.structures:  # the three-structure model (issue #17's targets)
        assert r.present("lv") and r.present("rv")
        assert abs(r.ef("lv") - expert.ef("lv")) <= 5.0
        assert r.edv("lv") == pytest.approx(expert.edv("lv"), rel=0.10)
        assert r.lv_mass_g == pytest.approx(expert.lv_mass_g, rel=0.10)
    else:  # a myocardium-only model: the cavities are absent, the mass is measured
        assert not r.present("lv") and not r.present("rv")
        # myocardium Dice ~0.86: the mass is within 25 % of the expert's
        assert r.lv_mass_g == pytest.approx(expert.lv_mass_g, rel=0.25)
