"""The bundled pretrained model: installed, small, and segments real data out of the box."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_sdnet import api
from napari_sdnet.io.nifti import read_nifti
from napari_sdnet.sample import sunnybrook_study
from napari_sdnet.training.losses import hard_dice


@pytest.fixture(scope="module")
def bundled():
    return api.load_model("bundled", device="cpu")


def test_bundled_model_is_installed_and_small(bundled):
    path = api.bundled_model_path()
    assert path.is_file() and path.stat().st_size <= 25e6
    info = bundled.info
    assert info.preset == "compact" and info.model_type == "sdnet"
    assert info.has_discriminators  # fine-tuning uses the adversarial losses
    assert info.training["data"] == "acdc_h5" and info.training["h5_spacing"] == 1.5
    assert 0.8 <= info.metrics["val_dice"] <= 1.0


@pytest.fixture(scope="module")
def sample_segmentation(bundled):
    study = sunnybrook_study()
    vol = read_nifti(study.image)
    return vol, api.segment(bundled, vol.data, vol.geometry.spacing), study


def test_bundled_model_segments_the_sample_study(sample_segmentation):
    """The CC0 sample (another site and vendor than ACDC) against its expert contours."""
    vol, seg, study = sample_segmentation
    gt = read_nifti(study.labels).data
    frames = study.labelled_frames()
    pred = np.stack([seg.mask[t, z] > 0 for z, t in frames])
    ref = np.stack([gt[t, z] == 2 for z, t in frames])
    assert hard_dice(pred, ref) >= 0.6


@pytest.mark.shared_data
def test_bundled_model_through_predict_on_acdc(acdc_nifti, tmp_path):
    """`napari-sdnet predict` with the bundled model on a raw ACDC test patient."""
    from napari_sdnet.cli import main

    image = acdc_nifti / "patient001" / "patient001_frame01.nii.gz"
    out = tmp_path / "mask.nii.gz"
    assert main(["predict", str(image), "-o", str(out), "--device", "cpu"]) == 0
    pred, ref = nib.load(out), nib.load(image.with_name("patient001_frame01_gt.nii.gz"))
    np.testing.assert_allclose(pred.affine, ref.affine)
    assert hard_dice(np.asarray(pred.dataobj) == 2, np.asarray(ref.dataobj) == 2) >= 0.8
