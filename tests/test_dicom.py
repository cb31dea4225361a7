"""DICOM cine series: reader (napari_sdnet.io.dicom), read_image, the npe2 reader, DICOM SEG
export (highdicom) and the CLI. Synthetic series written here with pydicom (oblique, shuffled
file names and instance numbers); the Sunnybrook tests need ../shared and skip without it."""

from __future__ import annotations

import io
import uuid
import warnings
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from napari_sdnet.errors import InputError
from napari_sdnet.io import read_image
from napari_sdnet.io.dicom import DicomSeriesInfo, read_dicom, read_dicom_all
from napari_sdnet.io.nifti import Geometry, read_nifti, write_nifti
from napari_sdnet.io.seg import read_dicom_seg, write_dicom_seg

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
# an oblique short-axis-like orientation (unit, orthogonal)
_R = np.array([0.6, 0.8, 0.0])
_C = np.array([-0.48, 0.36, -0.8])
ROWS, COLS = 12, 10
ROW_SPACING, COL_SPACING = 1.5, 1.25
STEP = 8.0
DT = 40.0


def _origin(z: int) -> np.ndarray:
    return np.array([10.0, -20.0, 30.0]) + z * STEP * np.cross(_R, _C)


def _dataset(series_uid, study_uid, z, t, pixels, *, instance, iop=None, spacing=None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MR_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.PatientName = "Synthetic^Heart"
    ds.PatientID = "SYN001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Modality = "MR"
    ds.Manufacturer = "synthetic"
    ds.SeriesNumber = 7
    ds.SeriesDescription = "SA cine"
    ds.InstanceNumber = instance
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImageOrientationPatient = list(np.r_[_R, _C] if iop is None else iop)
    ds.ImagePositionPatient = [float(v) for v in _origin(z)]
    ds.PixelSpacing = list(spacing or (ROW_SPACING, COL_SPACING))
    ds.SliceThickness = STEP
    ds.TriggerTime = 20.0 + t * DT + 0.3 * z  # differs a little between slice positions
    ds.CardiacNumberOfImages = None
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -5
    ds.PixelData = pixels.astype("<i2").tobytes()
    return ds


def write_series(folder: Path, n_t=3, n_z=4, *, seed=0, series_uid=None, skip=()):
    """A synthetic cine series with random file names; returns the expected (t, z, y, x) array
    (after the rescale) and the series UID. ``skip``: (t, z) pairs not written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 1000, size=(n_t, n_z, ROWS, COLS)).astype(np.int16)
    series_uid = series_uid or generate_uid()
    study_uid = "1.2.826.0.1.3680043.8.498.2"
    instances = rng.permutation(n_t * n_z) + 1  # instance numbers unrelated to the order
    for k, (t, z) in enumerate((t, z) for z in range(n_z) for t in range(n_t)):
        if (t, z) in skip:
            continue
        ds = _dataset(series_uid, study_uid, z, t, stored[t, z], instance=int(instances[k]))
        ds.CardiacNumberOfImages = n_t
        ds.save_as(folder / f"{uuid.uuid4().hex[:8]}.dcm", enforce_file_format=True)
    return stored.astype(np.float32) * 2 - 5, series_uid


@pytest.fixture
def series(tmp_path):
    folder = tmp_path / "cine"
    expected, uid = write_series(folder)
    return folder, expected, uid


# --------------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------------
def test_oblique_shuffled_series_reads_in_position_and_trigger_order(series):
    folder, expected, uid = series
    vol = read_dicom(folder)
    assert vol.data.shape == (3, 4, ROWS, COLS)
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, expected)
    dt, dz, dy, dx = vol.geometry.spacing
    assert dt == pytest.approx(DT)
    assert (dz, dy, dx) == pytest.approx((STEP, ROW_SPACING, COL_SPACING))
    assert vol.geometry.file_shape == (COLS, ROWS, 4, 3)
    assert vol.geometry.time_unit == "msec"
    assert vol.dicom.series_instance_uid == uid
    assert vol.dicom.n_phases == 3 and vol.dicom.n_slices == 4


def test_affine_puts_every_voxel_at_its_dicom_position(series):
    """RAS affine vs the DICOM formula IPP + col * dx * row_dir + row * dy * col_dir (LPS)."""
    folder, _, _ = series
    vol = read_dicom(folder)
    aff = vol.geometry.affine
    for z in range(4):
        for y, x in [(0, 0), (ROWS - 1, 0), (0, COLS - 1), (5, 7)]:
            lps = _origin(z) + x * COL_SPACING * _R + y * ROW_SPACING * _C
            ras = aff @ [x, y, z, 1.0]
            np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-6)


def test_nifti_mask_from_dicom_geometry_is_in_scanner_coordinates(series, tmp_path):
    folder, _, _ = series
    vol = read_dicom(folder)
    mask = (vol.data > 900).astype(np.uint8)
    out = write_nifti(tmp_path / "mask.nii.gz", mask, vol.geometry)
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, vol.geometry.affine, atol=1e-5)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert img.header.get_zooms()[3] == pytest.approx(DT)
    assert img.header.get_xyzt_units() == ("mm", "msec")
    back = read_nifti(out)
    np.testing.assert_array_equal(back.data, mask)
    # the voxel at DICOM (t, z, row, col) is stored at NIfTI [col, row, z, t]
    assert np.asarray(img.dataobj)[7, 5, 2, 1] == mask[1, 2, 5, 7]


def test_single_phase_series_is_3d(tmp_path):
    expected, _ = write_series(tmp_path / "s", n_t=1, n_z=3)
    vol = read_dicom(tmp_path / "s")
    assert vol.data.shape == (3, ROWS, COLS)
    np.testing.assert_array_equal(vol.data, expected[0])
    assert vol.geometry.spacing == pytest.approx((STEP, ROW_SPACING, COL_SPACING))


def test_read_image_takes_nifti_folder_file_and_list(series, tmp_path):
    folder, expected, _ = series
    files = sorted(folder.glob("*.dcm"))
    for source in (folder, files[0], files, str(folder)):
        vol = read_image(source)
        np.testing.assert_array_equal(vol.data, expected)
    nifti = write_nifti(tmp_path / "x.nii.gz", expected, read_image(folder).geometry)
    vol = read_image(nifti)
    np.testing.assert_array_equal(vol.data, expected)
    np.testing.assert_allclose(vol.geometry.affine, read_image(folder).geometry.affine, atol=1e-5)
    with pytest.raises(InputError, match="neither a NIfTI"):
        (tmp_path / "notes.txt").write_text("hello")
        read_image(tmp_path / "notes.txt")


# --------------------------------------------------------------------------------------------
# refused series: clear one-line messages, nothing returned
# --------------------------------------------------------------------------------------------
def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_folder_without_dicom(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="no DICOM files") as exc:
        read_dicom(tmp_path)
    _one_line(exc)
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing")


def test_missing_phase_is_refused(tmp_path):
    write_series(tmp_path / "s", skip={(1, 2)})
    with pytest.raises(InputError, match="phases missing: slice position") as exc:
        read_dicom(tmp_path / "s")
    assert "3 of 4" in _one_line(exc)


def test_missing_slice_is_refused(tmp_path):
    write_series(tmp_path / "s", n_z=5, skip={(t, 2) for t in range(3)})
    with pytest.raises(InputError, match=r"1 slice\(s\) missing between slice positions 2 and 3"):
        read_dicom(tmp_path / "s")


def test_mixed_orientation_is_refused(tmp_path):
    write_series(tmp_path / "s")
    f = sorted((tmp_path / "s").glob("*.dcm"))[0]
    ds = pydicom.dcmread(f)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(f)
    with pytest.raises(InputError, match="mixes slice orientations") as exc:
        read_dicom(tmp_path / "s")
    assert f.name in _one_line(exc)


def test_mixed_pixel_spacing_is_refused(tmp_path):
    write_series(tmp_path / "s")
    f = sorted((tmp_path / "s").glob("*.dcm"))[3]
    ds = pydicom.dcmread(f)
    ds.PixelSpacing = [1.4, 1.25]
    ds.save_as(f)
    with pytest.raises(InputError, match="mixes pixel spacings"):
        read_dicom(tmp_path / "s")


def test_same_position_and_time_twice_is_refused(tmp_path):
    write_series(tmp_path / "s")
    f = sorted((tmp_path / "s").glob("*.dcm"))[0]
    ds = pydicom.dcmread(f)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "s" / "copy_with_new_uid.dcm")
    with pytest.raises(InputError, match="same position and trigger time"):
        read_dicom(tmp_path / "s")


def _shear(folder: Path, degrees: float) -> None:
    """Shift every slice in plane (along the row direction) so that the slice origins advance
    ``degrees`` off the slice normal; the planes stay STEP mm apart."""
    normal = np.cross(_R, _C)
    shift = STEP * np.tan(np.radians(degrees))
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        pos = np.array([float(v) for v in ds.ImagePositionPatient])
        z = round(float((pos - _origin(0)) @ normal) / STEP)
        ds.ImagePositionPatient = [float(v) for v in pos + z * shift * _R]
        ds.save_as(f)


def test_slightly_sheared_stack_has_the_plane_spacing_and_keeps_its_positions(tmp_path):
    write_series(tmp_path / "s")
    _shear(tmp_path / "s", 0.8)
    vol = read_dicom(tmp_path / "s")
    # the voxel size along z is the plane spacing (8 mm), not the 8.0008 mm between origins
    assert vol.geometry.spacing[1] == pytest.approx(STEP, rel=1e-9)
    affine = vol.geometry.affine
    assert abs(np.linalg.det(affine[:3, :3])) == pytest.approx(COL_SPACING * ROW_SPACING * STEP)
    # every slice origin is where DICOM puts it (the sform keeps the shear) ...
    for z, f in enumerate(vol.dicom.files[0]):
        lps = np.array([float(v) for v in pydicom.dcmread(f).ImagePositionPatient])
        ras = affine @ np.array([0.0, 0.0, z, 1.0])
        np.testing.assert_allclose(ras[:3] * [-1, -1, 1], lps, atol=1e-6)
    # ... and the header says the same: sform = affine, qform without shear, zooms dz = 8 mm
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(vol.geometry.header))
    np.testing.assert_allclose(hdr.get_sform(), affine, atol=1e-6)
    assert hdr.get_zooms()[:3] == pytest.approx((COL_SPACING, ROW_SPACING, STEP), rel=1e-6)
    qform = hdr.get_qform()
    normal = np.cross(qform[:3, 0], qform[:3, 1])
    assert abs(qform[:3, 2] @ normal) / np.linalg.norm(normal) == pytest.approx(STEP, rel=1e-6)


def test_sheared_stack_is_refused(tmp_path):
    write_series(tmp_path / "s")
    _shear(tmp_path / "s", 5.0)
    with pytest.raises(InputError, match=r"5\.0 degrees off the slice normal") as exc:
        read_dicom(tmp_path / "s")
    assert "sheared" in _one_line(exc)


def test_skipped_files_are_named_in_a_warning(tmp_path):
    folder = tmp_path / "s"
    write_series(folder)
    (folder / "notes.txt").write_text("not an image")
    (folder / "thumb.png").write_bytes(b"\x89PNG" + bytes(200))
    (folder / "sub").mkdir()
    (folder / "sub" / "readme").write_text("x")
    (folder / "sub" / "zz.json").write_text("{}")
    # the DICM preamble, then a sequence item cut short: pydicom cannot parse it
    broken = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00"
    broken += b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00ab"
    (folder / "broken.dcm").write_bytes(broken)
    with pytest.warns(UserWarning, match="skipped") as caught:
        vol = read_dicom(folder)
    assert vol.data.shape == (3, 4, ROWS, COLS)
    text = [str(w.message) for w in caught if "DICM preamble" in str(w.message)]
    assert len(text) == 1 and "\n" not in text[0]
    assert "4 file(s) without the DICM preamble" in text[0]
    assert "notes.txt" in text[0] and "..." in text[0]  # the first few names, then "..."
    assert "1 DICOM file(s) that cannot be parsed: broken.dcm" in text[0]


def _non_image(folder: Path, sop_class: str, modality: str, name: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = modality
    ds.SeriesNumber = 99
    ds.SeriesDescription = name
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / f"{name}.dcm", enforce_file_format=True)


def test_only_non_image_objects_are_refused(tmp_path):
    _non_image(tmp_path, "1.2.840.10008.5.1.4.1.1.88.33", "SR", "report")  # Comprehensive SR
    _non_image(tmp_path, "1.2.840.10008.5.1.4.1.1.7", "OT", "screenshot")  # secondary capture
    with pytest.raises(InputError, match="no image series") as exc:
        read_dicom(tmp_path)
    text = _one_line(exc)
    assert "structured report" in text and "secondary capture" in text


def test_several_series_open_the_cine_and_name_the_skipped(tmp_path):
    _, cine_uid = write_series(tmp_path / "a", seed=1)
    write_series(tmp_path / "b", n_t=1, n_z=2, seed=2)
    _non_image(tmp_path / "c", "1.2.840.10008.5.1.4.1.1.66.4", "SEG", "old seg")
    with pytest.warns(UserWarning, match="skipped") as caught:
        vol = read_dicom(tmp_path)
    assert vol.dicom.series_instance_uid == cine_uid
    text = " ".join(str(w.message) for w in caught)
    assert "Segmentation Storage" in text and "not the cine series" in text
    volumes, skipped = read_dicom_all(tmp_path)
    assert sorted(v.data.ndim for v in volumes) == [3, 4]
    assert len(skipped) == 1 and "old seg" in skipped[0]


def test_two_cine_series_need_a_choice(tmp_path):
    write_series(tmp_path / "a", seed=1)
    _, uid_b = write_series(tmp_path / "b", seed=2)
    with pytest.raises(InputError, match="2 image series"):
        read_dicom(tmp_path)
    one_file = next((tmp_path / "b").glob("*.dcm"))
    assert read_dicom(one_file).dicom.series_instance_uid == uid_b
    assert read_dicom(tmp_path, series_uid=uid_b).dicom.series_instance_uid == uid_b


def test_undecodable_compressed_syntax_names_what_to_install(tmp_path):
    write_series(tmp_path / "s")
    from pydicom.pixels import get_decoder
    from pydicom.uid import HTJ2KLossless

    if get_decoder(HTJ2KLossless).is_available:
        pytest.skip("an HTJ2K decoder is installed here")
    for f in (tmp_path / "s").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = HTJ2KLossless
        ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 16])
        ds["PixelData"].VR = "OB"
        ds.save_as(f, enforce_file_format=True)
    with pytest.raises(InputError, match="no installed decoder reads it; install") as exc:
        read_dicom(tmp_path / "s")
    assert "pylibjpeg-openjpeg" in _one_line(exc)


# --------------------------------------------------------------------------------------------
# npe2 reader
# --------------------------------------------------------------------------------------------
def test_npe2_dicom_reader(series, tmp_path):
    from napari_sdnet._napari._reader import get_dicom_reader, read_dicom_layers

    folder, expected, uid = series
    empty = tmp_path / "empty"
    empty.mkdir()
    assert get_dicom_reader(str(empty)) is None
    assert get_dicom_reader(str(tmp_path / "missing")) is None
    assert get_dicom_reader(str(tmp_path / "x.nii.gz")) is None
    assert get_dicom_reader([]) is None
    assert get_dicom_reader(str(folder)) is read_dicom_layers
    files = [str(f) for f in folder.glob("*.dcm")]
    assert get_dicom_reader(files[0]) is read_dicom_layers
    assert get_dicom_reader(files) is read_dicom_layers

    [(data, kwargs, kind)] = read_dicom_layers(str(folder))
    assert kind == "image"
    np.testing.assert_array_equal(data, expected)
    assert kwargs["scale"] == pytest.approx((DT, STEP, ROW_SPACING, COL_SPACING))
    assert kwargs["axis_labels"] == ("t", "z", "y", "x")
    assert kwargs["units"][0] == "millisecond"
    geometry = Geometry.from_metadata(kwargs["metadata"]["sdnet_geometry"])
    np.testing.assert_allclose(geometry.affine, read_dicom(folder).geometry.affine)
    info = DicomSeriesInfo.from_metadata(kwargs["metadata"]["sdnet_dicom"])
    assert info.series_instance_uid == uid
    assert Path(kwargs["metadata"]["source_path"]) == folder


def test_npe2_manifest_has_the_folder_reader():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    readers = pm.get_manifest("napari-sdnet").contributions.readers
    dicom = [r for r in readers if r.command == "napari-sdnet.get_dicom_reader"]
    assert dicom and dicom[0].accepts_directories


# --------------------------------------------------------------------------------------------
# DICOM SEG
# --------------------------------------------------------------------------------------------
def _mask(shape) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[..., 3:9, 2:8] = 2
    mask[..., 5:7, 4:6] = 3
    mask[0, 0] = 0  # an empty slice
    mask[2, 3, 0, 0] = 1
    return mask


def test_dicom_seg_round_trip_with_highdicom(series, tmp_path):
    import highdicom as hd

    folder, _, uid = series
    vol = read_dicom(folder)
    mask = _mask(vol.data.shape)
    out = write_dicom_seg(tmp_path / "mask.dcm", mask, vol.dicom)
    seg = hd.seg.segread(out)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    labels = [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]
    assert labels == ["RV cavity", "Myocardium", "LV cavity"]
    types = [seg.get_segment_description(n).segmented_property_type.value for n in (1, 2, 3)]
    assert types == ["53085002", "49848007", "87878005"]
    # every frame references its own source image: per phase, read back through highdicom
    for t in range(3):
        uids = list(vol.dicom.sop_instance_uids[t])
        present = [u for u in uids if u in {str(x[2]) for x in seg.get_source_image_uids()}]
        arr = seg.get_pixels_by_source_instance(present, combine_segments=True)
        for u, plane in zip(present, arr, strict=True):
            expected = np.select([mask[t, uids.index(u)] == v for v in (1, 2, 3)], [1, 2, 3], 0)
            np.testing.assert_array_equal(plane, expected)
    np.testing.assert_array_equal(read_dicom_seg(out, vol.dicom), mask)
    with pytest.raises(InputError, match="file exists"):
        write_dicom_seg(out, mask, vol.dicom)


def test_dicom_seg_only_structures_present_and_bad_masks(series, tmp_path):
    import highdicom as hd

    folder, _, _ = series
    vol = read_dicom(folder)
    mask = np.zeros(vol.data.shape, np.uint8)
    mask[1, 2, 4:8, 4:8] = 2
    out = write_dicom_seg(tmp_path / "myo.dcm", mask, vol.dicom)
    seg = hd.seg.segread(out)
    assert list(seg.segment_numbers) == [1]
    assert seg.get_segment_description(1).segment_label == "Myocardium"
    np.testing.assert_array_equal(read_dicom_seg(out, vol.dicom), mask)
    with pytest.raises(InputError, match="empty"):
        write_dicom_seg(tmp_path / "e.dcm", np.zeros_like(mask), vol.dicom)
    with pytest.raises(InputError, match="no ACDC meaning"):
        write_dicom_seg(tmp_path / "e.dcm", mask * 3, vol.dicom)
    with pytest.raises(InputError, match="would not line up"):
        write_dicom_seg(tmp_path / "e.dcm", mask[:, :2], vol.dicom)
    assert not (tmp_path / "e.dcm").exists()
    assert not [p for p in tmp_path.iterdir() if "sdnet-tmp" in p.name]


def test_cine_dicom_seg_references_every_phase_and_claims_no_3d_temporal(series, tmp_path):
    import highdicom as hd

    folder, _, _ = series
    vol = read_dicom(folder)
    # one segment on every slice of every phase: highdicom calls each phase "3D"
    mask = np.zeros(vol.data.shape, np.uint8)
    mask[..., 3:9, 2:8] = 2
    seg = hd.seg.segread(write_dicom_seg(tmp_path / "myo.dcm", mask, vol.dicom))
    every = {u for row in vol.dicom.sop_instance_uids for u in row}
    # the top-level SourceImageSequence lists every phase's images, as ReferencedSeriesSequence
    sources = [str(r.ReferencedSOPInstanceUID) for r in seg.SourceImageSequence]
    assert len(sources) == len(every) == 12 and set(sources) == every
    refs = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert {str(r.ReferencedSOPInstanceUID) for r in refs} == every
    # the joined phases are neither one 3D volume nor complete 3D_TEMPORAL volumes
    assert "DimensionOrganizationType" not in seg
    np.testing.assert_array_equal(read_dicom_seg(tmp_path / "myo.dcm", vol.dicom), mask)


def test_dicom_seg_of_a_single_phase_series(tmp_path):
    write_series(tmp_path / "s", n_t=1, n_z=3)
    vol = read_dicom(tmp_path / "s")
    mask = np.zeros(vol.data.shape, np.uint8)
    mask[1, 2:5, 2:5] = 2
    out = write_dicom_seg(tmp_path / "m.dcm", mask, vol.dicom)
    np.testing.assert_array_equal(read_dicom_seg(out, vol.dicom), mask)


def test_export_mask_writes_dicom_seg_for_dicom_layers(series, tmp_path):
    from napari_sdnet._napari._export import export_mask, with_nifti_suffix
    from napari_sdnet._napari._reader import read_dicom_layers

    folder, _, _ = series
    [(data, kwargs, _)] = read_dicom_layers(str(folder))
    image = SimpleNamespace(
        data=data, name=kwargs["name"], metadata=kwargs["metadata"], scale=kwargs["scale"]
    )
    mask = _mask(data.shape)
    assert with_nifti_suffix(tmp_path / "m.dcm") == tmp_path / "m.dcm"
    written, _ = export_mask(tmp_path / "m.dcm", mask, image)
    info = DicomSeriesInfo.from_metadata(kwargs["metadata"]["sdnet_dicom"])
    np.testing.assert_array_equal(read_dicom_seg(written, info), mask)
    written, _ = export_mask(tmp_path / "b.dcm", mask, image, binary=True)
    np.testing.assert_array_equal(read_dicom_seg(written, info), np.where(mask == 2, 2, 0))
    # NIfTI export of the same layer is in scanner coordinates
    written, notes = export_mask(tmp_path / "m", mask, image)
    assert written.name == "m.nii.gz" and not notes
    np.testing.assert_allclose(
        nib.load(written).affine, read_dicom(folder).geometry.affine, atol=1e-5
    )
    plain = SimpleNamespace(data=data, name="plain", metadata={}, scale=(1, 1, 1, 1))
    with pytest.raises(InputError, match="not opened from a DICOM series"):
        export_mask(tmp_path / "p.dcm", mask, plain)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def test_the_command_line_process_reads_dicom_with_nibabel_imported_first(
    series, tmp_path, tiny_model_file
):
    """In its own process the command line imports nibabel with pydicom hidden (start-up
    time); DICOM input and output still work there, and nibabel reads NIfTI as usual."""
    import subprocess
    import sys

    folder, _, _ = series
    out = tmp_path / "mask.nii.gz"
    code = (
        "import sys\n"
        "from napari_sdnet.cli import _import_nibabel_without_pydicom, main\n"
        "_import_nibabel_without_pydicom()\n"
        "import nibabel.nifti1\n"
        "assert 'pydicom' not in sys.modules and not nibabel.nifti1.have_dicom\n"
        f"rc = main(['predict', {str(folder)!r}, '-o', {str(out)!r}, '--model', "
        f"{tiny_model_file!r}, '--device', 'cpu', '--engine', 'torch'])\n"
        "import pydicom\n"
        "assert sys.modules['pydicom'] is pydicom and pydicom.Dataset\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    vol = read_dicom(folder)
    np.testing.assert_allclose(nib.load(out).affine, vol.geometry.affine, atol=1e-5)


def test_cli_predict_dicom_folder(series, tmp_path, tiny_model_file, capsys):
    from napari_sdnet.cli import main

    folder, _, _ = series
    out = tmp_path / "mask.nii.gz"
    seg_out = tmp_path / "mask.dcm"
    rc = main(
        [
            "predict",
            str(folder),
            "-o",
            str(out),
            "--model",
            tiny_model_file,
            "--device",
            "cpu",
            "--dicom-seg",
            str(seg_out),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    vol = read_dicom(folder)
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, vol.geometry.affine, atol=1e-5)
    assert img.shape == (COLS, ROWS, 4, 3)
    mask = read_nifti(out).data
    if mask.any():  # the untrained tiny model may find nothing on noise
        np.testing.assert_array_equal(read_dicom_seg(seg_out, vol.dicom), mask)
    else:
        assert "no myocardium found" in captured.err and not seg_out.exists()

    nifti = write_nifti(tmp_path / "img.nii.gz", vol.data, vol.geometry)
    rc = main(
        [
            "predict",
            str(nifti),
            "-o",
            str(tmp_path / "m2.nii.gz"),
            "--model",
            tiny_model_file,
            "--dicom-seg",
            str(tmp_path / "m2.dcm"),
        ]
    )
    assert rc == 2
    assert "--dicom-seg needs a DICOM series" in capsys.readouterr().err


def test_cli_predict_refuses_a_folder_without_dicom(tmp_path, tiny_model_file, capsys):
    from napari_sdnet.cli import main

    (tmp_path / "in").mkdir()
    rc = main(
        [
            "predict",
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / "m.nii.gz"),
            "--model",
            tiny_model_file,
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "no DICOM files" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------------------------
# Sunnybrook SCD0000101: the DICOM series and the NIfTI converted from it
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sunnybrook_dicom(sunnybrook):
    folder = sunnybrook / "dicom" / "SCD0000101"
    if not folder.is_dir():
        pytest.skip(f"Sunnybrook DICOM series not found at {folder}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return folder, read_image(folder), read_nifti(sunnybrook / "SCD0000101_4d.nii.gz")


def _dicom_to_nifti_index(dicom_vol, nifti_vol):
    """The NIfTI voxel index of every DICOM voxel (through both affines), and the largest
    distance from a whole voxel (in voxels)."""
    m = np.linalg.inv(nifti_vol.geometry.affine) @ dicom_vol.geometry.affine
    _, n_z, n_y, n_x = dicom_vol.data.shape
    k, j, i = np.meshgrid(np.arange(n_z), np.arange(n_y), np.arange(n_x), indexing="ij")
    ijk = np.stack([i, j, k, np.ones_like(i)]).reshape(4, -1).astype(float)
    mapped = m @ ijk
    whole = np.rint(mapped)
    return whole[:3].astype(int), float(np.abs(mapped - whole).max())


@pytest.mark.shared_data
def test_sunnybrook_dicom_matches_the_nifti_voxel_for_voxel(sunnybrook_dicom):
    _, dcm, nii = sunnybrook_dicom
    assert dcm.data.shape == nii.data.shape == (20, 12, 256, 256)
    (i, j, k), off = _dicom_to_nifti_index(dcm, nii)
    assert off < 1e-3  # every DICOM voxel centre falls on a NIfTI voxel centre
    file_data = np.asarray(nii.data).T  # (x, y, z, t)
    for t in range(20):
        np.testing.assert_array_equal(
            file_data[i, j, k, t], dcm.data[t].reshape(-1), err_msg=f"phase {t}"
        )
    # same world positions (mm): each DICOM voxel and the NIfTI voxel holding its value
    nifti_index = np.stack([i, j, k, np.ones_like(i)]).astype(float)
    _, n_z, n_y, n_x = dcm.data.shape
    kk, jj, ii = np.meshgrid(np.arange(n_z), np.arange(n_y), np.arange(n_x), indexing="ij")
    dicom_ijk = np.stack([ii, jj, kk, np.ones_like(ii)]).reshape(4, -1).astype(float)
    gap = np.linalg.norm(
        (nii.geometry.affine @ nifti_index - dcm.geometry.affine @ dicom_ijk)[:3], axis=0
    )
    assert gap.max() < 0.01  # mm
    assert dcm.geometry.spacing[1:] == pytest.approx(nii.geometry.spacing[1:], rel=1e-4)
    assert dcm.geometry.spacing[0] == pytest.approx(nii.geometry.spacing[0], rel=0.02)


@pytest.mark.shared_data
@pytest.mark.slow
def test_sunnybrook_predict_same_mask_through_dicom_and_nifti(
    sunnybrook_dicom, sunnybrook, tmp_path, capsys
):
    from napari_sdnet.cli import main

    folder, dcm, nii = sunnybrook_dicom
    out_d, out_n, out_s = tmp_path / "d.nii.gz", tmp_path / "n.nii.gz", tmp_path / "d.dcm"
    assert (
        main(
            ["predict", str(folder), "-o", str(out_d), "--dicom-seg", str(out_s), "--device", "cpu"]
        )
        == 0
    )
    assert (
        main(
            [
                "predict",
                str(sunnybrook / "SCD0000101_4d.nii.gz"),
                "-o",
                str(out_n),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    mask_d = read_nifti(out_d)
    mask_n = read_nifti(out_n)
    np.testing.assert_allclose(mask_d.geometry.affine, dcm.geometry.affine, atol=1e-4)
    (i, j, k), _ = _dicom_to_nifti_index(dcm, nii)
    file_n = np.asarray(mask_n.data).T
    a = np.stack([mask_d.data[t].reshape(-1) for t in range(20)]) == 2
    b = np.stack([file_n[i, j, k, t] for t in range(20)]) == 2
    dice = 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
    print(f"DICOM vs NIfTI route myocardium Dice: {dice:.4f} ({a.sum()} / {b.sum()} voxels)")
    assert a.sum() > 1000
    assert dice >= 0.98
    # the DICOM SEG written by predict holds the same mask
    np.testing.assert_array_equal(read_dicom_seg(out_s, dcm.dicom), mask_d.data)


@pytest.mark.shared_data
def test_sunnybrook_expert_labels_as_dicom_seg(sunnybrook_dicom, sunnybrook, tmp_path):
    """The expert contours, mapped onto the DICOM grid, through a SEG and back."""
    _, dcm, nii = sunnybrook_dicom
    gt = read_nifti(sunnybrook / "SCD0000101_4d_gt.nii.gz")
    (i, j, k), _ = _dicom_to_nifti_index(dcm, nii)
    file_gt = np.asarray(gt.data).T
    labels = np.stack([file_gt[i, j, k, t].reshape(dcm.data.shape[1:]) for t in range(20)])
    assert set(np.unique(labels)) == {0, 2, 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 240 FrameOfReferenceUIDs in this anonymised export
        out = write_dicom_seg(tmp_path / "gt.dcm", labels, dcm.dicom)
        back = read_dicom_seg(out, dcm.dicom)
    np.testing.assert_array_equal(back, labels)


def test_cli_evaluate_dicom_folder_with_its_seg(series, tmp_path, tiny_model_file, capsys):
    from napari_sdnet.cli import main

    folder, _, _ = series
    vol = read_dicom(folder)
    rc = main(["evaluate", "--data", str(folder), "--model", tiny_model_file, "--device", "cpu"])
    assert rc == 2
    assert "no DICOM SEG referencing" in capsys.readouterr().err
    mask = _mask(vol.data.shape)
    write_dicom_seg(folder / "expert.dcm", mask, vol.dicom)
    json_out = tmp_path / "r.json"
    rc = main(
        [
            "evaluate",
            "--data",
            str(folder),
            "--model",
            tiny_model_file,
            "--device",
            "cpu",
            "--json",
            str(json_out),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    import json

    result = json.loads(json_out.read_text())
    assert result["layout"] == "dicom"
    assert [v["volume_id"] for v in result["per_volume"]] == ["cine_t00", "cine_t01", "cine_t02"]
    # the labelled slices are those with myocardium in the SEG
    assert [v["n_slices"] for v in result["per_volume"]] == [3, 4, 4]


def test_measure_reads_a_dicom_series_folder(tmp_path, tiny_model_file, capsys):
    """`measure` takes a DICOM cine folder as it takes a NIfTI cine (issue #18)."""
    from napari_sdnet.cli import main

    folder = tmp_path / "series"
    write_series(folder, n_t=4, n_z=3)
    out = tmp_path / "f.json"
    assert main(["measure", str(folder), "--model", tiny_model_file, "--json", str(out)]) == 0
    import json

    data = json.loads(out.read_text())
    assert "lv_ef_percent" in data and data["ed_frame"] is not None
