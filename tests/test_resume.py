"""Resumable training: snapshots of the trainer, the saved state file, ``train_model`` stopped
and continued, periodic saves, and the refusals (other settings, a forgotten state)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sdnet.errors import CheckpointError, InputError, TrainingError
from napari_sdnet.model import SDNet
from napari_sdnet.phantom import make_phantom_volume
from napari_sdnet.preprocess import PreprocessConfig, preprocess_labels, preprocess_volume
from napari_sdnet.training.checkpoint import (
    load_checkpoint,
    load_train_state,
    read_checkpoint_info,
    save_train_state,
    train_state_path,
)
from napari_sdnet.training.recipe import train_model
from napari_sdnet.training.trainer import AugmentConfig, Resume, TrainConfig, TrainData, train

SIZE = 64


@pytest.fixture(scope="module")
def data() -> TrainData:
    xs, ms = [], []
    for seed, phase in ((0, 0.0), (1, 0.5)):
        vol = make_phantom_volume(phase=phase, n_slices=5, seed=seed)
        x, grid = preprocess_volume(vol.image, vol.spacing, PreprocessConfig(2.5, SIZE))
        xs.append(x)
        ms.append((preprocess_labels(vol.labels, grid) == 2).astype(np.uint8))
    x, m = np.concatenate(xs), np.concatenate(ms)
    ids = ["a"] * 5 + ["b"] * 5
    return TrainData(
        labelled_images=x[:3],
        labelled_masks=m[:3],
        unlabelled_images=x[3:8],
        val_images=x[8:],
        val_masks=m[8:],
        val_volume_ids=ids[8:],
    )


def _config(iterations: int, mr: bool = False) -> TrainConfig:
    # sdnet with every term, augmentation, pools and a cosine rate: all the state there is
    return TrainConfig(
        max_iterations=iterations,
        iterations_per_epoch=2,
        lr=1e-3,
        lr_schedule="cosine",
        augment=AugmentConfig(mr=mr, mr_probability=3.0 if mr else 1.0),
    )


def _model() -> SDNet:
    torch.manual_seed(0)
    return SDNet("tiny")


def _assert_same_weights(a: SDNet, b: SDNet) -> None:
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), key


@pytest.mark.parametrize("mr", [False, True], ids=["augment", "scanner-augment"])
def test_a_resumed_run_continues_exactly_as_an_uninterrupted_one(data, tmp_path, mr):
    straight = _model()
    reports = list(train(straight, data, _config(6, mr)))
    losses = [r.losses for r in reports if not r.done]

    first = _model()
    control = Resume()
    gen = train(first, data, _config(6, mr), resume=control)
    for _ in range(3):
        next(gen)
    state = control.capture()
    gen.close()
    # through the state file, as `train --resume` does
    path = save_train_state(tmp_path / "m.resume.safetensors", state, {"seed": 0})
    state, recipe = load_train_state(path)
    assert recipe == {"seed": 0}
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)

    second = _model()
    with torch.no_grad():  # the restored state, not these weights, must count
        for p in second.parameters():
            p.add_(1.0)
    rest = list(train(second, data, _config(6, mr), resume=Resume(snapshot=state)))
    assert [r.iteration for r in rest] == [4, 5, 6, 6]
    assert [r.losses for r in rest if not r.done] == losses[3:]
    assert rest[-1].best_val_dice == reports[-1].best_val_dice
    assert rest[-1].best_iteration == reports[-1].best_iteration
    _assert_same_weights(second, straight)


def test_resume_refuses_other_settings_or_data(data):
    control = Resume()
    gen = train(_model(), data, _config(4), resume=control)
    next(gen)
    state = control.capture()
    gen.close()
    other = TrainConfig(max_iterations=4, iterations_per_epoch=2, lr=1e-4, lr_schedule="cosine")
    with pytest.raises(InputError, match="other data or settings.*setting lr"):
        next(train(_model(), data, other, resume=Resume(snapshot=state)))
    fewer = TrainData(
        labelled_images=data.labelled_images[:2], labelled_masks=data.labelled_masks[:2]
    )
    with pytest.raises(InputError, match="labelled"):
        next(train(_model(), fewer, _config(4), resume=Resume(snapshot=state)))
    # a larger budget is fine
    more = list(train(_model(), data, _config(8), resume=Resume(snapshot=state)))
    assert more[-1].iteration == 8


def test_a_state_file_is_not_a_model(data, tmp_path):
    control = Resume()
    gen = train(_model(), data, _config(2), resume=control)
    next(gen)
    path = save_train_state(tmp_path / "m.resume.safetensors", control.capture(), {})
    gen.close()
    with pytest.raises(CheckpointError, match="training state.*--resume"):
        read_checkpoint_info(path)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        load_train_state(tmp_path / "missing.resume.safetensors")
    model_file = tmp_path / "model.safetensors"
    from napari_sdnet import api

    api.Model.from_network(_model().eval()).save(model_file)
    with pytest.raises(CheckpointError, match="not a napari-sdnet training state"):
        load_train_state(model_file)


# ------------------------------------------------------------------------------ train_model
def _recipe(phantom_acdc, out, **kw):
    kw.setdefault("iterations", 6)
    return train_model(
        phantom_acdc, "tiny", "sdnet", 4, output=out, device="cpu", augment=True, **kw
    )


def test_train_model_stopped_then_resumed_equals_one_run(phantom_acdc, tmp_path):
    straight = tmp_path / "straight.safetensors"
    gen = _recipe(phantom_acdc, straight)
    with pytest.raises(StopIteration) as done:
        while True:
            next(gen)
    assert done.value.value.state_path is None

    out = tmp_path / "m.safetensors"
    calls = []

    def stop():
        calls.append(1)
        return "terminated" if len(calls) == 2 else None

    gen = _recipe(phantom_acdc, out, stop=stop)
    with pytest.raises(StopIteration) as done:
        while True:
            next(gen)
    result = done.value.value
    state = train_state_path(out)
    assert state.name == "m.resume.safetensors"
    assert result.stop_reason == "terminated" and result.state_path == state
    assert out.is_file() and state.is_file()
    info = read_checkpoint_info(out)
    assert info.training["iterations"] == 2 and info.training["stop_reason"] == "terminated"
    # a fresh run would throw the state away: refused unless --overwrite or --resume
    with pytest.raises(InputError, match="file exists"):
        next(_recipe(phantom_acdc, out))
    out.unlink()
    with pytest.raises(InputError, match="state.*--resume"):
        next(_recipe(phantom_acdc, out))
    # other settings than the saved run's are refused
    with pytest.raises(InputError, match="other seed"):
        next(_recipe(phantom_acdc, out, resume=True, seed=1))

    gen = _recipe(phantom_acdc, out, resume=True)
    with pytest.raises(StopIteration) as done:
        while True:
            next(gen)
    result = done.value.value
    assert result.stop_reason == "budget" and not state.exists()
    info = read_checkpoint_info(out)
    assert info.training["iterations"] == 6 and info.training["resumed_from_iteration"] == 2
    assert info.metrics == read_checkpoint_info(straight).metrics
    _assert_same_weights(load_checkpoint(out)[0], load_checkpoint(straight)[0])


def test_periodic_state_saves_limit_a_kill(phantom_acdc, tmp_path):
    out = tmp_path / "m.safetensors"
    gen = _recipe(phantom_acdc, out, checkpoint_seconds=1e-6)
    for _ in range(3):
        next(gen)
    state = train_state_path(out)
    assert state.is_file() and not out.exists()
    snapshot, _ = load_train_state(state)
    assert snapshot.meta["iteration"] == 2  # saved after iteration 2, before 3 was yielded
    del gen  # as a SIGKILL would: nothing more is written
    assert not out.exists()
    # resume with the budget already spent writes the model from the state at once
    gen = _recipe(phantom_acdc, out, resume=True, iterations=2)
    with pytest.raises(StopIteration) as done:
        while True:
            next(gen)
    assert done.value.value.info.training["iterations"] == 2 and out.is_file()


def test_interrupted_training_records_what_really_happened(phantom_acdc, tmp_path):
    out = tmp_path / "m.safetensors"
    gen = train_model(
        phantom_acdc, "tiny", "unet", 4, output=out, iterations=40, device="cpu", patience=None
    )
    seen = []
    for progress in gen:
        seen.append(progress)
        if sum(p.val_dice is not None for p in seen) == 2:
            break
    with pytest.raises(StopIteration) as stop:
        gen.throw(KeyboardInterrupt)
    result = stop.value.value
    assert result.stop_reason == "interrupted"
    info = read_checkpoint_info(out)
    assert info.training["iterations"] == seen[-1].iteration
    assert info.metrics["val_dice"] == round(seen[-1].best_val_dice, 4)
    assert info.metrics["val_iteration"] == seen[-1].best_iteration
    assert result.state_path is not None and result.state_path.is_file()


def test_diverged_training_writes_nothing(phantom_acdc, tmp_path):
    out = tmp_path / "m.safetensors"
    gen = train_model(
        phantom_acdc, "tiny", "unet", 4, output=out, iterations=30, device="cpu", lr=1e12
    )
    with pytest.raises(TrainingError, match="(diverged|NaN or infinite).*no model was written"):
        for _ in gen:
            pass
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": float("nan")}, "learning rate"),
        ({"lr": 0.0}, "learning rate"),
        ({"lr": -1e-3}, "learning rate"),
        ({"lr": float("inf")}, "learning rate"),
        ({"iterations": 0}, "iterations"),
        ({"epochs": -1}, "epochs"),
        ({"seconds": 0.0}, "seconds"),
        ({"patience": -2}, "patience"),
    ],
)
def test_train_model_checks_its_numbers_first(phantom_acdc, tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        next(train_model(phantom_acdc, "tiny", output=tmp_path / "m.safetensors", **kwargs))


def test_train_model_checks_the_destination_first(phantom_acdc, tmp_path, small_mount):
    with pytest.raises(InputError, match="does not exist"):
        next(train_model(phantom_acdc, "tiny", output=tmp_path / "no" / "m.safetensors"))
    (tmp_path / "x.safetensors").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        next(train_model(phantom_acdc, "tiny", output=tmp_path / "x.safetensors"))
    readonly = small_mount("ro")
    with pytest.raises(InputError, match="permission denied|Read-only file system"):
        next(train_model(phantom_acdc, "tiny", output=readonly / "m.safetensors"))


# ------------------------------------------------------------------------------ structures
def test_a_three_structure_model_trains_validates_and_resumes(phantom_acdc, tmp_path):
    """RV cavity, myocardium and LV cavity as a 3-channel M: targets from the label maps,
    per-structure validation, the structures in the checkpoint, resumable like any run."""
    out = tmp_path / "m3.safetensors"
    calls = []

    def stop():
        calls.append(1)
        return "terminated" if len(calls) == 3 else None

    kw = dict(structures=("rv", "myocardium", "lv"), iterations=6, patience=None)
    gen = _recipe(phantom_acdc, out, stop=stop, **kw)
    with pytest.raises(StopIteration):
        while True:
            next(gen)
    gen = _recipe(phantom_acdc, out, resume=True, **kw)
    reports = []
    with pytest.raises(StopIteration) as done:
        while True:
            reports.append(next(gen))
    result = done.value.value
    validated = [p for p in reports if p.val_dice is not None]
    assert validated and set(validated[-1].val_dice_structures) == {"rv", "myocardium", "lv"}
    assert validated[-1].val_dice == pytest.approx(
        np.mean(list(validated[-1].val_dice_structures.values()))
    )
    model, info = load_checkpoint(out)
    assert info.model_config.structures == ("rv", "myocardium", "lv")
    assert result.info.training["iterations"] == 6
    x = torch.zeros(2, 1, SIZE, SIZE)
    mask, _ = model.decomposer(x)
    assert mask.shape == (2, 3, SIZE, SIZE)
    # starting a myocardium-only run from it is refused, saying why
    with pytest.raises(InputError, match="it has rv, myocardium, lv"):
        next(_recipe(phantom_acdc, tmp_path / "x.safetensors", init=out, iterations=2))


def test_a_three_structure_model_needs_label_maps(data):
    three = SDNet(SDNet("tiny").config.replace(structures=("rv", "myocardium", "lv")))
    with pytest.raises(InputError, match="needs label maps"):
        next(train(three, data, _config(2)))


def test_scanner_shift_changes_intensities_and_keeps_padding(data):
    from napari_sdnet.training.trainer import _Run

    cfg = TrainConfig(max_iterations=1, augment=AugmentConfig(mr=True, mr_probability=2.5))
    run = _Run(_model(), data, cfg)
    x = torch.from_numpy(np.asarray(data.labelled_images[:3], np.float32))[:, None].clone()
    x[:, :, :, :5] = -1.0  # padding columns
    out = run.scanner_shift(x)
    assert out.shape == x.shape and out.min() >= -1.0 and out.max() <= 1.0
    assert torch.all(out[:, :, :, :5] == -1.0)
    assert not torch.allclose(out, x, atol=1e-3)
    run.finish("budget")


def test_the_structures_loss_keeps_an_absent_structure_alive():
    """Cross-entropy + batch Dice: a structure missing from most slices still gets a gradient
    and a predicted pixel of it on a slice without it costs little (per-image Dice killed it)."""
    from napari_sdnet.training.losses import dice_loss, structures_loss

    target = torch.zeros(4, 3, 16, 16)
    target[0, 0, 2:6, 2:6] = 1  # the RV on one slice of four
    target[:, 1, 8:12, 8:12] = 1
    logits = torch.zeros(4, 4, 16, 16, requires_grad=True)
    loss = structures_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad[:, 1].abs().sum() > 0
    # one stray RV pixel on a slice without RV: small change of the batch loss
    probs = torch.zeros(4, 3, 16, 16)
    probs[:, 1] = target[:, 1]
    probs[0, 0] = target[0, 0]
    stray = probs.clone()
    stray[2, 0, 0, 0] = 1.0
    logit = torch.log(torch.cat([1 - probs.sum(1, keepdim=True), probs], 1).clamp_min(1e-4))
    logit_stray = torch.log(torch.cat([1 - stray.sum(1, keepdim=True), stray], 1).clamp_min(1e-4))
    assert structures_loss(logit_stray, target) - structures_loss(logit, target) < 0.05
    # whereas the per-image Dice of the paper's loss jumps for that pixel
    assert dice_loss(stray[:, :1], target[:, :1]) - dice_loss(probs[:, :1], target[:, :1]) > 0.2


def test_train_model_with_another_width(phantom_acdc, tmp_path):
    """``base_filters`` trains the preset at another width (to compare model sizes)."""
    from napari_sdnet.training.checkpoint import read_checkpoint_info

    out = tmp_path / "wide.safetensors"
    gen = _recipe(phantom_acdc, out, iterations=2, base_filters=6)
    with pytest.raises(StopIteration):
        while True:
            next(gen)
    config = read_checkpoint_info(out).model_config
    assert config.base_filters == 6 and config.name == "tiny"
    for bad in (0, 2.5, True):
        with pytest.raises(InputError, match="base_filters"):
            next(
                train_model(
                    phantom_acdc, "tiny", output=tmp_path / "b.safetensors", base_filters=bad
                )
            )
