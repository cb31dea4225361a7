"""Models of several structures (RV cavity, myocardium, LV cavity) through segmentation,
evaluation, the predict command and cardiac function; myocardium-only models unchanged."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_sdnet import api
from napari_sdnet.cli import main
from napari_sdnet.model import SDNet, get_preset
from napari_sdnet.phantom import make_phantom_volume, write_phantom_nifti
from napari_sdnet.segmentation import structure_labels

THREE = ("rv", "myocardium", "lv")


@pytest.fixture(scope="module")
def three_model_file(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("three") / "three.safetensors"
    net = SDNet(get_preset("tiny").replace(structures=THREE)).eval()
    api.Model.from_network(net).save(path)
    return path


def test_structure_labels_take_the_most_likely_class_ties_to_background():
    p = np.zeros((3, 1, 4), np.float32)
    p[:, 0, 0] = [0.6, 0.2, 0.1]  # RV wins
    p[:, 0, 1] = [0.1, 0.5, 0.3]  # myocardium wins
    p[:, 0, 2] = [0.0, 0.3, 0.4]  # LV wins over background 0.3
    p[:, 0, 3] = [0.25, 0.25, 0.0]  # background 0.5 wins
    assert structure_labels(p, THREE).tolist() == [[1, 2, 3, 0]]
    one = np.asarray([[[0.7, 0.5, 0.3]]], np.float32)  # the paper's rule: p > 0.5, ties out
    assert structure_labels(one, ("myocardium",)).tolist() == [[2, 0, 0]]


def test_a_three_structure_model_segments_acdc_labels(three_model_file):
    model = api.load_model(three_model_file, "cpu")
    vol = make_phantom_volume(n_slices=3, shape=(70, 60), spacing=(1.6, 1.6))
    seg = api.segment(model, vol.image, vol.spacing, precision="fp32")
    labels = seg.labels()
    assert seg.structures == THREE and labels.shape == vol.image.shape
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert np.array_equal(seg.mask, (labels == 2).astype(np.uint8))
    assert seg.probability.shape == vol.image.shape
    assert seg.model_mask.shape == (3, 3, *seg.model_image.shape[-2:])
    assert seg.reconstruction.shape == vol.image.shape  # g(M, Z) with a 3-channel M
    # evaluation reports every structure
    result = api.evaluate(model, [])  # nothing to evaluate: empty, not an error
    assert result.n_volumes == 0 and result.mean_structure_dice() == {}


def test_predict_writes_every_structure_or_the_myocardium_alone(three_model_file, tmp_path, capsys):
    image, labels = write_phantom_nifti(
        tmp_path / "cine", n_frames=1, n_slices=3, shape=(80, 80), spacing=(1.5, 1.5)
    )
    out = tmp_path / "m.nii.gz"
    base = ["predict", str(image), "--model", str(three_model_file), "--precision", "fp32"]
    assert main([*base, "-o", str(out)]) == 0
    assert "ACDC labels: 1 RV cavity, 2 myocardium, 3 LV cavity" in capsys.readouterr().out
    written = np.asarray(nib.load(out).dataobj)
    seg = api.segment(
        api.load_model(three_model_file, "cpu"),
        np.asarray(nib.load(image).dataobj, np.float32).T,
        nib.load(image).header.get_zooms()[::-1],
        precision="fp32",
    )
    assert np.array_equal(written.T, seg.labels())
    only = tmp_path / "myo.nii.gz"
    assert main([*base, "-o", str(only), "--myocardium-only"]) == 0
    assert set(np.unique(np.asarray(nib.load(only).dataobj))) <= {0, 2}
    assert np.array_equal(np.asarray(nib.load(only).dataobj) == 2, written == 2)


def test_evaluate_reports_each_structure(three_model_file, tmp_path, capsys):
    image, _ = write_phantom_nifti(
        tmp_path / "cine", n_frames=1, n_slices=3, shape=(80, 80), spacing=(1.5, 1.5)
    )
    model = api.load_model(three_model_file, "cpu")
    result = api.evaluate(model, image)
    assert result.n_volumes >= 1
    per = result.per_volume[0]["dice_structures"]
    assert set(per) == set(THREE) and all(0.0 <= v <= 1.0 for v in per.values())
    assert set(result.mean_structure_dice()) == set(THREE)
    assert main(["evaluate", "--data", str(image), "--model", str(three_model_file)]) == 0
    assert "mean lv Dice" in capsys.readouterr().out


def test_a_myocardium_only_model_says_so(tiny_model_file, tmp_path, capsys):
    image, _ = write_phantom_nifti(
        tmp_path / "cine", n_frames=1, n_slices=2, shape=(80, 80), spacing=(1.5, 1.5)
    )
    out = tmp_path / "m.nii.gz"
    assert main(["predict", str(image), "--model", tiny_model_file, "-o", str(out)]) == 0
    assert "this model segments the myocardium only" in capsys.readouterr().out
    assert set(np.unique(np.asarray(nib.load(out).dataobj))) <= {0, 2}
