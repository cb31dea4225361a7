"""Tests of the synthetic cine phantom (fast, no shared data needed)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_sdnet.errors import InputError
from napari_sdnet.phantom import (
    CYCLE_MS,
    make_cine_phantom,
    make_phantom_volume,
    write_phantom_nifti,
)


def _wall_thickness_mm(labels2d: np.ndarray, pixel_area: float) -> float:
    """Mean ring thickness from the areas of LV cavity and cavity + myocardium."""
    lv = np.count_nonzero(labels2d == 3) * pixel_area
    myo = np.count_nonzero(labels2d == 2) * pixel_area
    return float(np.sqrt((lv + myo) / np.pi) - np.sqrt(lv / np.pi))


def test_shapes_dtypes_and_labels() -> None:
    ph = make_cine_phantom(n_frames=4, n_slices=3, shape=(64, 80), spacing=(2.0, 1.8))
    assert ph.image.shape == ph.labels.shape == (4, 3, 64, 80)
    assert ph.image.dtype == np.float32
    assert ph.labels.dtype == np.uint8
    assert set(np.unique(ph.labels)) == {0, 1, 2, 3}
    assert np.all(np.isfinite(ph.image)) and ph.image.min() >= 0
    assert ph.spacing == (CYCLE_MS / 4, 10.0, 2.0, 1.8)
    assert ph.ed_frame == 0 and ph.es_frame == 2
    # The affine maps NIfTI (x, y, z) voxels: its column norms are (sx, sy, sz).
    assert np.allclose(np.linalg.norm(ph.affine[:3, :3], axis=0), (1.8, 2.0, 10.0))


def test_myocardium_is_dark_and_blood_bright() -> None:
    ph = make_cine_phantom(contrast_jitter=False, noise=0.0, bias_field=False)
    img, lab = ph.image[0], ph.labels[0]
    assert img[lab == 3].mean() > 2.5 * img[lab == 2].mean()
    assert img[lab == 1].mean() > 2.5 * img[lab == 2].mean()


@pytest.mark.parametrize(("spacing", "shape"), [((1.0, 1.0), (192, 192)), ((2.0, 1.6), (96, 120))])
def test_ring_thickness_in_mm_is_independent_of_spacing(spacing, shape) -> None:
    ph = make_cine_phantom(n_frames=8, spacing=spacing, shape=shape, seed=1)
    area = spacing[0] * spacing[1]
    ed = _wall_thickness_mm(ph.labels[0, 1], area)
    es = _wall_thickness_mm(ph.labels[4, 1], area)
    assert 8.0 <= ed <= 10.0
    assert 10.0 <= es <= 12.5
    assert es > ed  # the wall thickens in systole


def test_contraction_and_base_to_apex() -> None:
    ph = make_cine_phantom(n_frames=10, n_slices=6)
    lv_area = (ph.labels == 3).sum(axis=(1, 2, 3))
    assert lv_area[ph.es_frame] < 0.7 * lv_area[ph.ed_frame]
    assert lv_area[1] < lv_area[0] and lv_area[9] < lv_area[0]  # ED -> ES -> ED
    assert lv_area[5] == lv_area.min()
    per_slice = (ph.labels[0] >= 2).sum(axis=(1, 2))
    assert np.all(np.diff(per_slice) < 0)  # the heart shrinks towards the apex
    # Myocardial area is (nearly) conserved over the cycle.
    myo = (ph.labels == 2).sum(axis=(1, 2, 3))
    assert myo.max() < 1.1 * myo.min()


def test_deterministic_and_seed_dependent() -> None:
    a = make_cine_phantom(n_frames=2, n_slices=2, shape=(48, 48), seed=7)
    b = make_cine_phantom(n_frames=2, n_slices=2, shape=(48, 48), seed=7)
    c = make_cine_phantom(n_frames=2, n_slices=2, shape=(48, 48), seed=8)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, c.image)


def test_contrast_jitter_changes_intensity_scale() -> None:
    kw = {"n_frames": 1, "n_slices": 2, "shape": (64, 64), "noise": 0.0}
    plain = make_cine_phantom(contrast_jitter=False, **kw)
    medians = {
        float(np.median(make_cine_phantom(seed=s, **kw).image[plain.labels == 3])) for s in range(4)
    }
    assert max(medians) / min(medians) > 1.3  # gains differ between "scanners"


def test_phantom_volume_matches_cine_anatomy() -> None:
    kw = {"n_slices": 3, "shape": (64, 64), "seed": 2}
    vol = make_phantom_volume(phase=0.5, **kw)
    cine = make_cine_phantom(n_frames=2, **kw)
    assert vol.image.shape == (3, 64, 64) and vol.spacing == (10.0, 1.5, 1.5)
    np.testing.assert_array_equal(vol.labels, cine.labels[1])  # ES
    with pytest.raises(InputError):
        make_phantom_volume(phase=1.5)


def test_bad_arguments_raise_input_error() -> None:
    with pytest.raises(InputError):
        make_cine_phantom(n_frames=0)
    with pytest.raises(InputError):
        make_cine_phantom(spacing=(0.0, 1.0))
    with pytest.raises(InputError, match="unknown phantom option.*n_slice.*known: n_slices"):
        make_phantom_volume(n_slice=3)  # a misspelt option is not ignored


def test_write_nifti(tmp_path) -> None:
    img_path, gt_path = write_phantom_nifti(
        tmp_path,
        labelled_frames=[0, 2],
        write_json=True,
        n_frames=4,
        n_slices=3,
        shape=(64, 72),
        spacing=(1.25, 1.5),
        slice_thickness=8.0,
    )
    assert img_path.name == "phantom_4d.nii.gz" and gt_path.name == "phantom_4d_gt.nii.gz"
    img = nib.load(img_path)
    gt = nib.load(gt_path)
    assert img.shape == gt.shape == (72, 64, 3, 4)  # (x, y, z, t)
    np.testing.assert_allclose(img.header.get_zooms(), (1.5, 1.25, 8.0, CYCLE_MS / 4))
    assert img.header.get_xyzt_units() == ("mm", "msec")
    assert np.allclose(img.affine[:3, :3], np.diag([1.5, 1.25, 8.0]))
    labels = np.asarray(gt.dataobj).transpose(3, 2, 1, 0)
    assert labels.dtype == np.uint8
    assert labels[0].any() and labels[2].any() and not labels[1].any() and not labels[3].any()
    ph = make_cine_phantom(n_frames=4, n_slices=3, shape=(64, 72), spacing=(1.25, 1.5))
    np.testing.assert_allclose(np.asarray(img.dataobj).transpose(3, 2, 1, 0), ph.image)
    meta = json.loads((tmp_path / "phantom_labelled.json").read_text())
    assert sorted(map(tuple, meta["myocardium_frames_zt"])) == [
        (z, t) for z in range(3) for t in (0, 2)
    ]
