"""Models of several structures (RV cavity, myocardium, LV cavity) through segmentation,
evaluation, the predict command and cardiac function; myocardium-only models unchanged."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_sdnet import api
from napari_sdnet.cli import main
from napari_sdnet.errors import InputError
from napari_sdnet.phantom import make_phantom_volume, write_phantom_nifti
from napari_sdnet.segmentation import structure_labels

THREE = ("rv", "myocardium", "lv")


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


# ------------------------------------------------------ a three-channel M: g(M, Z) and mixing
@pytest.fixture(scope="module")
def three_sdnet(three_model_file):
    return api.load_model(three_model_file, "cpu")


@pytest.fixture(scope="module")
def three_seg(three_sdnet):
    vol = make_phantom_volume(n_slices=4, shape=(70, 60), spacing=(1.6, 1.6))
    return vol, api.segment(three_sdnet, vol.image, vol.spacing, precision="fp32")


def test_reconstruct_takes_one_channel_per_structure(three_sdnet, three_seg):
    vol, seg = three_seg
    masks = api.structure_masks(seg.labels(), THREE)
    assert masks.shape == (4, 3, *vol.image.shape[-2:]) and masks.dtype == np.float32
    assert np.array_equal(masks[:, 1] == 1, seg.labels() == 2)
    assert masks.sum(axis=1).max() <= 1  # exclusive structures
    on_input = api.reconstruct(three_sdnet, masks, seg.z, grid=seg.grid, precision="fp32")
    assert on_input.shape == vol.image.shape
    # the segmentation's own M and Z give back its reconstruction
    again = api.reconstruct(three_sdnet, seg.model_mask, seg.z, precision="fp32")
    np.testing.assert_allclose(again, seg.model_reconstruction, atol=1e-5)
    with pytest.raises(InputError, match="3 channels"):
        api.reconstruct(three_sdnet, seg.model_mask[:, 1], seg.z)


def test_latent_mixing_and_figure3_with_a_three_channel_m(three_sdnet, three_seg):
    vol, _ = three_seg
    seg = api.segment(three_sdnet, vol.image, vol.spacing)  # the precision mix() uses (auto)
    a, b = api.latent_slice(seg, 1), api.latent_slice(seg, 2)
    size = seg.model_image.shape[-1]
    assert a.mask.shape == a.hard_mask.shape == (3, size, size)
    assert a.hard_mask.sum(axis=0).max() <= 1
    # what g sees, as one picture: channel number / 3 (0 background)
    assert set(np.round(np.unique(a.mask_image) * 3).astype(int)) <= {0, 1, 2, 3}
    own = api.mix(three_sdnet, a, a)
    np.testing.assert_allclose(own, a.reconstruction, atol=1e-4)
    assert not np.allclose(api.mix(three_sdnet, None, a), own)  # the null mask changes it
    assert not np.allclose(api.mix(three_sdnet, b, a), own)  # so does another slice's M
    fig = api.figure3(three_sdnet, seg, 1, 2)
    assert fig.images.shape == (2, 6, size, size)
    np.testing.assert_array_equal(fig.panel(0, "mask M"), a.mask_image)
    with pytest.raises(InputError, match="model-grid slice"):
        api.mix(three_sdnet, a.mask[1], a)


# ------------------------------------------------------------ fine-tuning on the three labels
def test_finetune_learns_every_painted_structure(three_sdnet):
    vol = make_phantom_volume(n_slices=4, shape=(70, 60), spacing=(1.6, 1.6))
    painted = np.zeros_like(vol.labels)
    painted[1:3] = vol.labels[1:3]
    new = api.run(
        api.finetune(three_sdnet, vol.image, painted, vol.spacing, steps=30, lr=3e-3, seed=0)
    )
    record = new.info.training["finetuned"][-1]
    assert new.config.structures == THREE and record["labelled_slices"] == 2
    assert record["painted_dice_after"] > record["painted_dice_before"] + 0.05
    assert api.segment(new, vol.image, vol.spacing).labels().shape == vol.image.shape


def test_finetune_counts_a_slice_where_only_a_cavity_is_painted(three_sdnet):
    vol = make_phantom_volume(n_slices=3, shape=(70, 60), spacing=(1.6, 1.6))
    painted = np.zeros_like(vol.labels)
    painted[1][vol.labels[1] == 3] = 3  # the LV cavity alone, on one slice
    new = api.run(api.finetune(three_sdnet, vol.image, painted, vol.spacing, steps=2))
    assert new.info.training["finetuned"][-1]["labelled_slices"] == 1


def test_finetune_names_the_three_labels_when_none_is_painted(three_sdnet):
    vol = make_phantom_volume(n_slices=2, shape=(70, 60), spacing=(1.6, 1.6))
    wrong = np.full(vol.image.shape, 4, np.uint8)
    with pytest.raises(InputError, match=r"labels 1, 2, 3.*values \[4\]"):
        api.run(api.finetune(three_sdnet, vol.image, wrong, vol.spacing, steps=2))


def test_info_names_what_a_model_segments(three_model_file, tiny_model_file, capsys):
    assert main(["info", str(three_model_file)]) == 0
    out = capsys.readouterr().out
    assert "segments       : RV cavity (1), myocardium (2), LV cavity (3)" in out
    assert main(["info", str(tiny_model_file)]) == 0
    assert "segments       : myocardium (2)\n" in capsys.readouterr().out
