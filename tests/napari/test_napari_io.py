"""npe2 reader and writer, through a real napari viewer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_sdnet._napari._reader import get_reader, read_layers, robust_contrast_limits
from napari_sdnet._napari._writer import write_labels
from napari_sdnet.errors import InputError
from napari_sdnet.io.nifti import Geometry, read_nifti

PLUGIN = "napari-sdnet"


def oblique_affine() -> np.ndarray:
    """Rotated about z and x, flipped x, 1.25 x 1.25 x 8 mm voxels."""
    a, b = np.deg2rad(30.0), np.deg2rad(15.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([-1.25, 1.25, 8.0])
    affine[:3, 3] = [10.0, -20.0, 35.5]
    return affine


def make_pair(folder: Path, *, four_d: bool = False, gt_time_step: float | None = None):
    """An int16 image and its uint8 ``_gt`` label map on the same oblique grid."""
    rng = np.random.default_rng(3)
    shape = (24, 20, 5, 6) if four_d else (24, 20, 5)  # (x, y, z[, t])
    image = rng.integers(0, 800, size=shape).astype(np.int16)
    labels = np.zeros(shape, np.uint8)
    labels[6:14, 5:12, 1:4] = 1
    labels[8:12, 7:10, 1:4] = 2
    paths = []
    for name, arr, step in (
        ("case.nii.gz", image, 40.0),
        ("case_gt.nii.gz", labels, gt_time_step or 40.0),
    ):
        img = nib.Nifti1Image(arr, oblique_affine())
        img.set_data_dtype(arr.dtype)
        img.header.set_xyzt_units("mm", "msec")
        if four_d:
            img.header.set_zooms((*img.header.get_zooms()[:3], step))
        nib.save(img, str(folder / name))
        paths.append(folder / name)
    return paths


# --------------------------------------------------------------------------------------------
# get_reader / reader function without a viewer
# --------------------------------------------------------------------------------------------
def test_get_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder.nii").mkdir()
    assert get_reader(str(tmp_path / "a.png")) is None
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path)) is None
    assert get_reader(str(tmp_path / "folder.nii")) is None
    assert get_reader([str(tmp_path / "x.nii.gz"), str(tmp_path / "a.png")]) is None
    assert get_reader([]) is None
    assert get_reader(".nii.gz") is None
    assert get_reader(str(tmp_path / "x.nii.gz")) is read_layers
    assert get_reader([str(tmp_path / "x.nii"), str(tmp_path / "y.NII.GZ")]) is read_layers


def test_reader_function_raises_input_error_for_corrupt_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b truncated")
    reader = get_reader(str(bad))
    assert reader is not None
    with pytest.raises(InputError, match="broken.nii.gz"):
        reader(str(bad))


def test_layer_data_tuples(tmp_path):
    image_path, gt_path = make_pair(tmp_path)
    layers = read_layers([str(gt_path), str(image_path)])
    assert [layer[2] for layer in layers] == ["image", "labels"]  # labels listed last
    (img, img_kw, _), (lab, lab_kw, _) = layers
    assert img.shape == lab.shape == (5, 20, 24)
    assert img_kw["name"] == "case" and lab_kw["name"] == "case_gt"
    assert img_kw["scale"] == lab_kw["scale"] == pytest.approx((8.0, 1.25, 1.25))
    assert img_kw["colormap"] == "gray"
    lo, hi = img_kw["contrast_limits"]
    assert 0 <= lo < hi <= 800
    assert lab.dtype == np.uint8
    geom = Geometry.from_metadata(lab_kw["metadata"]["sdnet_geometry"])
    np.testing.assert_allclose(geom.affine, oblique_affine(), atol=1e-5)
    assert lab_kw["metadata"]["source_path"] == str(gt_path)


def test_robust_contrast_limits_edge_cases():
    assert robust_contrast_limits(np.full((3, 3), 5.0)) == [5.0, 6.0]
    assert robust_contrast_limits(np.zeros(0)) == [0.0, 1.0]
    data = np.zeros(1000)
    data[-1] = 10.0
    assert robust_contrast_limits(data) == [0.0, 10.0]


# --------------------------------------------------------------------------------------------
# through a real viewer
# --------------------------------------------------------------------------------------------
def test_open_image_and_gt_overlay(make_napari_viewer, tmp_path):
    image_path, gt_path = make_pair(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(image_path), plugin=PLUGIN)
    viewer.open(str(gt_path), plugin=PLUGIN)
    image, labels = viewer.layers["case"], viewer.layers["case_gt"]
    assert image._type_string == "image" and labels._type_string == "labels"
    assert image.data.shape == labels.data.shape == (5, 20, 24)
    np.testing.assert_array_equal(image.scale, labels.scale)
    np.testing.assert_allclose(image.scale, (8.0, 1.25, 1.25))
    np.testing.assert_array_equal(image.extent.world, labels.extent.world)
    assert image.colormap.name == "gray"
    assert "sdnet_geometry" in image.metadata and "sdnet_geometry" in labels.metadata


def test_4d_gt_with_other_time_step_overlays_its_image(make_napari_viewer, tmp_path):
    image_path, gt_path = make_pair(tmp_path, four_d=True, gt_time_step=1.0)
    viewer = make_napari_viewer()
    viewer.open(str(image_path), plugin=PLUGIN)
    with pytest.warns(UserWarning, match="time step"):
        viewer.open(str(gt_path), plugin=PLUGIN)
    image, labels = viewer.layers["case"], viewer.layers["case_gt"]
    assert image.data.shape == labels.data.shape == (6, 5, 20, 24)
    np.testing.assert_array_equal(image.scale, labels.scale)
    assert image.scale[0] == pytest.approx(40.0)
    # the label file's own header stays in the metadata
    assert labels.metadata["sdnet_geometry"]["spacing"][0] == pytest.approx(1.0)


@pytest.mark.parametrize("four_d", [False, True])
def test_save_labels_layer_round_trip(make_napari_viewer, tmp_path, four_d):
    image_path, _ = make_pair(tmp_path, four_d=four_d)
    viewer = make_napari_viewer()
    viewer.open(str(image_path), plugin=PLUGIN)
    image = viewer.layers["case"]
    mask = (image.data > 600).astype(np.int32) * 2  # napari labels are often int32
    labels = viewer.add_labels(mask, name="mask", scale=image.scale, metadata=image.metadata)
    viewer.layers.selection = {labels}

    out = tmp_path / "mask.nii.gz"
    written = viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    assert written == [str(out)]
    back = read_nifti(out)
    assert back.is_labels and back.data.dtype == np.uint8
    np.testing.assert_array_equal(back.data, mask)
    np.testing.assert_array_equal(nib.load(out).affine, nib.load(image_path).affine)
    assert nib.load(out).header.get_zooms() == nib.load(image_path).header.get_zooms()

    # napari confirms overwriting itself; the writer then replaces the file
    labels.data = np.zeros_like(mask)
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    assert read_nifti(out).data.max() == 0
    assert not [p for p in tmp_path.iterdir() if "sdnet-tmp" in p.name]


def test_npe2_write_layers_without_geometry_warns(tmp_path):
    from npe2 import write

    data = np.zeros((4, 6, 7), np.uint8)
    data[1, 2, 3] = 5
    meta = {"name": "drawn", "scale": (10.0, 1.5, 1.25), "metadata": {}}
    with pytest.warns(UserWarning, match="no source geometry"):
        written = write(str(tmp_path / "drawn"), [(data, meta, "labels")], plugin_name=PLUGIN)
    assert written == [str(tmp_path / "drawn.nii.gz")]
    img = nib.load(written[0])
    np.testing.assert_allclose(img.affine, np.diag([1.25, 1.5, 10.0, 1.0]))
    np.testing.assert_array_equal(read_nifti(written[0]).data, data)


def test_writer_refuses_mask_of_wrong_shape(tmp_path):
    image_path, _ = make_pair(tmp_path)
    geometry = read_nifti(image_path).geometry
    meta = {"metadata": {"sdnet_geometry": geometry.to_metadata()}, "scale": (1, 1)}
    with pytest.raises(InputError, match="does not match"):
        write_labels(str(tmp_path / "m.nii.gz"), np.zeros((20, 24), np.uint8), meta)


def test_npe2_manifest_validates():
    npe2_script = Path(sys.executable).with_name("npe2")
    cmd = [str(npe2_script)] if npe2_script.exists() else [sys.executable, "-m", "npe2"]
    result = subprocess.run([*cmd, "validate", PLUGIN], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_reader_and_writer_commands_import():
    import importlib

    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    for command in ("napari-sdnet.get_reader", "napari-sdnet.write_labels"):
        module, attr = pm.get_command(command).python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr))


# --------------------------------------------------------------------------------------------
# real data (skipped when ../shared/data is absent)
# --------------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_acdc_image_and_gt_in_viewer(make_napari_viewer, acdc_nifti):
    folder = acdc_nifti / "patient001"
    viewer = make_napari_viewer()
    viewer.open(
        [str(folder / "patient001_frame01.nii.gz"), str(folder / "patient001_frame01_gt.nii.gz")],
        plugin=PLUGIN,
    )
    image = viewer.layers["patient001_frame01"]
    labels = viewer.layers["patient001_frame01_gt"]
    assert labels._type_string == "labels"
    assert image.data.shape == labels.data.shape == (10, 256, 216)
    np.testing.assert_array_equal(image.scale, labels.scale)
    np.testing.assert_allclose(image.scale, (10.0, 1.5625, 1.5625))


@pytest.mark.shared_data
def test_sunnybrook_4d_layers(sunnybrook):
    with pytest.warns(UserWarning, match="time step"):
        layers = read_layers(
            [str(sunnybrook / "SCD0000101_4d.nii.gz"), str(sunnybrook / "SCD0000101_4d_gt.nii.gz")]
        )
    (img, img_kw, img_type), (lab, lab_kw, lab_type) = layers
    assert (img_type, lab_type) == ("image", "labels")
    assert img.shape == lab.shape == (20, 12, 256, 256)
    assert img_kw["scale"][0] == pytest.approx(37.5)
    # the _gt header says pixdim[4] = 1; it is shown with its image's time step
    assert lab_kw["scale"] == img_kw["scale"]
