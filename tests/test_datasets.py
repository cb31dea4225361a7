"""Tests of napari_sdnet.io.datasets.

The first part always runs: it builds tiny versions of the three layouts from the synthetic
phantom in a temporary folder. The second part uses the real data in ../shared/data and skips
when it is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from napari_sdnet.errors import InputError
from napari_sdnet.io.datasets import (
    SliceSet,
    acdc_split_patients,
    check_training_only,
    detect_layout,
    find_cine_files,
    iter_acdc_h5,
    iter_cine_nifti,
    load_acdc_h5,
    load_acdc_nifti,
    load_cine_nifti,
    load_dataset,
    patient_id,
    read_acdc_split,
    split_labelled,
)
from napari_sdnet.phantom import make_cine_phantom, make_phantom_volume, write_phantom_nifti
from napari_sdnet.preprocess import PreprocessConfig, preprocess_volume

SMALL = PreprocessConfig(size=64, target_spacing=2.0)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _toy_set(n_vol: int = 4, per_vol: int = 5, size: int = 8, unlabelled_vol: int = 1) -> SliceSet:
    """Volumes ``patient00K_frame0F``; the last ``unlabelled_vol`` volumes are unlabelled."""
    ids, idx, lab = [], [], []
    for v in range(n_vol):
        pat, frame = divmod(v, 2)
        for z in range(per_vol):
            ids.append(f"patient{pat + 1:03d}_frame0{frame + 1}")
            idx.append(z)
            lab.append(v < n_vol - unlabelled_vol)
    n = len(ids)
    rng = np.random.default_rng(0)
    masks = (rng.random((n, size, size)) > 0.5).astype(np.uint8)
    masks[~np.asarray(lab)] = 0
    return SliceSet(
        images=rng.uniform(-1, 1, (n, size, size)).astype(np.float32),
        masks=masks,
        labelled=np.asarray(lab),
        volume_ids=ids,
        slice_index=idx,
    )


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray | None) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image.astype(np.float32))
        if label is not None:
            f.create_dataset("label", data=label.astype(np.uint8))


def _make_h5_layout(root: Path, split_of: dict[int, str]) -> Path:
    """ACDC-H5-like folder from phantom volumes: train as slices, val/test as volumes."""
    data = root / "data"
    data.mkdir(parents=True)
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": [], "train_slices": []}
    for pat, split in split_of.items():
        for frame, phase in ((1, 0.0), (2, 0.5)):
            vol = make_phantom_volume(phase=phase, n_slices=3, shape=(40, 48), seed=pat)
            image = vol.image / vol.image.max()
            name = f"patient{pat:03d}_frame0{frame}"
            lists[split].append(name)
            if split == "train":
                for z in range(image.shape[0]):
                    _write_h5(data / f"{name}_slice_{z + 1}.h5", image[z], vol.labels[z])
                    lists["train_slices"].append(f"{name}_slice_{z + 1}")
            else:
                _write_h5(data / f"{name}.h5", image, vol.labels)
    for key, names in lists.items():
        (root / f"{key}.list").write_text("\n".join(names[::-1]) + "\n")  # unsorted on purpose
    return root


def _make_nifti_layout(root: Path, patients: list[int]) -> Path:
    for pat in patients:
        folder = root / f"patient{pat:03d}"
        folder.mkdir(parents=True)
        for frame, phase in ((1, 0.0), (9, 0.5)):
            vol = make_phantom_volume(phase=phase, n_slices=3, shape=(48, 40), seed=pat)
            for arr, suffix in ((vol.image, ""), (vol.labels, "_gt")):
                if suffix == "_gt" and frame == 9 and pat == patients[-1]:
                    continue  # one frame without ground truth
                nii = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), vol.affine)
                nib.save(nii, str(folder / f"patient{pat:03d}_frame{frame:02d}{suffix}.nii.gz"))
    return root


# --------------------------------------------------------------------------------------------
# SliceSet
# --------------------------------------------------------------------------------------------


def test_sliceset_basics() -> None:
    s = _toy_set()
    assert len(s) == 20 and s.size == 8 and s.n_labelled == 15
    assert s.volumes() == [
        "patient001_frame01",
        "patient001_frame02",
        "patient002_frame01",
        "patient002_frame02",
    ]
    assert s.patients() == ["patient001", "patient002"]
    sub = s.subset([3, 0, 19])
    assert sub.slice_index.tolist() == [3, 0, 4]
    np.testing.assert_array_equal(sub.images[1], s.images[0])
    assert len(s.subset(s.labelled)) == 15
    assert len(s.labelled_part()) == 15 and s.labelled_part().labelled.all()
    assert len(s.unlabelled_part()) == 5 and not s.unlabelled_part().labelled.any()
    both = SliceSet.concat([s.labelled_part(), s.unlabelled_part()])
    assert len(both) == 20 and both.n_labelled == 15
    hidden = s.hide_labels()
    assert hidden.n_labelled == 0 and not hidden.masks.any()
    assert len(SliceSet.concat([], size=8)) == 0
    assert "20 slices" in repr(s)


def test_sliceset_validation() -> None:
    s = _toy_set()
    with pytest.raises(InputError):
        SliceSet(s.images, s.masks[:-1], s.labelled, s.volume_ids, s.slice_index)
    with pytest.raises(InputError):
        SliceSet(s.images, s.masks, s.labelled[:-1], s.volume_ids, s.slice_index)
    with pytest.raises(InputError):
        SliceSet.concat([s, SliceSet.empty(16)])


def test_patient_id() -> None:
    assert patient_id("patient012_frame02") == "patient012"
    assert patient_id("Patient012_frame02_slice_3") == "patient012"
    assert patient_id("SCD0000101_4d_t18") == "SCD0000101_4d"
    assert patient_id("study_frame07") == "study"


# --------------------------------------------------------------------------------------------
# split_labelled
# --------------------------------------------------------------------------------------------


def test_split_labelled_images_counts_and_seeding() -> None:
    s = _toy_set()
    lab, pool = split_labelled(s, 4, seed=1)
    assert len(lab) == 4 and lab.labelled.all()
    assert len(pool) == 16 and not pool.labelled.any() and not pool.masks.any()
    keys = {(v, i) for v, i in zip(lab.volume_ids, lab.slice_index, strict=True)}
    pool_keys = {(v, i) for v, i in zip(pool.volume_ids, pool.slice_index, strict=True)}
    assert not keys & pool_keys and len(keys | pool_keys) == 20
    again, _ = split_labelled(s, 4, seed=1)
    np.testing.assert_array_equal(again.images, lab.images)
    others = [split_labelled(s, 4, seed=k)[0].images for k in range(2, 6)]
    assert any(not np.array_equal(o, lab.images) for o in others)
    # the labelled images keep their masks
    original = {(v, i): m for v, i, m in zip(s.volume_ids, s.slice_index, s.masks, strict=True)}
    for v, i, m in zip(lab.volume_ids, lab.slice_index, lab.masks, strict=True):
        np.testing.assert_array_equal(m, original[(v, i)])


def test_split_labelled_volumes_patients_and_caps() -> None:
    s = _toy_set()
    lab, pool = split_labelled(s, 2, by="volumes", seed=0)
    assert len(lab.volumes()) == 2 and len(lab) == 10
    assert set(lab.volumes()).isdisjoint(pool.volumes())
    lab, pool = split_labelled(s, 1, by="patients", seed=0)
    assert len(lab.patients()) == 1
    assert len(lab) in (10, 5)  # patient002 has only one labelled volume
    _, capped = split_labelled(s, 3, n_unlabelled=7, seed=3)
    assert len(capped) == 7
    _, capped2 = split_labelled(s, 3, n_unlabelled=7, seed=3)
    np.testing.assert_array_equal(capped.slice_index, capped2.slice_index)
    _, all_pool = split_labelled(s, 3, n_unlabelled=1000)
    assert len(all_pool) == 17
    lab0, pool0 = split_labelled(s, 0)
    assert len(lab0) == 0 and len(pool0) == 20


def test_split_labelled_errors() -> None:
    s = _toy_set()
    with pytest.raises(InputError, match="only 15"):
        split_labelled(s, 16)
    with pytest.raises(InputError, match="only 3"):
        split_labelled(s, 4, by="volumes")
    with pytest.raises(InputError):
        split_labelled(s, 1, by="frames")
    with pytest.raises(InputError):
        split_labelled(s, -1)
    with pytest.raises(InputError):
        split_labelled(s, 1, n_unlabelled=-2)


# --------------------------------------------------------------------------------------------
# cine NIfTI (the phantom), always runs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory) -> tuple[Path, Path, Path]:
    out = tmp_path_factory.mktemp("phantom")
    img, gt = write_phantom_nifti(
        out, labelled_frames=[0, 2], write_json=True, n_frames=4, n_slices=3, shape=(64, 72)
    )
    return img, gt, out / "phantom_labelled.json"


def test_phantom_through_load_cine_nifti(phantom_files) -> None:
    img, gt, meta = phantom_files
    rule = load_cine_nifti(img, gt, config=SMALL)
    assert rule.images.shape == (12, 64, 64) and rule.images.dtype == np.float32
    assert rule.images.min() >= -1.0 and rule.images.max() <= 1.0
    assert rule.n_labelled == 6  # frames 0 and 2, all 3 slices have myocardium
    assert rule.volumes() == [f"phantom_4d_t{t:02d}" for t in range(4)]
    assert rule.slice_index.tolist() == [0, 1, 2] * 4
    assert set(np.unique(rule.masks)) == {0, 1}
    assert rule.masks[rule.labelled].sum(axis=(1, 2)).min() > 0
    assert not rule.masks[~rule.labelled].any()
    with_json = load_cine_nifti(img, gt, meta, config=SMALL)
    np.testing.assert_array_equal(with_json.labelled, rule.labelled)
    np.testing.assert_array_equal(with_json.masks, rule.masks)
    no_labels = load_cine_nifti(img, config=SMALL)
    assert no_labels.n_labelled == 0 and not no_labels.masks.any()
    # normalised as ONE 4D study, exactly as preprocess_volume does for a 4D layer
    ph = make_cine_phantom(n_frames=4, n_slices=3, shape=(64, 72))
    expected, _ = preprocess_volume(ph.image, ph.spacing, SMALL)
    np.testing.assert_allclose(rule.images, expected.reshape(12, 64, 64), atol=1e-6)


def test_cine_json_restricts_labelled_slices(phantom_files, tmp_path) -> None:
    img, gt, _ = phantom_files
    meta = tmp_path / "some.json"
    meta.write_text(json.dumps({"myocardium_frames_zt": [[1, 0], [2, 2]]}))
    s = load_cine_nifti(img, gt, meta, config=SMALL)
    assert s.n_labelled == 2
    pairs = zip(s.volume_ids[s.labelled].tolist(), s.slice_index[s.labelled].tolist(), strict=True)
    assert sorted(pairs) == [
        ("phantom_4d_t00", 1),
        ("phantom_4d_t02", 2),
    ]
    meta.write_text(json.dumps({"myocardium_frames_zt": [[5, 0]]}))
    with pytest.raises(InputError, match="outside"):
        load_cine_nifti(img, gt, meta, config=SMALL)
    meta.write_text(json.dumps({"other": []}))
    with pytest.raises(InputError, match="myocardium_frames_zt"):
        load_cine_nifti(img, gt, meta, config=SMALL)
    with pytest.raises(InputError, match="without a label"):
        load_cine_nifti(img, None, meta, config=SMALL)


def test_iter_cine_records(phantom_files) -> None:
    img, gt, _ = phantom_files
    recs = list(iter_cine_nifti(img, gt, config=SMALL))
    assert len(recs) == 4 and [r.frame for r in recs] == [0, 1, 2, 3]
    r = recs[2]
    assert r.image.shape == (3, 64, 72) and r.labels is not None and r.labels.shape == (3, 64, 72)
    assert r.spacing == (10.0, 1.5, 1.5) and r.spacing_known
    assert r.geometry is not None and r.geometry.ndim == 4
    assert r.grid.in_shape == (64, 72) and r.slices.shape == (3, 64, 64)
    assert r.labelled.all() and not recs[1].labelled.any()


def test_cine_shape_mismatch(tmp_path, phantom_files) -> None:
    img, _, _ = phantom_files
    _, other_gt = write_phantom_nifti(tmp_path, n_frames=4, n_slices=2, shape=(64, 72))
    with pytest.raises(InputError, match="differs"):
        load_cine_nifti(img, other_gt, config=SMALL)


# --------------------------------------------------------------------------------------------
# synthetic ACDC layouts, always run
# --------------------------------------------------------------------------------------------


def test_synthetic_h5_layout(tmp_path) -> None:
    root = _make_h5_layout(tmp_path / "h5", {1: "train", 2: "train", 3: "val", 4: "test"})
    assert detect_layout(root) == "acdc_h5"
    train = load_acdc_h5(root, "train", config=SMALL)
    assert len(train) == 12 and train.n_labelled == 12
    assert {patient_id(v) for v in train.volumes()} == {"patient001", "patient002"}
    assert train.images.shape == (12, 64, 64)
    # slices of one volume come back in z order, normalised together like the whole volume
    recs = {r.volume_id: r for r in iter_acdc_h5(root, "train", config=SMALL)}
    rec = recs["patient001_frame01"]
    assert not rec.spacing_known and rec.spacing == (1.0, 2.0, 2.0)
    vol = make_phantom_volume(phase=0.0, n_slices=3, shape=(40, 48), seed=1)
    expected, _ = preprocess_volume(vol.image / vol.image.max(), (2.0, 2.0), SMALL)
    np.testing.assert_allclose(rec.slices, expected, atol=1e-5)
    np.testing.assert_array_equal(rec.labels, vol.labels)
    val = load_acdc_h5(root, "val", config=SMALL)
    assert val.volumes() == ["patient003_frame02", "patient003_frame01"]  # list order
    check_training_only(train, root)
    with pytest.raises(InputError, match="validation/test"):
        check_training_only(SliceSet.concat([train, val]), root)
    with pytest.raises(InputError):
        check_training_only(["patient004_frame01"], root)
    # an assumed spacing resamples: the 40 x 48 pixels then cover more of the 128 mm grid
    coarse = next(iter_acdc_h5(root, "test", config=SMALL, spacing=3.0))
    native = next(iter_acdc_h5(root, "test", config=SMALL))
    assert coarse.grid.in_spacing == (3.0, 3.0) and native.grid.in_spacing == (2.0, 2.0)
    assert coarse.grid.model_fov_mask().sum() > 1.5 * native.grid.model_fov_mask().sum()
    assert len(load_acdc_h5(root, "test", config=SMALL, spacing=3.0)) == 6
    with pytest.raises(InputError):
        load_acdc_h5(root, "holdout")
    with pytest.raises(InputError):
        load_acdc_h5(root, "val", spacing=-1.0)


def test_h5_split_lists_must_be_disjoint_by_patient(tmp_path) -> None:
    root = _make_h5_layout(tmp_path / "h5", {1: "train", 2: "val", 3: "test"})
    (root / "val.list").write_text("patient002_frame01\npatient001_frame02\n")
    with pytest.raises(InputError, match="share patient"):
        read_acdc_split(root)
    with pytest.raises(InputError, match="share patient"):
        load_acdc_h5(root, "train", config=SMALL)


def test_h5_missing_file(tmp_path) -> None:
    root = _make_h5_layout(tmp_path / "h5", {1: "train", 2: "val", 3: "test"})
    (root / "data" / "patient002_frame01.h5").unlink()
    with pytest.raises(InputError, match="missing"):
        load_acdc_h5(root, "val", config=SMALL)


def test_synthetic_nifti_layout(tmp_path) -> None:
    root = _make_nifti_layout(tmp_path / "acdc", [3, 7])
    assert detect_layout(root) == "acdc_nifti"
    assert detect_layout(root / "patient003") == "acdc_nifti"
    s = load_acdc_nifti(root, config=SMALL)
    assert s.volumes() == [
        "patient003_frame01",
        "patient003_frame09",
        "patient007_frame01",
        "patient007_frame09",
    ]
    assert len(s) == 12 and s.n_labelled == 9  # patient007_frame09 has no _gt
    one = load_acdc_nifti(root, patients=[7], config=SMALL)
    assert one.patients() == ["patient007"]
    assert len(load_acdc_nifti(root / "patient003", config=SMALL)) == 6
    with pytest.raises(InputError, match="not found"):
        load_acdc_nifti(root, patients=["patient999"])
    assert len(load_dataset(root, config=SMALL, patients=["003"])) == 6


def test_detect_layout_and_find_cine(tmp_path, phantom_files) -> None:
    img, gt, meta = phantom_files
    folder = img.parent
    assert detect_layout(img) == "cine_nifti"
    assert detect_layout(folder) == "cine_nifti"
    assert find_cine_files(folder) == (img, gt, meta)
    assert load_dataset(folder, config=SMALL).n_labelled == 6
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="unknown dataset layout"):
        detect_layout(empty)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError):
        detect_layout(tmp_path / "notes.txt")
    with pytest.raises(InputError):
        detect_layout(tmp_path / "missing")


# --------------------------------------------------------------------------------------------
# real data (skips when ../shared/data is absent)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def h5_train(acdc_h5: Path) -> SliceSet:
    return load_acdc_h5(acdc_h5, "train")


@pytest.mark.shared_data
def test_acdc_h5_split_is_disjoint(acdc_h5: Path) -> None:
    pats = acdc_split_patients(acdc_h5)
    assert (len(pats["train"]), len(pats["val"]), len(pats["test"])) == (70, 10, 20)
    assert pats["train"].isdisjoint(pats["val"])
    assert pats["train"].isdisjoint(pats["test"])
    assert pats["val"].isdisjoint(pats["test"])


@pytest.mark.shared_data
@pytest.mark.slow
def test_acdc_h5_train(acdc_h5: Path, h5_train: SliceSet) -> None:
    s = h5_train
    assert len(s) == 1312 and s.n_labelled == 1312
    assert s.images.shape == (1312, 224, 224) and s.images.dtype == np.float32
    assert s.images.min() >= -1.0 and s.images.max() <= 1.0
    assert set(np.unique(s.masks)) == {0, 1}
    assert len(s.volumes()) == 140
    assert set(s.patients()) == acdc_split_patients(acdc_h5)["train"]
    check_training_only(s, acdc_h5)


@pytest.mark.shared_data
@pytest.mark.parametrize(("split", "n_volumes"), [("val", 20), ("test", 40)])
def test_acdc_h5_val_test(acdc_h5: Path, split: str, n_volumes: int) -> None:
    s = load_acdc_h5(acdc_h5, split)
    assert len(s.volumes()) == n_volumes and s.n_labelled == len(s)
    assert s.images.shape[1:] == (224, 224)
    assert s.images.min() >= -1.0 and s.images.max() <= 1.0
    assert set(np.unique(s.masks)) == {0, 1}
    assert set(s.patients()) == acdc_split_patients(acdc_h5)[split]
    with pytest.raises(InputError, match="validation/test"):
        check_training_only(s, acdc_h5)


@pytest.mark.shared_data
@pytest.mark.slow
def test_acdc_h5_split_labelled(acdc_h5: Path, h5_train: SliceSet) -> None:
    lab, pool = split_labelled(h5_train, 284, seed=0)
    assert len(lab) == 284 and len(pool) == 1312 - 284
    check_training_only(pool, acdc_h5)
    lab2, pool2 = split_labelled(h5_train, 284, seed=0)
    np.testing.assert_array_equal(lab.images, lab2.images)
    np.testing.assert_array_equal(pool.slice_index, pool2.slice_index)
    lab3, pool3 = split_labelled(h5_train, 3, by="patients", seed=0, n_unlabelled=1200)
    assert len(lab3.patients()) == 3 and len(pool3) == 1200
    assert set(lab3.patients()).isdisjoint(pool3.patients())  # every train slice is labelled
    with pytest.raises(InputError):
        split_labelled(h5_train, 1313)


@pytest.mark.shared_data
def test_acdc_nifti_two_patients(acdc_nifti: Path, acdc_h5: Path) -> None:
    s = load_acdc_nifti(acdc_nifti, patients=["patient003", 4])
    assert s.patients() == ["patient003", "patient004"] and len(s.volumes()) == 4
    assert s.n_labelled == len(s) and s.images.shape[1:] == (224, 224)
    assert s.images.min() >= -1.0 and s.images.max() <= 1.0
    assert s.masks.any()
    # slices per volume = the z size of the NIfTI file
    n_z = sum(nib.load(p).shape[2] for p in acdc_nifti.glob("patient00[34]/*_frame??.nii.gz"))
    assert len(s) == n_z
    check_training_only(s, acdc_h5)  # 003, 004 are training patients
    with pytest.raises(InputError):
        check_training_only(load_acdc_nifti(acdc_nifti, patients=[1]), acdc_h5)  # test patient


@pytest.mark.shared_data
def test_sunnybrook(sunnybrook: Path) -> None:
    img = sunnybrook / "SCD0000101_4d.nii.gz"
    gt = sunnybrook / "SCD0000101_4d_gt.nii.gz"
    meta = sunnybrook / "SCD0000101_labelled.json"
    rule = load_cine_nifti(img, gt)
    listed = load_cine_nifti(img, gt, meta)
    assert len(rule) == 240 and rule.n_labelled == 9 and listed.n_labelled == 9
    np.testing.assert_array_equal(rule.labelled, listed.labelled)
    assert set(rule.volume_ids[rule.labelled].tolist()) == {"SCD0000101_4d_t18"}
    assert sorted(rule.slice_index[rule.labelled].tolist()) == list(range(2, 11))
    assert not rule.masks[~rule.labelled].any()  # LV-only frame 7 stays unlabelled
    assert detect_layout(sunnybrook) == "cine_nifti"
