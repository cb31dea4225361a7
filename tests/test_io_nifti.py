"""napari_sdnet.io.nifti: axis order, geometry, labels rule, atomic writes, real data."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_sdnet.errors import InputError, SDNetError
from napari_sdnet.io.nifti import (
    Geometry,
    NiftiVolume,
    looks_like_labels,
    nifti_stem,
    read_nifti,
    write_nifti,
)


def oblique_flipped_affine(zooms=(1.4, 1.4, 8.0)) -> np.ndarray:
    """A rotated (non-axis-aligned), x-flipped affine with anisotropic voxels."""
    a, b = np.deg2rad(25.0), np.deg2rad(-40.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(zooms) @ np.diag([-1.0, 1.0, 1.0])
    affine[:3, 3] = [-120.5, 33.25, 80.0]
    return affine


def save(path: Path, data: np.ndarray, affine=None, **header_fields) -> Path:
    affine = np.eye(4) if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(data.dtype)
    for key, value in header_fields.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if "sdnet-tmp" in p.name]


# --------------------------------------------------------------------------------------------
# axis order and round trips
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_2d_round_trip(tmp_path, suffix):
    arr = np.arange(6 * 5, dtype=np.int16).reshape(6, 5) * 7  # (x, y)
    src = save(tmp_path / f"slice{suffix}", arr, np.diag([0.8, 0.9, 1.0, 1.0]))
    vol = read_nifti(src)
    assert isinstance(vol, NiftiVolume)
    assert vol.data.shape == (5, 6)
    np.testing.assert_array_equal(vol.data, arr.T)
    assert vol.geometry.spacing == pytest.approx((0.9, 0.8))
    assert vol.geometry.file_shape == (6, 5)
    out = write_nifti(tmp_path / f"copy{suffix}", vol.data, vol.geometry)
    back = read_nifti(out)
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_array_equal(nib.load(out).affine, nib.load(src).affine)


def test_3d_axis_order_and_anisotropic_oblique_geometry(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.normal(100, 30, size=(7, 9, 4)).astype(np.float32)  # (x, y, z)
    affine = oblique_flipped_affine((1.25, 1.5, 8.0))
    src = save(tmp_path / "vol.nii.gz", arr, affine)
    vol = read_nifti(src)
    assert vol.data.shape == (4, 9, 7)
    assert vol.data.dtype == np.float32
    assert vol.data[2, 5, 3] == arr[3, 5, 2]
    assert vol.geometry.spacing == pytest.approx((8.0, 1.5, 1.25))
    np.testing.assert_allclose(vol.geometry.affine, affine, atol=1e-5)
    assert not vol.is_labels

    out = write_nifti(tmp_path / "out.nii.gz", vol.data, vol.geometry)
    img = nib.load(out)
    np.testing.assert_array_equal(img.affine, nib.load(src).affine)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), arr)
    assert no_temp_files(tmp_path)


def test_4d_cine_axis_order_time_step_and_units(tmp_path):
    arr = np.arange(6 * 5 * 3 * 4, dtype=np.int16).reshape(6, 5, 3, 4)  # (x, y, z, t)
    img = nib.Nifti1Image(arr, oblique_flipped_affine())
    img.header.set_zooms((1.4, 1.4, 8.0, 37.5))
    img.header.set_xyzt_units("mm", "msec")
    img.header["descrip"] = b"cine test"
    nib.save(img, str(tmp_path / "cine.nii.gz"))

    vol = read_nifti(tmp_path / "cine.nii.gz")
    assert vol.data.shape == (4, 3, 5, 6)
    assert vol.data[3, 2, 1, 0] == arr[0, 1, 2, 3]
    assert vol.geometry.spacing == pytest.approx((37.5, 8.0, 1.4, 1.4))
    assert vol.geometry.time_step == pytest.approx(37.5)
    assert vol.geometry.time_unit == "msec"
    assert vol.geometry.spatial_unit == "mm"

    labels = (vol.data > 200).astype(np.uint8) * 2
    out = write_nifti(tmp_path / "cine_seg.nii.gz", labels, vol.geometry)
    back = nib.load(out)
    assert back.header.get_zooms()[3] == pytest.approx(37.5)
    assert back.header.get_xyzt_units() == ("mm", "msec")
    assert back.header["descrip"].item() == b"cine test"
    np.testing.assert_array_equal(back.affine, nib.load(tmp_path / "cine.nii.gz").affine)
    again = read_nifti(out)
    assert again.is_labels and again.data.dtype == np.uint8
    np.testing.assert_array_equal(again.data, labels)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_dtypes_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(1)
    arr = (rng.random((8, 6, 3)) * 250).astype(dtype)
    src = save(tmp_path / "img.nii.gz", arr, oblique_flipped_affine())
    vol = read_nifti(src)
    out = write_nifti(tmp_path / "back.nii.gz", vol.data, vol.geometry)
    np.testing.assert_array_equal(read_nifti(out).data, vol.data)
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj).astype(dtype), arr)


def test_scaled_image_gets_slope_and_intercept(tmp_path):
    arr = np.arange(24, dtype=np.int16).reshape(4, 3, 2)
    img = nib.Nifti1Image(arr, np.eye(4))
    img.set_data_dtype(np.int16)
    img.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "scaled.nii"
    # nibabel keeps a header's slope/inter when the array already has the on-disk type
    nib.save(img, str(path))
    vol = read_nifti(path)
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, (arr * 0.5 + 10).T)


def test_qform_sform_codes_and_header_fields_kept(tmp_path):
    arr = np.zeros((5, 4, 3), dtype=np.int16)
    img = nib.Nifti1Image(arr, oblique_flipped_affine())
    img.header.set_qform(oblique_flipped_affine(), code="scanner")
    img.header.set_sform(oblique_flipped_affine(), code="aligned")
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"kept"
    img.header["slice_duration"] = 0.05
    nib.save(img, str(tmp_path / "src.nii.gz"))
    vol = read_nifti(tmp_path / "src.nii.gz")

    write_nifti(tmp_path / "dst.nii.gz", vol.data.astype(np.uint8), vol.geometry)
    src_h = nib.load(tmp_path / "src.nii.gz").header
    dst_h = nib.load(tmp_path / "dst.nii.gz").header
    assert int(dst_h["qform_code"]) == 1 and int(dst_h["sform_code"]) == 2
    np.testing.assert_array_equal(dst_h.get_qform(), src_h.get_qform())
    np.testing.assert_array_equal(dst_h.get_sform(), src_h.get_sform())
    np.testing.assert_array_equal(dst_h["pixdim"], src_h["pixdim"])
    assert dst_h.get_xyzt_units() == ("mm", "sec")
    assert dst_h["descrip"].item() == b"kept"
    assert float(dst_h["slice_duration"]) == pytest.approx(0.05)
    assert dst_h.get_data_dtype() == np.uint8


def test_qform_only_file_keeps_its_affine(tmp_path):
    img = nib.Nifti1Image(np.ones((4, 4, 2), np.uint8), None)
    img.header.set_qform(oblique_flipped_affine(), code="scanner")
    img.header.set_sform(None, code="unknown")
    nib.save(img, str(tmp_path / "q.nii"))
    vol = read_nifti(tmp_path / "q.nii")
    write_nifti(tmp_path / "q2.nii", vol.data, vol.geometry)
    a, b = nib.load(tmp_path / "q.nii"), nib.load(tmp_path / "q2.nii")
    np.testing.assert_array_equal(a.affine, b.affine)
    assert int(b.header["sform_code"]) == 0 and int(b.header["qform_code"]) == 1


def test_labels_written_with_smallest_integer_dtype(tmp_path):
    geom = Geometry.from_scale((10.0, 1.5, 1.5), shape=(2, 3, 4))
    small = np.zeros((2, 3, 4), dtype=np.int64)
    small[0, 1, 2] = 3
    big = small.copy()
    big[1, 1, 1] = 1000
    write_nifti(tmp_path / "a.nii.gz", small, geom)
    write_nifti(tmp_path / "b.nii.gz", big, geom)
    assert nib.load(tmp_path / "a.nii.gz").get_data_dtype() == np.uint8
    assert nib.load(tmp_path / "b.nii.gz").get_data_dtype() == np.int16
    np.testing.assert_array_equal(read_nifti(tmp_path / "b.nii.gz").data, big)
    with pytest.raises(InputError, match="do not fit"):
        write_nifti(tmp_path / "c.nii.gz", big, geom, dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# dimensionality and bad files
# --------------------------------------------------------------------------------------------
def test_trailing_singletons_dropped_and_real_5d_refused(tmp_path):
    save(tmp_path / "five1.nii.gz", np.ones((4, 3, 2, 5, 1), np.int16))
    assert read_nifti(tmp_path / "five1.nii.gz").data.shape == (5, 2, 3, 4)
    save(tmp_path / "five.nii.gz", np.ones((4, 3, 2, 5, 2), np.int16))
    with pytest.raises(InputError, match=r"five\.nii\.gz.*\(4, 3, 2, 5, 2\)"):
        read_nifti(tmp_path / "five.nii.gz")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nothere.nii.gz"):
        read_nifti(tmp_path / "nothere.nii.gz")


def test_not_a_nifti_file(tmp_path):
    bad = tmp_path / "text.nii"
    bad.write_text("this is not an image\n" * 40)
    with pytest.raises(InputError, match="text.nii"):
        read_nifti(bad)
    gz = tmp_path / "garbage.nii.gz"
    gz.write_bytes(b"\x00\x01 not gzip at all" * 50)
    with pytest.raises(InputError, match="garbage.nii.gz"):
        read_nifti(gz)


def test_truncated_file(tmp_path):
    src = save(tmp_path / "full.nii", np.arange(4000, dtype=np.int16).reshape(20, 20, 10))
    raw = src.read_bytes()
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="cut.nii"):
        read_nifti(tmp_path / "cut.nii")
    gz = gzip.compress(raw)
    (tmp_path / "cut.nii.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(InputError, match="cut.nii.gz"):
        read_nifti(tmp_path / "cut.nii.gz")


def test_zero_and_nan_spacing_fall_back_with_warning(tmp_path):
    img = nib.Nifti1Image(np.ones((3, 3, 2, 2), np.float32), None)
    img.header["pixdim"][1:5] = [0.0, 1.5, np.nan, 0.0]
    nib.save(img, str(tmp_path / "z.nii.gz"))
    with pytest.warns(UserWarning, match="z.nii.gz"):
        vol = read_nifti(tmp_path / "z.nii.gz")
    assert vol.geometry.spacing == (1.0, 1.0, 1.5, 1.0)


# --------------------------------------------------------------------------------------------
# writing rules
# --------------------------------------------------------------------------------------------
def test_overwrite_refused_unless_asked(tmp_path):
    geom = Geometry.from_scale((1.0, 1.0), shape=(3, 4))
    target = write_nifti(tmp_path / "m.nii.gz", np.zeros((3, 4), np.uint8), geom)
    with pytest.raises(SDNetError, match="exists"):
        write_nifti(target, np.ones((3, 4), np.uint8), geom)
    assert read_nifti(target).data.max() == 0
    write_nifti(target, np.ones((3, 4), np.uint8), geom, overwrite=True)
    assert read_nifti(target).data.min() == 1
    assert no_temp_files(tmp_path)


def test_shape_must_match_geometry(tmp_path):
    geom = Geometry.from_scale((10.0, 1.5, 1.5), shape=(2, 3, 4))
    with pytest.raises(InputError, match="does not match"):
        write_nifti(tmp_path / "x.nii.gz", np.zeros((2, 4, 3), np.uint8), geom)
    with pytest.raises(InputError, match="does not match"):
        write_nifti(tmp_path / "x.nii.gz", np.zeros((3, 4), np.uint8), geom)
    with pytest.raises(InputError, match=r"\.nii"):
        write_nifti(tmp_path / "x.png", np.zeros((2, 3, 4), np.uint8), geom)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    geom = Geometry.from_scale((1.0, 1.0), shape=(3, 4))

    def boom(*args, **kwargs):
        # nibabel has created the temporary file and fails half way
        Path(args[1]).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(InputError, match="cannot write"):
        write_nifti(tmp_path / "m.nii.gz", np.zeros((3, 4), np.uint8), geom)
    assert list(tmp_path.iterdir()) == []


def test_no_geometry_diagonal_affine(tmp_path):
    geom = Geometry.from_scale((37.5, 8.0, 1.2, 1.3), time_unit="msec")
    data = np.zeros((2, 3, 4, 5), np.uint8)
    out = write_nifti(tmp_path / "d.nii.gz", data, geom)
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, np.diag([1.3, 1.2, 8.0, 1.0]))
    assert img.header.get_zooms() == pytest.approx((1.3, 1.2, 8.0, 37.5))
    assert img.header.get_xyzt_units() == ("mm", "msec")
    assert read_nifti(out).geometry.spacing == pytest.approx((37.5, 8.0, 1.2, 1.3))


def test_metadata_round_trip_is_json(tmp_path):
    src = save(tmp_path / "v.nii.gz", np.ones((4, 3, 2), np.int16), oblique_flipped_affine())
    geom = read_nifti(src).geometry
    d = json.loads(json.dumps(geom.to_metadata()))
    assert Geometry.from_metadata(d) == geom
    assert len(geom.header) == 348
    assert not geom.affine.flags.writeable
    with pytest.raises(InputError):
        Geometry.from_metadata({"affine": [[1, 0], [0, 1]], "spacing": [1, 1]})
    with pytest.raises(InputError):
        Geometry.from_metadata({"spacing": [1, 1]})


# --------------------------------------------------------------------------------------------
# labels rule
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["p_gt.nii.gz", "p_SEG.nii", "p_label.nii.gz", "p_labels.nii", "heart_mask.nii.gz"]
)
def test_labels_by_name(name):
    assert looks_like_labels(name, np.arange(100, dtype=np.int16))
    assert looks_like_labels(name, np.array([0.0, 1.0, 2.0], np.float32))
    assert not looks_like_labels(name, np.array([0.0, 0.5], np.float32))


def test_labels_by_values():
    few = np.zeros((20, 30, 30), np.uint8)
    few[5:10, 5:10, 5:10] = 3
    assert looks_like_labels("image.nii.gz", few)
    assert looks_like_labels("image.nii.gz", np.arange(32, dtype=np.int32))
    assert not looks_like_labels("image.nii.gz", np.arange(33, dtype=np.int32))
    assert not looks_like_labels("image.nii.gz", np.array([-1, 0, 1], np.int16))
    assert not looks_like_labels("image.nii.gz", few.astype(np.float32))
    mr = np.random.default_rng(0).integers(0, 700, size=(10, 64, 64)).astype(np.int16)
    assert not looks_like_labels("image.nii.gz", mr)
    assert nifti_stem("dir/patient001_frame01_gt.nii.gz") == "patient001_frame01_gt"


def test_labels_keep_on_disk_dtype(tmp_path):
    lab = np.zeros((6, 5, 2), np.int16)
    lab[1:3, 1:3, 0] = 2
    vol = read_nifti(save(tmp_path / "x_seg.nii.gz", lab))
    assert vol.is_labels and vol.data.dtype == np.int16
    float_lab = save(tmp_path / "y_gt.nii.gz", lab.astype(np.float32))
    vol = read_nifti(float_lab)
    assert vol.is_labels and vol.data.dtype == np.uint8


# --------------------------------------------------------------------------------------------
# real data (skipped when ../shared/data is absent)
# --------------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_acdc_image_and_gt_match(acdc_nifti):
    folder = acdc_nifti / "patient001"
    image = read_nifti(folder / "patient001_frame01.nii.gz")
    gt = read_nifti(folder / "patient001_frame01_gt.nii.gz")
    assert not image.is_labels and gt.is_labels
    assert image.data.shape == gt.data.shape == (10, 256, 216)
    assert gt.data.dtype == np.uint8
    assert set(np.unique(gt.data)) == {0, 1, 2, 3}
    assert image.geometry.spacing == gt.geometry.spacing == pytest.approx((10.0, 1.5625, 1.5625))
    np.testing.assert_array_equal(image.geometry.affine, gt.geometry.affine)


@pytest.mark.shared_data
def test_sunnybrook_4d_round_trip(sunnybrook, tmp_path):
    src = sunnybrook / "SCD0000101_4d.nii.gz"
    vol = read_nifti(src)
    assert vol.data.shape == (20, 12, 256, 256)
    assert vol.geometry.time_step == pytest.approx(37.5)
    assert vol.geometry.time_unit == "msec"
    gt = read_nifti(sunnybrook / "SCD0000101_4d_gt.nii.gz")
    assert gt.is_labels and gt.data.shape == vol.data.shape

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = write_nifti(tmp_path / "seg.nii.gz", gt.data, vol.geometry)
    back = read_nifti(out)
    np.testing.assert_array_equal(back.data, gt.data)
    np.testing.assert_array_equal(nib.load(out).affine, nib.load(src).affine)
    assert back.geometry.spacing == vol.geometry.spacing
    assert back.data.dtype == np.uint8


@pytest.mark.shared_data
def test_acdc_read_write_read(acdc_nifti, tmp_path):
    folder = acdc_nifti / "patient001"
    for name in ("patient001_frame01.nii.gz", "patient001_frame01_gt.nii.gz"):
        vol = read_nifti(folder / name)
        out = write_nifti(tmp_path / name, vol.data, vol.geometry)
        back = read_nifti(out)
        np.testing.assert_array_equal(back.data, vol.data)
        assert back.data.dtype == vol.data.dtype
        assert back.is_labels == vol.is_labels
        np.testing.assert_array_equal(nib.load(out).affine, nib.load(folder / name).affine)
