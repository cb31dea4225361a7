"""Bundled sample data and phantom, through npe2 in a real viewer."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from napari_sdnet.sample import sunnybrook_study

PLUGIN = "napari-sdnet"


def test_sample_files_are_small_and_consistent():
    study = sunnybrook_study()
    size_mb = (study.image.stat().st_size + study.labels.stat().st_size) / 1e6
    assert size_mb <= 6.0
    image, labels = nib.load(study.image), nib.load(study.labels)
    assert image.shape == labels.shape == (144, 144, 12, 20)
    np.testing.assert_allclose(image.affine, labels.affine)
    assert image.header.get_zooms() == labels.header.get_zooms()
    assert float(image.header.get_zooms()[3]) == 37.5
    lab = np.asarray(labels.dataobj)
    # Every listed (z, t) frame has myocardium; no other frame has any.
    listed = set(study.labelled_frames())
    assert len(listed) == 9
    has_myo = {(z, t) for z in range(lab.shape[2]) for t in range(lab.shape[3])
               if (lab[:, :, z, t] == 2).any()}
    assert has_myo == listed
    info = json.loads(study.labelled_json.read_text())
    assert info["shape_xyzt"] == [144, 144, 12, 20]


def test_open_sunnybrook_sample_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "sunnybrook")
    assert [layer._type_string for layer in layers] == ["image", "labels"]
    image, labels = layers
    assert image.data.shape == labels.data.shape == (20, 12, 144, 144)
    np.testing.assert_allclose(image.scale, labels.scale)
    np.testing.assert_allclose(image.scale, [37.5, 10.0, 1.3671875, 1.3671875], rtol=1e-5)
    assert "sdnet_geometry" in image.metadata and "sdnet_geometry" in labels.metadata
    assert set(np.unique(labels.data)) == {0, 2, 3}


def test_open_phantom_sample_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = viewer.open_sample(PLUGIN, "phantom")
    assert image.data.shape == labels.data.shape
    assert image.data.ndim == 4
    assert set(np.unique(labels.data)) == {0, 1, 2, 3}
    np.testing.assert_allclose(image.scale, labels.scale)


def test_sample_labels_save_back_aligned(make_napari_viewer, tmp_path):
    """The sample's contours saved through the plugin's writer keep the study's geometry."""
    viewer = make_napari_viewer()
    _, labels = viewer.open_sample(PLUGIN, "sunnybrook")
    out = tmp_path / "contours.nii.gz"
    viewer.layers.selection = {labels}
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    written = nib.load(out)
    source = nib.load(sunnybrook_study().labels)
    np.testing.assert_allclose(written.affine, source.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(source.dataobj))
