"""The headless API (``napari_sdnet.api``): segment, reconstruct, evaluate, fine-tune, load.

All tests use the ``tiny`` preset (64 x 64 at 4 mm) with untrained weights: they check shapes,
geometry, contracts and errors, never segmentation quality.
"""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
import torch

from napari_sdnet import api, models
from napari_sdnet.errors import CheckpointError, InputError
from napari_sdnet.model import SDNet
from napari_sdnet.phantom import make_cine_phantom, write_phantom_nifti
from napari_sdnet.training.checkpoint import CheckpointInfo, save_checkpoint
from napari_sdnet.training.losses import hard_dice
from napari_sdnet.training.trainer import Progress

SPACING_4D = (100.0, 10.0, 2.0, 1.5)


def _tiny_network(seed: int = 0) -> SDNet:
    torch.manual_seed(seed)
    return SDNet("tiny").eval()


@pytest.fixture(scope="module")
def model() -> api.Model:
    return api.Model.from_network(_tiny_network())


@pytest.fixture(scope="module")
def phantom():
    # odd, non-square in-plane grid with anisotropic pixels
    return make_cine_phantom(n_frames=2, n_slices=3, shape=(37, 53), spacing=(2.0, 1.5), seed=1)


def _info(model_type: str = "sdnet") -> CheckpointInfo:
    return CheckpointInfo.for_model(
        SDNet("tiny").config,
        model_type=model_type,
        training={"data": "test"},
        metrics={"val_dice": 0.5},
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, _tiny_network(), _info())
    return str(path)


# --------------------------------------------------------------------------------- segment


@pytest.mark.parametrize("ndim", [2, 3, 4])
def test_segment_shapes_and_ranges(model, phantom, ndim):
    image = phantom.image[(0,) * (4 - ndim)]
    spacing = SPACING_4D[4 - ndim :]
    seg = api.segment(model, image, spacing)
    lead = image.shape[:-2]
    assert seg.shape == image.shape
    assert seg.mask.shape == seg.probability.shape == seg.reconstruction.shape == image.shape
    assert seg.mask.dtype == np.uint8 and set(np.unique(seg.mask)) <= {0, 1}
    assert seg.probability.dtype == np.float32
    assert 0.0 <= seg.probability.min() and seg.probability.max() <= 1.0
    assert np.array_equal(seg.mask, (seg.probability >= 0.5).astype(np.uint8))
    assert seg.z.shape == lead + (16,) and seg.z.dtype == np.float32
    assert np.all((seg.z >= 0) & (seg.z <= 1))
    assert seg.reconstruction.dtype == np.float32
    assert -1.0 <= seg.reconstruction.min() and seg.reconstruction.max() <= 1.0
    for arr in (seg.model_image, seg.model_mask, seg.model_reconstruction):
        assert arr.shape == lead + (64, 64) and arr.dtype == np.float32
    assert seg.grid.in_shape == (37, 53) and seg.grid.in_spacing == (2.0, 1.5)
    assert seg.spacing == (2.0, 1.5) and not seg.spacing_assumed
    assert seg.labels().max() <= 2 and set(np.unique(seg.labels())) <= {0, 2}


def test_segment_in_plane_spacing_equals_full_spacing(model, phantom):
    a = api.segment(model, phantom.image, SPACING_4D)
    b = api.segment(model, phantom.image, SPACING_4D[-2:])
    assert np.array_equal(a.probability, b.probability)
    assert np.array_equal(a.z, b.z)


def test_segment_4d_is_normalised_as_one_study(model, phantom):
    """A 4D study is normalised once (as the training data loaders do), not per frame."""
    seg4 = api.segment(model, phantom.image, SPACING_4D)
    lo, hi = np.percentile(phantom.image, [5, 95])
    assert seg4.grid.intensity_range == pytest.approx((lo, hi), rel=1e-5)


def test_segment_iter_yields_progress_then_result(model, phantom):
    items = list(api.segment_iter(model, phantom.image, SPACING_4D, batch_size=4))
    assert items[:-1] == [(0, 6), (4, 6), (6, 6)]
    assert isinstance(items[-1], api.Segmentation)
    seg = api.run(api.segment_iter(model, phantom.image, SPACING_4D, batch_size=4))
    assert np.array_equal(seg.probability, items[-1].probability)
    calls = []
    api.segment(model, phantom.image, SPACING_4D, batch_size=5, progress=lambda *a: calls.append(a))
    assert calls == [(0, 6), (5, 6), (6, 6)]


def test_batch_size_does_not_change_the_result(model, phantom):
    a = api.segment(model, phantom.image, SPACING_4D, batch_size=1)
    b = api.segment(model, phantom.image, SPACING_4D, batch_size=16)
    np.testing.assert_allclose(a.probability, b.probability, atol=1e-5)


def test_segment_without_spacing_warns_for_volumes_only(model, phantom):
    with pytest.warns(UserWarning, match="no spacing given"):
        seg = api.segment(model, phantom.image[0])
    assert seg.spacing_assumed and seg.spacing == (4.0, 4.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seg2 = api.segment(model, phantom.image[0, 0])
    assert seg2.spacing_assumed


def test_segment_accepts_integer_images(model, phantom):
    image = (phantom.image[0] * 1000).astype(np.int16)
    seg = api.segment(model, image, (10.0, 2.0, 1.5))
    assert seg.mask.shape == image.shape


@pytest.mark.parametrize(
    ("image", "spacing", "match"),
    [
        (np.zeros(50), None, "2D"),
        (np.zeros((2, 2, 2, 20, 20)), None, "4D"),
        (np.full((3, 20, 20), np.nan), (1.0, 1.0), "finite"),
        (np.full((3, 20, 20), 7.0), (1.0, 1.0), "constant"),
        (np.zeros((0, 20, 20)), (1.0, 1.0), "empty"),
        (np.zeros((20, 5)), (1.0, 1.0), "too small"),
        ("rand3d", (1.0, 1.0, 1.0, 1.0), "got 4"),
        ("rand3d", (1.0,), "1"),
        ("rand3d", 1.5, "spacing"),
        ("rand3d", (1.0, 0.0, 1.0), "> 0"),
        ("rand3d", (1.0, -1.0, 1.0), "> 0"),
        ("rand3d", (1.0, float("nan"), 1.0), "> 0"),
        ("rand3d", ("a", "b"), "numbers"),
    ],
)
def test_segment_bad_input(model, image, spacing, match):
    if isinstance(image, str):
        image = np.random.default_rng(0).random((3, 20, 20))
    with pytest.raises(InputError, match=match):
        api.segment(model, image, spacing)


def test_segment_bad_batch_size(model, phantom):
    with pytest.raises(InputError, match="batch_size"):
        api.segment(model, phantom.image, SPACING_4D, batch_size=0)


def test_segment_needs_a_model(phantom):
    with pytest.raises(InputError, match="Model"):
        api.segment("model.safetensors", phantom.image, SPACING_4D)


def test_reconstruction_intensity_is_in_image_units(model, phantom):
    seg = api.segment(model, phantom.image, SPACING_4D)
    lo, hi = seg.grid.intensity_range
    rec = seg.reconstruction_intensity
    assert rec.shape == phantom.image.shape and rec.dtype == np.float32
    assert lo - 1e-4 <= rec.min() and rec.max() <= hi + 1e-4
    np.testing.assert_allclose(
        (rec - lo) / (hi - lo) * 2 - 1, np.clip(seg.reconstruction, -1, 1), atol=1e-4
    )


def test_to_acdc_labels():
    mask = np.array([[0, 1], [1, 0]], np.uint8)
    out = api.to_acdc_labels(mask)
    assert out.dtype == np.uint8 and out.tolist() == [[0, 2], [2, 0]]
    assert api.to_acdc_labels(mask.astype(bool)).tolist() == [[0, 2], [2, 0]]
    with pytest.raises(InputError, match="binary"):
        api.to_acdc_labels(np.array([0, 2, 3]))


# ----------------------------------------------------------------------------- reconstruct


def test_reconstruct_reproduces_segment(model, phantom):
    seg = api.segment(model, phantom.image, SPACING_4D)
    rec = api.reconstruct(model, seg.model_mask, seg.z)
    assert rec.shape == (2, 3, 64, 64) and rec.dtype == np.float32
    np.testing.assert_allclose(rec, seg.model_reconstruction, atol=1e-5)
    # also slice by slice, in another batch size
    one = api.reconstruct(model, seg.model_mask[1, 2], seg.z[1, 2], batch_size=1)
    np.testing.assert_allclose(one, seg.model_reconstruction[1, 2], atol=1e-5)


def test_reconstruct_mixes_and_broadcasts(model, phantom):
    seg = api.segment(model, phantom.image[0], SPACING_4D[1:])
    # the anatomy of slice 0 with the Z of every slice, and every anatomy with one Z
    many_z = api.reconstruct(model, seg.model_mask[0], seg.z)
    assert many_z.shape == (3, 64, 64)
    many_m = api.reconstruct(model, seg.model_mask, seg.z[0])
    assert many_m.shape == (3, 64, 64)
    np.testing.assert_allclose(many_z[0], many_m[0], atol=1e-5)
    with pytest.raises(InputError, match="broadcast"):
        api.reconstruct(model, seg.model_mask, np.zeros((2, 16)))


def test_reconstruct_on_the_original_grid(model, phantom):
    seg = api.segment(model, phantom.image[0], SPACING_4D[1:])
    out = api.reconstruct(model, seg.mask, seg.z, grid=seg.grid)
    assert out.shape == phantom.image[0].shape and out.dtype == np.float32
    by_spacing = api.reconstruct(model, seg.mask, seg.z, spacing=(2.0, 1.5))
    np.testing.assert_allclose(out, by_spacing, atol=1e-6)
    units = api.reconstruct(model, seg.mask, seg.z, grid=seg.grid, denormalise=True)
    lo, hi = seg.grid.intensity_range
    assert lo - 1e-4 <= units.min() and units.max() <= hi + 1e-4
    # painting the whole slice as myocardium changes the image
    full = api.reconstruct(model, np.ones_like(seg.mask), seg.z, grid=seg.grid)
    assert not np.allclose(full, out)


def test_reconstruct_bad_input(model):
    z = np.full(16, 0.5, np.float32)
    with pytest.raises(InputError, match="labels == 2"):
        api.reconstruct(model, np.full((64, 64), 2), z)
    with pytest.raises(InputError, match="model grid"):
        api.reconstruct(model, np.zeros((40, 40)), z)
    with pytest.raises(InputError, match="Z must have shape"):
        api.reconstruct(model, np.zeros((64, 64)), np.zeros(8))
    with pytest.raises(InputError, match="NaN"):
        api.reconstruct(model, np.zeros((64, 64)), np.full(16, np.nan))
    with pytest.raises(InputError, match="grid"):
        api.reconstruct(model, np.zeros((64, 64)), z, denormalise=True)


# ---------------------------------------------------------------------------- load / save


def test_load_model_round_trip(checkpoint, model, phantom):
    loaded = api.load_model(checkpoint, device="cpu")
    assert loaded.info.preset == "tiny" and loaded.model_type == "sdnet"
    assert loaded.source == checkpoint and loaded.device.type == "cpu"
    assert loaded.info.training == {"data": "test"}
    a = api.segment(loaded, phantom.image, SPACING_4D)
    b = api.segment(model, phantom.image, SPACING_4D)
    np.testing.assert_allclose(a.probability, b.probability, atol=1e-6)
    assert "tiny" in repr(loaded)


def test_load_model_warns_for_baselines(tmp_path):
    path = tmp_path / "unet.safetensors"
    save_checkpoint(path, _tiny_network(), _info("unet"))
    with pytest.warns(UserWarning, match="reconstructor"):
        m = api.load_model(path, device="cpu")
    assert not m.has_trained_reconstructor
    with pytest.warns(UserWarning, match="reconstructor"):
        api.reconstruct(m, np.zeros((64, 64)), np.zeros(16))


def test_bundled_model_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "bundled_model_path", lambda: tmp_path / "none.safetensors")
    with pytest.raises(CheckpointError, match="no bundled model is installed yet"):
        api.load_model("bundled", device="cpu")
    with pytest.raises(CheckpointError, match="no bundled model is installed yet"):
        api.load_model(device="cpu")


def test_bundled_model_loads_once_installed(monkeypatch, checkpoint):
    from pathlib import Path

    monkeypatch.setattr(models, "bundled_model_path", lambda: Path(checkpoint))
    m = api.load_model("bundled", device="cpu")
    assert m.source == "bundled" and m.info.preset == "tiny"
    assert models.bundled_model_path().name == Path(checkpoint).name
    monkeypatch.undo()
    assert api.bundled_model_path().name == api.BUNDLED_MODEL
    assert api.bundled_model_path().parent.name == "weights"


def test_load_model_wrong_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(CheckpointError, match="not a napari-sdnet model"):
        api.load_model(junk, device="cpu")
    pt = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, pt)
    with pytest.raises(CheckpointError, match="never loaded"):
        api.load_model(pt, device="cpu")
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a napari-sdnet model"):
        api.load_model(foreign, device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        api.load_model(tmp_path / "missing.safetensors", device="cpu")
    with pytest.raises(CheckpointError, match="folder"):
        api.load_model(tmp_path, device="cpu")


def test_load_model_unknown_device(checkpoint):
    with pytest.raises(InputError, match="device"):
        api.load_model(checkpoint, device="tpu")


# -------------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    write_phantom_nifti(out, n_frames=2, n_slices=3, shape=(37, 53), spacing=(2.0, 1.5), seed=2)
    return out


def test_evaluate_phantom_nifti(model, phantom_dir):
    calls = []
    result = api.evaluate(
        model, phantom_dir / "phantom_4d.nii.gz", progress=lambda *a: calls.append(a)
    )
    assert result.layout == "cine_nifti" and result.split is None
    assert result.n_volumes == 2 and not result.skipped
    assert [v["volume_id"] for v in result.per_volume] == ["phantom_4d_t00", "phantom_4d_t01"]
    for v in result.per_volume:
        assert set(v) >= {"volume_id", "dice", "n_slices"}
        assert 0.0 <= v["dice"] <= 1.0 and v["n_slices"] == 3
    assert len(result.per_slice) == 6
    assert result.mean_myocardium_dice == pytest.approx(
        np.mean([v["dice"] for v in result.per_volume])
    )
    assert calls[0] == (0, None) and calls[-1] == (2, None)
    data = json.loads(json.dumps(result.to_dict()))
    assert {"mean_myocardium_dice", "per_volume", "n_volumes", "model", "split"} <= set(data)
    assert data["n_volumes"] == 2 and data["model"] == "in-memory"


def test_evaluate_dice_is_segment_on_the_native_grid(model, phantom_dir):
    """evaluate() scores exactly what segment() returns for the same study."""
    from napari_sdnet.io.nifti import read_nifti

    image = read_nifti(phantom_dir / "phantom_4d.nii.gz")
    labels = read_nifti(phantom_dir / "phantom_4d_gt.nii.gz").data
    seg = api.segment(model, image.data, image.geometry.spacing)
    result = api.evaluate(model, phantom_dir)  # a folder holding one cine study
    for t, v in enumerate(result.per_volume):
        assert v["dice"] == pytest.approx(hard_dice(seg.mask[t], labels[t] == 2), abs=1e-12)
    first = result.per_slice[0]
    assert first["dice"] == pytest.approx(hard_dice(seg.mask[0, 0], labels[0, 0] == 2))


def test_evaluate_partial_labels_and_records(model, tmp_path):
    from napari_sdnet.io.datasets import iter_cine_nifti

    image, labels = write_phantom_nifti(
        tmp_path, labelled_frames=[1], n_frames=3, n_slices=2, shape=(40, 40), seed=3
    )
    result = api.evaluate(model, image)
    assert [v["volume_id"] for v in result.per_volume] == ["phantom_4d_t01"]
    assert result.skipped == ["phantom_4d_t00", "phantom_4d_t02"]
    records = list(iter_cine_nifti(image, labels, config=model.preprocess))
    again = api.evaluate(model, records)
    assert again.layout == "records"
    assert again.per_volume == result.per_volume
    wrong = list(iter_cine_nifti(image, labels))  # default 224 x 224 grid
    with pytest.raises(InputError, match="config=model.preprocess"):
        api.evaluate(model, wrong)


def test_evaluate_needs_labels(model, tmp_path):
    image, labels = write_phantom_nifti(tmp_path, n_frames=1, n_slices=2, shape=(40, 40))
    labels.unlink()
    with pytest.raises(InputError, match="label file"):
        api.evaluate(model, image)
    with pytest.raises(InputError, match="not found"):
        api.evaluate(model, tmp_path / "nothing_here")


@pytest.mark.shared_data
def test_evaluate_acdc_nifti(model, acdc_nifti):
    from napari_sdnet.io.datasets import iter_acdc_nifti

    result = api.evaluate(model, acdc_nifti / "patient001")
    assert result.layout == "acdc_nifti" and result.n_volumes == 2
    assert [v["volume_id"] for v in result.per_volume] == [
        "patient001_frame01",
        "patient001_frame12",
    ]
    for v in result.per_volume:
        assert 0.0 <= v["dice"] <= 1.0 and v["n_slices"] == 10
    records = iter_acdc_nifti(acdc_nifti, patients=["patient022"], config=model.preprocess)
    other = api.evaluate(model, records)
    assert other.n_volumes == 2 and len(other.per_slice) == sum(
        v["n_slices"] for v in other.per_volume
    )
    json.dumps(other.to_dict())


@pytest.mark.shared_data
def test_evaluate_acdc_h5_test_split(model, acdc_h5):
    from napari_sdnet.io.datasets import iter_acdc_h5

    records = itertools.islice(iter_acdc_h5(acdc_h5, "test", config=model.preprocess), 2)
    result = api.evaluate(model, records)
    assert result.n_volumes == 2
    assert all(v["volume_id"].startswith("patient") for v in result.per_volume)
    assert all(0.0 <= v["dice"] <= 1.0 for v in result.per_volume)
    assert np.isfinite(result.mean_myocardium_dice) and np.isfinite(result.std)


@pytest.mark.shared_data
def test_evaluate_acdc_h5_path_reports_split(model, acdc_h5):
    calls = []
    result = api.evaluate(
        model, acdc_h5, split="val", h5_spacing=8.0, progress=lambda *a: calls.append(a)
    )
    assert result.layout == "acdc_h5" and result.split == "val"
    assert result.n_volumes == 20 and calls[-1] == (20, 20)
    assert result.to_dict()["split"] == "val"


def test_evaluate_h5_assumes_the_spacing_the_model_was_trained_with(monkeypatch, tmp_path):
    """H5 files store no spacing: evaluation reuses the one recorded at training."""
    import napari_sdnet.io.datasets as ds

    seen = []

    def fake_iter(path, split, config, spacing):
        seen.append(spacing)
        return iter(())

    monkeypatch.setattr(ds, "iter_acdc_h5", fake_iter)
    monkeypatch.setattr(ds, "detect_layout", lambda path: "acdc_h5")
    monkeypatch.setattr(ds, "read_acdc_split", lambda path: {"test": []})
    for recorded, given, expected in ((1.5, None, 1.5), (1.5, 2.0, 2.0), (None, None, None)):
        info = _info()
        info.training = {"h5_spacing": recorded}
        m = api.Model.from_network(_tiny_network(), info)
        try:
            api.evaluate(m, tmp_path, split="test", h5_spacing=given)
        except Exception:  # no volumes: only the spacing handed to the loader matters here
            pass
        assert seen[-1] == expected


# -------------------------------------------------------------------------------- finetune


def _state(network: SDNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def test_finetune_returns_a_new_model_and_keeps_the_original(phantom, tmp_path):
    base = api.Model.from_network(_tiny_network(), _info(), source="base.safetensors")
    before = _state(base.network)
    labels = phantom.labels.copy()
    labels[1] = 0  # only frame 0 painted: 3 labelled slices, 3 unlabelled
    gen = api.finetune(base, phantom.image, labels, SPACING_4D, steps=3)
    reports = []
    while True:
        try:
            reports.append(next(gen))
        except StopIteration as stop:
            new = stop.value
            break
    assert all(isinstance(p, Progress) for p in reports)
    assert reports[-1].done and reports[-1].iteration == 3
    assert isinstance(new, api.Model) and new is not base and new.network is not base.network
    after = _state(base.network)
    assert all(torch.equal(before[k], after[k]) for k in before)
    changed = _state(new.network)
    assert any(not torch.equal(before[k], changed[k]) for k in before)
    assert not new.network.training
    record = new.info.training["finetuned"][-1]
    assert record["base_model"] == "base.safetensors"
    assert record["labelled_slices"] == 3 and record["unlabelled_slices"] == 3
    assert record["steps"] == 3 and record["seconds"] > 0
    assert record["base_metrics"] == {"val_dice": 0.5}
    assert new.info.training["data"] == "test" and new.info.metrics == {}
    # the new model saves, loads and segments
    path = new.save(tmp_path / "new.safetensors")
    again = api.load_model(path, device="cpu")
    assert again.info.training["finetuned"][-1]["steps"] == 3
    assert api.segment(again, phantom.image, SPACING_4D).mask.shape == phantom.image.shape
    # fine-tuning the fine-tuned model appends to the history
    newer = api.run(api.finetune(again, phantom.image, labels, SPACING_4D, steps=1))
    assert len(newer.info.training["finetuned"]) == 2


def test_finetune_2d_and_stop(model, phantom):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return True

    gen = api.finetune(
        model, phantom.image[0, 1], phantom.labels[0, 1], (2.0, 1.5), steps=50, stop=stop
    )
    new = api.run(gen)
    record = new.info.training["finetuned"][-1]
    assert record["steps"] == 1 and record["labelled_slices"] == 1 and len(calls) == 1


def test_finetune_freeze_keeps_those_weights(model, phantom):
    new = api.run(
        api.finetune(
            model, phantom.image, phantom.labels, SPACING_4D, steps=2, freeze=("reconstructor",)
        )
    )
    old, fresh = _state(model.network), _state(new.network)
    rec = [k for k in old if k.startswith("reconstructor.") and "running" not in k]
    dec = [k for k in old if k.startswith("decomposer.") and "running" not in k]
    assert all(torch.equal(old[k], fresh[k]) for k in rec)
    assert any(not torch.equal(old[k], fresh[k]) for k in dec)


def test_finetune_leaves_out_the_mask_adversarial_terms(model, phantom, monkeypatch):
    """D_M would see only the painted masks as real: fine-tuning neither uses nor trains it."""
    from napari_sdnet.training import trainer as trainer_module

    seen = []
    real_train = trainer_module.train

    def spy(network, data, config):
        seen.append(config)
        return real_train(network, data, config)

    monkeypatch.setattr(trainer_module, "train", spy)
    new = api.run(api.finetune(model, phantom.image, phantom.labels, SPACING_4D, steps=2))
    (config,) = seen
    assert config.weights.adv_mask == 0 and config.weights.unl_adv_mask == 0
    assert config.weights.recon == api.finetune_loss_weights().recon > 0  # still semi-supervised
    assert config.weights.unl_recon > 0 and config.lr == api.FINETUNE_LR
    old, fresh = _state(model.network), _state(new.network)
    d_m = [k for k in old if k.startswith("mask_discriminator.")]
    d_x = [k for k in old if k.startswith("image_discriminator.")]
    assert d_m and all(torch.equal(old[k], fresh[k]) for k in d_m)
    assert any(not torch.equal(old[k], fresh[k]) for k in d_x)


def test_finetune_without_painted_myocardium(model, phantom):
    with pytest.raises(InputError, match=r"no slice has myocardium \(label 2\) painted"):
        api.run(api.finetune(model, phantom.image, np.zeros_like(phantom.labels), steps=1))
    binary = (phantom.labels == 2).astype(np.uint8)  # painted with 1 instead of 2
    with pytest.raises(InputError, match=r"values \[0, 1\].*label 2"):
        api.run(api.finetune(model, phantom.image, binary, SPACING_4D, steps=1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "budget"),
        ({"steps": 0}, "steps"),
        ({"seconds": -1.0}, "seconds"),
        ({"steps": 1, "lr": 0.0}, "lr"),
    ],
)
def test_finetune_bad_arguments(model, phantom, kwargs, match):
    with pytest.raises(InputError, match=match):
        api.run(api.finetune(model, phantom.image, phantom.labels, SPACING_4D, **kwargs))


def test_finetune_labels_must_match_the_image(model, phantom):
    with pytest.raises(InputError, match="shape"):
        api.run(api.finetune(model, phantom.image, phantom.labels[0], SPACING_4D, steps=1))
    with pytest.raises(InputError, match="whole numbers"):
        api.run(api.finetune(model, phantom.image, phantom.labels + 0.5, SPACING_4D, steps=1))


def test_finetune_model_saved_without_discriminators(phantom, tmp_path):
    small = api.Model.from_network(_tiny_network(), _info()).save(
        tmp_path / "small.safetensors", include_discriminators=False
    )
    model = api.load_model(small, device="cpu")
    assert not model.info.has_discriminators
    with pytest.warns(UserWarning, match="no discriminators"):
        new = api.run(api.finetune(model, phantom.image, phantom.labels, SPACING_4D, steps=1))
    assert new.info.has_discriminators
