"""Training: losses, augmentation, the fake pool, the training loop and its stopping rules.

Everything runs the ``tiny`` preset (64 x 64) on CPU in a few seconds. Torch is limited to one
thread here: on a shared 2-core machine, two busy processes with two threads each slow tiny
convolutions down tens of times.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_sdnet.errors import CheckpointError, InputError
from napari_sdnet.inference import SliceOutputs, predict_slices
from napari_sdnet.model import SDNet
from napari_sdnet.phantom import make_phantom_volume
from napari_sdnet.preprocess import PreprocessConfig, preprocess_labels, preprocess_volume
from napari_sdnet.training import trainer as trainer_module
from napari_sdnet.training import validation as validation_module
from napari_sdnet.training.losses import (
    dice_loss,
    hard_dice,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    soft_dice,
)
from napari_sdnet.training.trainer import (
    AugmentConfig,
    FakePool,
    LossWeights,
    Progress,
    TrainConfig,
    TrainData,
    augment_batch,
    rampup_factor,
    recalibrate_batchnorm,
    run_to_end,
    train,
    validation_dice,
)

SIZE = 64
NO_AUG = AugmentConfig(enabled=False)



def _phantom_slices(seed: int = 0, phase: float = 0.0, spacing: float = 2.5):
    """Phantom slices on a 64 x 64 grid (myocardium a few pixels thick) and their masks."""
    vol = make_phantom_volume(phase=phase, n_slices=5, seed=seed)
    cfg = PreprocessConfig(target_spacing=spacing, size=SIZE)
    x, grid = preprocess_volume(vol.image, vol.spacing, cfg)
    m = (preprocess_labels(vol.labels, grid) == 2).astype(np.uint8)
    return x, m


@pytest.fixture(scope="module")
def phantom():
    """Two phantom 'patients' (ED + ES each): images, masks, volume ids."""
    xs, ms, ids = [], [], []
    for seed in (0, 1):
        for phase in (0.0, 0.5):
            x, m = _phantom_slices(seed, phase)
            xs.append(x)
            ms.append(m)
            ids += [f"p{seed}_{phase}"] * len(x)
    return np.concatenate(xs), np.concatenate(ms), ids


def _tiny_model(seed: int = 0) -> SDNet:
    torch.manual_seed(seed)
    return SDNet("tiny")


def _small_data(phantom, validation: bool = True) -> TrainData:
    x, m, ids = phantom
    return TrainData(
        labelled_images=x[:4],
        labelled_masks=m[:4],
        unlabelled_images=x[5:15],
        real_masks=m,
        val_images=x[15:] if validation else None,
        val_masks=m[15:] if validation else None,
        val_volume_ids=ids[15:] if validation else None,
    )


# ------------------------------------------------------------------------------- losses
def test_soft_dice_values():
    ones = torch.ones(1, 1, 4, 4)
    zeros = torch.zeros(1, 1, 4, 4)
    assert soft_dice(ones, ones).item() == pytest.approx(1.0)
    # Disjoint: only the smoothing is left: 0.1 / (16 + 0.1).
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2] = 1
    assert soft_dice(half, 1 - half).item() == pytest.approx(0.1 / 16.1)
    # Both empty: 0.1 / 0.1 = 1 (absent and correctly predicted absent).
    assert soft_dice(zeros, zeros).item() == pytest.approx(1.0)
    # Soft values: pred 0.5 everywhere vs all ones: (2 * 8 + 0.1) / (8 + 16 + 0.1).
    assert soft_dice(ones * 0.5, ones).item() == pytest.approx(16.1 / 24.1)
    # Per image, then averaged over the batch (not pooled over the batch).
    batch_pred = torch.cat([ones, half])
    batch_true = torch.cat([ones, 1 - half])
    assert soft_dice(batch_pred, batch_true).item() == pytest.approx((1 + 0.1 / 16.1) / 2)
    assert dice_loss(half, 1 - half).item() == pytest.approx(1 - 0.1 / 16.1)


def test_lsgan_values():
    one, zero = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert lsgan_generator_loss(one).item() == pytest.approx(0.0)
    assert lsgan_generator_loss(zero).item() == pytest.approx(1.0)
    assert lsgan_generator_loss(one * 3).item() == pytest.approx(4.0)
    assert lsgan_discriminator_loss(one, zero).item() == pytest.approx(0.0)
    assert lsgan_discriminator_loss(zero, one).item() == pytest.approx(1.0)  # 0.5 * (1 + 1)
    assert lsgan_discriminator_loss(one * 0.5, one * 0.5).item() == pytest.approx(0.25)


def test_hard_dice_values():
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    assert hard_dice(a, b) == 1.0
    a[0, :2] = True
    assert hard_dice(a, b) == 0.0
    b[0, :1] = True
    assert hard_dice(a, b) == pytest.approx(2 * 4 / (8 + 4))


# ------------------------------------------------------------------------------- augmentation
def _ring_batch(b: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright off-centre rings on grey, a -1 padding frame, and the ring masks."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    imgs, masks = [], []
    for i in range(b):
        cy, cx = 26 + 2 * i, 30 + i
        r = np.hypot(yy - cy, xx - cx)
        ring = (r > 6 + i % 3) & (r < 11 + i % 3)
        img = np.zeros((SIZE, SIZE), np.float32)
        img[ring] = 1.0
        img[:, :6] = -1.0  # padding as preprocess makes it
        imgs.append(img)
        masks.append(ring.astype(np.float32))
    return torch.from_numpy(np.stack(imgs))[:, None], torch.from_numpy(np.stack(masks))[:, None]


def test_augment_keeps_masks_on_the_anatomy():
    images, masks = _ring_batch()
    cfg = AugmentConfig(probability=1.0, gamma=(1.0, 1.0), contrast=(1.0, 1.0), noise_std=0.0)
    out, out_m = augment_batch(images, masks, cfg, torch.Generator().manual_seed(3))
    assert out.shape == images.shape and out_m.shape == masks.shape
    assert set(torch.unique(out_m).tolist()) <= {0.0, 1.0}
    moved = 0
    for i in range(len(images)):
        ring = out[i, 0].numpy() > 0.5
        mask = out_m[i, 0].numpy() > 0.5
        assert hard_dice(mask, ring) > 0.9, i
        moved += hard_dice(mask, masks[i, 0].numpy() > 0.5) < 0.9
    assert moved >= len(images) // 2  # the geometry really changed


def test_augment_keeps_the_padding_value():
    images, masks = _ring_batch()
    cfg = AugmentConfig(probability=1.0, noise_std=0.05)
    gen = torch.Generator().manual_seed(1)
    out, out_m = augment_batch(images, masks, cfg, gen)
    assert out.min() >= -1.0 and out.max() <= 1.0
    # Pixels that come from the padding frame or from outside the field of view stay exactly
    # -1 (no noise, no contrast change); the grey interior does get noise.
    assert (out == -1.0).sum() > (images == -1.0).sum() * 0.5
    interior = out[(out > -0.9) & (out < 0.3)]
    assert interior.std() > 0.01
    # An all-padding image stays all padding, whatever the intensity changes.
    pad = torch.full((3, 1, SIZE, SIZE), -1.0)
    assert torch.equal(augment_batch(pad, None, cfg, gen)[0], pad)
    # Another padding value (the reference's mid-grey 0) is kept as well.
    zero = torch.zeros(2, 1, SIZE, SIZE)
    out0, _ = augment_batch(zero, None, cfg, gen, pad_value=0.0)
    assert torch.equal(out0, zero)


def test_augment_is_seeded_and_can_be_disabled():
    images, masks = _ring_batch()
    cfg = AugmentConfig()
    a = augment_batch(images, masks, cfg, torch.Generator().manual_seed(7))
    b = augment_batch(images, masks, cfg, torch.Generator().manual_seed(7))
    c = augment_batch(images, masks, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    x, m = augment_batch(images, masks, NO_AUG, torch.Generator())
    assert x is images and m is masks
    # probability 0: geometry untouched (identity resampling), masks identical
    x, m = augment_batch(images, masks, AugmentConfig(probability=0.0), torch.Generator())
    assert torch.equal(m, masks)
    assert torch.allclose(x, images, atol=1e-5)


# ------------------------------------------------------------------------------- fake pool
def test_fake_pool_fills_then_mixes():
    pool = FakePool(5, torch.Generator().manual_seed(0))
    first = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # while filling: the new samples
    assert len(pool.items) == 4
    seen = set()
    for step in range(20):
        batch = torch.full((4, 1, 1, 1), 100.0 + step)
        out = pool.query(batch)
        assert out.shape == batch.shape
        assert len(pool.items) == 5
        seen.update(out.flatten().tolist())
    assert any(v < 100 for v in seen) and any(v >= 100 for v in seen)  # old and new mixed
    stored = torch.stack(pool.items).flatten().tolist()
    assert all(v in seen or v < 100 or v >= 100 for v in stored)
    passthrough = FakePool(0, torch.Generator())
    assert torch.equal(passthrough.query(first), first) and not passthrough.items


def test_fake_pool_is_seeded_and_detached():
    def run(seed: int) -> list[float]:
        pool = FakePool(3, torch.Generator().manual_seed(seed))
        out = []
        for step in range(10):
            x = torch.full((2, 1, 1, 1), float(step), requires_grad=True)
            q = pool.query(x)
            assert not q.requires_grad
            out += q.flatten().tolist()
        return out

    assert run(0) == run(0)


# ------------------------------------------------------------------------------- data checks
def test_bad_train_data_is_an_input_error(phantom):
    x, m, ids = phantom
    model = _tiny_model()
    cases = [
        TrainData(x[:0], m[:0]),  # nothing labelled
        TrainData(x[:3], m[:2]),  # counts differ
        TrainData(x[:3, :32, :32], m[:3, :32, :32]),  # wrong grid
        TrainData(x[:3, 0], m[:3, 0]),  # 2D
        TrainData(None, None),  # type: ignore[arg-type]
        TrainData(x[:3].tolist(), m[:3]),  # type: ignore[arg-type]
        TrainData(np.where(np.isnan(x[:3]), 0, np.nan).astype(np.float32), m[:3]),
        TrainData(x[:3], m[:3], real_masks=m[:0]),
        TrainData(x[:3], m[:3], val_images=x[:3]),  # masks missing
        TrainData(x[:3], m[:3], val_images=x[:3], val_masks=m[:2]),
        TrainData(x[:3], m[:3], val_images=x[:3], val_masks=m[:3], val_volume_ids=["a"]),
        TrainData(x[:3], m[:3], unlabelled_images=x[:2, :10]),
    ]
    for data in cases:
        with pytest.raises(InputError):
            next(train(model, data, TrainConfig(max_iterations=1)))


def test_bad_train_config_is_an_input_error():
    with pytest.raises(InputError, match="model type"):
        TrainConfig(model_type="vae")
    with pytest.raises(InputError, match="batch size"):
        TrainConfig(batch_size=0)
    with pytest.raises(InputError, match="at least one"):
        TrainConfig(max_iterations=None, max_epochs=None, max_seconds=None)
    with pytest.raises(InputError, match="rampup"):
        TrainConfig(rampup=-1)


# ------------------------------------------------------------------------------- the loop
EXPECTED_KEYS = {
    "sdnet": {"unlabelled", "unl_recon_l1", "labelled", "dice_loss", "recon_l1", "discriminators"},
    "unet": {"labelled", "dice_loss"},
    "gan": {"unlabelled", "labelled", "dice_loss", "discriminators"},
}


@pytest.mark.parametrize("model_type", ["sdnet", "unet", "gan"])
def test_each_model_type_runs(phantom, model_type):
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(model_type=model_type, max_iterations=4, iterations_per_epoch=2)
    reports = list(train(model, _small_data(phantom), cfg))
    assert all(isinstance(p, Progress) for p in reports)
    steps, final = reports[:-1], reports[-1]
    assert [p.iteration for p in steps] == [1, 2, 3, 4]
    for p in steps:
        assert set(p.losses) == EXPECTED_KEYS[model_type]
        assert all(math.isfinite(v) for v in p.losses.values())
        assert p.max_iterations == 4 and p.iterations_per_epoch == 2
    assert [p.val_dice is not None for p in steps] == [False, True, False, True]
    assert final.done and final.stop_reason == "budget" and final.iteration == 4
    assert final.best_val_dice is not None and 0.0 <= final.best_val_dice <= 1.0
    assert not model.training
    assert all(p.requires_grad for p in model.parameters())

    def changed(prefix: str) -> bool:
        return any(
            not torch.equal(before[k], v)
            for k, v in model.state_dict().items()
            if k.startswith(prefix)
        )

    assert changed("decomposer.")
    assert changed("reconstructor.") == (model_type == "sdnet")
    assert changed("image_discriminator.") == (model_type == "sdnet")
    assert changed("mask_discriminator.") == (model_type != "unet")


def test_epochs_have_the_same_length_for_every_model_type(phantom):
    """One pass over the larger set (10 unlabelled / batch 4), even for unet, which ignores it."""
    for model_type in ("sdnet", "unet", "gan"):
        cfg = TrainConfig(model_type=model_type, max_iterations=1)
        first = next(train(_tiny_model(), _small_data(phantom), cfg))
        assert first.iterations_per_epoch == 3, model_type


def test_training_is_seeded(phantom):
    def losses(seed: int) -> list[dict[str, float]]:
        model = _tiny_model(0)
        cfg = TrainConfig(max_iterations=3, seed=seed)
        return [p.losses for p in train(model, _small_data(phantom, validation=False), cfg)]

    assert losses(0) == losses(0)
    assert losses(0) != losses(1)


def test_tiny_model_overfits_one_labelled_slice():
    """Hard Dice > 0.9 on the training slice, measured in eval mode (running statistics)."""
    x, m = _phantom_slices(0, 0.0, spacing=2.0)
    x, m = x[2:3], m[2:3]
    assert m.sum() > 200
    model = _tiny_model(0)
    data = TrainData(x, m, val_images=x, val_masks=m)
    cfg = TrainConfig(
        model_type="unet",
        lr=3e-3,
        max_iterations=150,
        iterations_per_epoch=50,
        patience=None,
        augment=NO_AUG,
    )
    final = run_to_end(train(model, data, cfg))
    assert final.best_val_dice > 0.9
    assert not model.training
    assert validation_dice(model, x, m, None) == pytest.approx(final.best_val_dice)


def _mean_loss(reports: list[Progress], key: str, part: slice) -> float:
    return float(np.mean([p.losses[key] for p in reports[part]]))


FIRST, LAST = slice(0, 10), slice(-10, None)


def test_sdnet_reconstruction_losses_fall_on_the_phantom(phantom):
    x, m, _ = phantom
    model = _tiny_model(0)
    data = TrainData(x[::2], m[::2], unlabelled_images=x[1::2], real_masks=m)
    cfg = TrainConfig(lr=3e-3, max_iterations=40, augment=NO_AUG, seed=0)
    reports = [p for p in train(model, data, cfg) if not p.done]
    for key in ("recon_l1", "unl_recon_l1"):
        assert _mean_loss(reports, key, LAST) < 0.8 * _mean_loss(reports, key, FIRST)


@pytest.mark.slow
def test_sdnet_learns_to_segment_the_phantom(phantom):
    """Semi-supervised SDNet learns: the Dice loss and the whole labelled objective fall.

    Early on the mask discriminator wins and the Dice loss stalls (blurry masks are easy to
    tell from real ones); with the tiny model at lr 3e-3 the Dice loss then drops sharply at
    about 100 iterations (at lr 1e-3: about 350). About 15 s on one core.
    """
    x, m, _ = phantom
    model = _tiny_model(0)
    data = TrainData(x[::2], m[::2], unlabelled_images=x[1::2], real_masks=m)
    cfg = TrainConfig(lr=3e-3, max_iterations=150, augment=NO_AUG, seed=0)
    reports = [p for p in train(model, data, cfg) if not p.done]
    assert _mean_loss(reports, "labelled", LAST) < 0.5 * _mean_loss(reports, "labelled", FIRST)
    assert _mean_loss(reports, "dice_loss", LAST) < 0.5 * _mean_loss(reports, "dice_loss", FIRST)
    for key in ("recon_l1", "unl_recon_l1"):
        assert _mean_loss(reports, key, LAST) < 0.7 * _mean_loss(reports, key, FIRST)


@pytest.mark.slow
@pytest.mark.shared_data
def test_sdnet_learns_on_acdc_slices(acdc_h5):
    """The same on real ACDC slices (3 training volumes; the Dice drop comes at ~150)."""
    import itertools

    from napari_sdnet.io.datasets import SliceSet, iter_acdc_h5

    cfg = PreprocessConfig(target_spacing=4.0, size=SIZE)
    records = itertools.islice(iter_acdc_h5(acdc_h5, "train", cfg, spacing=1.5), 3)
    slices = SliceSet.concat([r.to_sliceset() for r in records], size=SIZE)
    lab = slices.masks.reshape(len(slices), -1).any(1)
    data = TrainData(
        slices.images[lab][:8],
        slices.masks[lab][:8],
        unlabelled_images=slices.images[8:],
        real_masks=slices.masks,
    )
    model = _tiny_model(0)
    train_cfg = TrainConfig(lr=3e-3, max_iterations=200, augment=NO_AUG)
    reports = [p for p in train(model, data, train_cfg) if not p.done]
    assert _mean_loss(reports, "labelled", LAST) < 0.6 * _mean_loss(reports, "labelled", FIRST)
    assert _mean_loss(reports, "dice_loss", LAST) < 0.6 * _mean_loss(reports, "dice_loss", FIRST)
    assert _mean_loss(reports, "recon_l1", LAST) < 0.7 * _mean_loss(reports, "recon_l1", FIRST)


def test_closing_leaves_the_best_validated_weights(phantom):
    model = _tiny_model(0)
    cfg = TrainConfig(lr=1e-3, max_iterations=100, iterations_per_epoch=2, patience=None)
    gen = train(model, _small_data(phantom), cfg)
    best_snapshot = None
    for p in gen:
        if p.val_dice is not None and p.best_iteration == p.iteration:
            # Right after an improving validation the model holds exactly the kept weights.
            best_snapshot = {k: v.clone() for k, v in model.state_dict().items()}
        if p.iteration == 9:
            break
    assert model.training  # still suspended inside the loop
    gen.close()
    assert best_snapshot is not None
    assert not model.training
    assert all(p.requires_grad for p in model.parameters())
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in best_snapshot.items())
    assert all(torch.isfinite(v.float()).all() for v in state.values())


def test_closing_without_validation_keeps_the_last_weights(phantom):
    model = _tiny_model(0)
    gen = train(model, _small_data(phantom, validation=False), TrainConfig(max_iterations=50))
    for p in gen:
        if p.iteration == 3:
            last = {k: v.clone() for k, v in model.named_parameters()}
            break
    gen.close()
    assert not model.training
    assert all(torch.equal(v, last[k]) for k, v in model.named_parameters())


def test_max_seconds_stops(phantom):
    model = _tiny_model(0)
    cfg = TrainConfig(max_iterations=None, max_epochs=None, max_seconds=0.5, patience=None)
    reports = list(train(model, _small_data(phantom), cfg))
    final = reports[-1]
    assert final.stop_reason == "time" and final.elapsed >= 0.5
    assert final.iteration == len(reports) - 1 < 200
    assert reports[-2].val_dice is not None  # validated when the time ran out
    assert final.best_val_dice is not None and not model.training


def test_early_stopping_with_patience(phantom):
    # lr 0: the validation Dice can never improve after the first epoch.
    model = _tiny_model(0)
    cfg = TrainConfig(lr=0.0, max_iterations=50, iterations_per_epoch=2, patience=3, augment=NO_AUG)
    reports = list(train(model, _small_data(phantom), cfg))
    final = reports[-1]
    assert final.stop_reason == "early_stopping"
    assert final.best_iteration == 2
    assert final.iteration == 2 * (1 + 3)
    # validate_every: validation every second epoch; patience counts epochs.
    cfg.validate_every = 2
    final = run_to_end(train(_tiny_model(0), _small_data(phantom), cfg))
    assert final.stop_reason == "early_stopping" and final.iteration == 2 * (2 + 4)


def test_freeze_prefixes_keep_weights_unchanged(phantom):
    model = _tiny_model(0)
    model.decomposer.down[0][0][0].weight.requires_grad_(False)  # caller's own flag
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = ("decomposer.down", "reconstructor", "mask_discriminator")
    cfg = TrainConfig(max_iterations=4, freeze=frozen, lr=1e-3)
    run_to_end(train(model, _small_data(phantom, validation=False), cfg))
    after = model.state_dict()
    for key, value in after.items():
        if key.startswith(frozen):  # weights and BatchNorm statistics
            assert torch.equal(value, before[key]), key
    assert not torch.equal(
        after["decomposer.mask_head.weight"], before["decomposer.mask_head.weight"]
    )
    assert any(
        not torch.equal(after[k], before[k]) for k in after if k.startswith("image_discriminator")
    )
    assert not model.decomposer.down[0][0][0].weight.requires_grad  # flags restored
    assert model.decomposer.down[1][0][0].weight.requires_grad
    with pytest.raises(InputError, match="frozen"):
        next(
            train(model, _small_data(phantom), TrainConfig(freeze=("decomposer", "reconstructor")))
        )
    assert model.decomposer.down[1][0][0].weight.requires_grad


def test_rampup_factor_rises_to_one():
    assert rampup_factor(0, 0) == 1.0 and rampup_factor(10, 0) == 1.0
    values = [rampup_factor(i, 100) for i in range(0, 101, 10)]
    assert values[0] == pytest.approx(math.exp(-5.0))
    assert all(a < b for a, b in zip(values[:-1], values[1:], strict=False))
    assert values[-1] == 1.0 and rampup_factor(1000, 100) == 1.0


def test_rampup_scales_only_the_unsupervised_and_adversarial_terms(phantom):
    """At the start of a ramp the unlabelled loss is ~exp(-5) of the unramped one, while the
    labelled Dice term is untouched."""

    def first_losses(rampup: int) -> dict[str, float]:
        cfg = TrainConfig(max_iterations=1, rampup=rampup, augment=NO_AUG, bn_recalibration=0)
        return next(train(_tiny_model(0), _small_data(phantom, validation=False), cfg)).losses

    plain, ramped = first_losses(0), first_losses(1000)
    assert ramped["unlabelled"] == pytest.approx(plain["unlabelled"] * math.exp(-5.0), rel=1e-4)
    assert ramped["dice_loss"] == pytest.approx(plain["dice_loss"])
    assert ramped["labelled"] < plain["labelled"]


def test_cosine_lr_schedule_decays_to_zero(phantom, monkeypatch):
    seen: list[float] = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, *args, **kwargs):
            seen.append(self.param_groups[0]["lr"])
            return super().step(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    cfg = TrainConfig(model_type="unet", max_iterations=4, lr=1e-3, lr_schedule="cosine")
    run_to_end(train(_tiny_model(0), _small_data(phantom, validation=False), cfg))
    expected = [0.5e-3 * (1 + math.cos(math.pi * i / 4)) for i in range(4)]
    assert seen == pytest.approx(expected)
    with pytest.raises(InputError, match="lr schedule"):
        TrainConfig(lr_schedule="step")


def test_zero_weight_adversarial_terms_leave_their_discriminator_alone(phantom):
    """Mask adversarial weights of 0 (fine-tuning): the mask discriminator is neither run nor
    trained, though not frozen; the image discriminator still trains."""
    model = _tiny_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    model.mask_discriminator.register_forward_hook(lambda *args: calls.append(1))
    cfg = TrainConfig(max_iterations=3, weights=LossWeights(adv_mask=0.0, unl_adv_mask=0.0))
    run_to_end(train(model, _small_data(phantom, validation=False), cfg))
    after = model.state_dict()
    assert not calls
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("mask_disc"))
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("image_disc"))


MASK_PATH = ("decomposer.down", "decomposer.bottleneck", "decomposer.up", "decomposer.mask_head")


def test_reconstructor_fit_keeps_the_masks_and_selects_on_reconstruction(phantom):
    """Mask path frozen + selection on reconstruction: the segmentation cannot change, the
    kept weights are those with the lowest validation L1 (not the first, whose Dice ties)."""
    from napari_sdnet.training.trainer import validation_recon_l1

    model = _tiny_model(0)
    data = _small_data(phantom)
    x = data.val_images
    masks_before = predict_slices(model, x).probability
    l1_before = validation_recon_l1(model, x)
    cfg = TrainConfig(
        max_iterations=12, iterations_per_epoch=3, lr=3e-3, freeze=MASK_PATH,
        select_on="reconstruction", augment=NO_AUG,
    )
    reports = list(train(model, data, cfg))
    validated = [r for r in reports if r.val_recon_l1 is not None and not r.done]
    assert len(validated) == 4
    best = min(validated, key=lambda r: r.val_recon_l1)
    final = reports[-1]
    assert final.best_iteration == best.iteration
    assert final.best_val_recon_l1 == pytest.approx(best.val_recon_l1)
    assert np.array_equal(predict_slices(model, x).probability, masks_before)
    assert validation_recon_l1(model, x) == pytest.approx(best.val_recon_l1, rel=1e-5)
    assert best.val_recon_l1 < l1_before
    # Selection on reconstruction needs a trained reconstructor.
    with pytest.raises(InputError, match="sdnet"):
        TrainConfig(model_type="unet", max_iterations=1, select_on="reconstruction")
    with pytest.raises(InputError, match="selection"):
        TrainConfig(max_iterations=1, select_on="loss")


def test_freeze_prefix_that_matches_nothing_is_refused(phantom):
    model = _tiny_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match="decomposer.dwn"):
        next(train(model, _small_data(phantom), TrainConfig(max_iterations=2,
                                                            freeze=("decomposer.dwn",))))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_non_finite_loss_stops_without_a_bad_update(phantom, monkeypatch):
    model = _tiny_model(0)
    calls = {"n": 0}
    real_dice_loss = trainer_module.dice_loss

    def flaky(pred, target):
        calls["n"] += 1
        value = real_dice_loss(pred, target)
        return value * float("nan") if calls["n"] >= 3 else value

    monkeypatch.setattr(trainer_module, "dice_loss", flaky)
    final = run_to_end(train(model, _small_data(phantom), TrainConfig(max_iterations=10)))
    assert final.stop_reason == "diverged" and final.iteration == 2
    assert all(torch.isfinite(v.float()).all() for v in model.state_dict().values())


def test_validation_dice_is_per_volume(monkeypatch):
    masks = np.zeros((3, SIZE, SIZE), np.uint8)
    masks[:, 10:20, 10:20] = 1
    prob = masks.astype(np.float32)
    prob[2] = 0  # the second volume is missed completely
    outputs = SliceOutputs(prob, np.zeros((3, 16), np.float32), prob)
    monkeypatch.setattr(validation_module, "predict_slices", lambda *a, **k: outputs)
    assert validation_dice(None, masks, masks, ["a", "a", "b"]) == pytest.approx(0.5)
    assert validation_dice(None, masks, masks, None) == pytest.approx(2 / 3)


def test_recalibrated_batchnorm_matches_batch_statistics():
    model = _tiny_model(0)
    x, _ = _phantom_slices(0, 0.0)
    batch = torch.from_numpy(x)[:, None]
    model.train()
    with torch.no_grad():
        train_mode = model.decomposer(batch)[0]
    model.eval()
    with torch.no_grad():
        stale = model.decomposer(batch)[0]
    model.train()
    recalibrate_batchnorm(model, x, batch_size=len(x))
    assert model.training
    model.eval()
    with torch.no_grad():
        fresh = model.decomposer(batch)[0]
    assert (fresh - train_mode).abs().max() < 1e-2
    assert (stale - train_mode).abs().max() > 10 * (fresh - train_mode).abs().max()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_amp_training_releases_memory(phantom):
    model = _tiny_model(0).cuda()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    final = run_to_end(train(model, _small_data(phantom), TrainConfig(max_iterations=6)))
    assert final.stop_reason == "budget" and final.best_val_dice is not None
    assert next(model.parameters()).is_cuda and not model.training
    torch.cuda.synchronize()
    # Only the model's own weights remain (optimiser states, pools and batches are gone).
    assert torch.cuda.memory_allocated() <= base + 1024 * 1024


# ------------------------------------------------------------------------------- recipe + CLI
def test_build_train_data_from_acdc_nifti(phantom_acdc):
    from napari_sdnet.training.recipe import build_train_data

    cfg = PreprocessConfig(target_spacing=4.0, size=SIZE)
    data, desc = build_train_data(phantom_acdc, labelled=4, config=cfg, seed=0)
    assert desc["layout"] == "acdc_nifti"
    assert len(desc["val_patients"]) == 1  # 20 % of 4, at least one
    assert set(desc["train_patients"]).isdisjoint(desc["val_patients"])
    assert len(desc["train_patients"]) == 3
    assert desc["labelled"] == 4 and len(data.labelled_images) == 4
    assert desc["unlabelled"] == 3 * 2 * 3 - 4 == len(data.unlabelled_images)
    assert len(data.real_masks) == 3 * 2 * 3  # every training mask
    assert len(data.val_images) == 2 * 3 and len(set(data.val_volume_ids)) == 2
    data.check(SIZE)
    # the same seed gives the same split; explicit patients and validation patients
    again, _ = build_train_data(phantom_acdc, labelled=4, config=cfg, seed=0)
    assert np.array_equal(again.labelled_images, data.labelled_images)
    data, desc = build_train_data(
        phantom_acdc,
        labelled=1,
        by="patients",
        patients=[1, "002", "patient003"],
        val_patients=["3"],
        real_masks="labelled",
        config=cfg,
    )
    assert desc["train_patients"] == ["patient001", "patient002"]
    assert desc["val_patients"] == ["patient003"]
    assert desc["labelled_patients"] == 1 and desc["labelled"] == 6
    assert len(data.real_masks) == 6
    data, desc = build_train_data(phantom_acdc, val_patients=[], config=cfg)
    assert data.val_images is None and data.unlabelled_images is None
    assert desc["labelled"] == 4 * 2 * 3 and desc["warnings"]


def test_build_train_data_refuses_bad_requests(phantom_acdc, tmp_path):
    from napari_sdnet.training.recipe import build_train_data

    cfg = PreprocessConfig(target_spacing=4.0, size=SIZE)
    bad = [
        dict(by="slices"),
        dict(real_masks="none"),
        dict(labelled=0),
        dict(labelled=1000),
        dict(max_volumes=2),  # H5 only
        dict(h5_spacing=1.5),  # H5 only
        dict(patients=["x7"]),
        dict(patients=[9]),  # no such folder
        dict(val_patients=[1, 2, 3, 4]),  # nothing left to train on
    ]
    for kwargs in bad:
        with pytest.raises(InputError):
            build_train_data(phantom_acdc, config=cfg, **kwargs)
    from napari_sdnet.phantom import write_phantom_nifti

    write_phantom_nifti(tmp_path / "cine", n_frames=2, n_slices=2, shape=(32, 32))
    with pytest.raises(InputError, match="fine-tuning"):
        build_train_data(tmp_path / "cine", config=cfg)


def test_train_command_on_phantom_nifti(phantom_acdc, tmp_path, capsys):
    from napari_sdnet.cli import main
    from napari_sdnet.training.checkpoint import load_checkpoint

    out = tmp_path / "model.safetensors"
    argv = [
        "train",
        "--data",
        str(phantom_acdc),
        "--preset",
        "tiny",
        "--labelled",
        "4",
        "--iterations",
        "6",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--rampup",
        "3",
        "--lr-schedule",
        "cosine",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out
    assert "val Dice" in captured.err and "labelled" in captured.err
    model, info = load_checkpoint(out)
    assert info.preset == "tiny" and info.model_type == "sdnet"
    t = info.training
    assert t["data"] == phantom_acdc.name and t["layout"] == "acdc_nifti"
    assert t["labelled"] == 4 and t["unlabelled"] == 14 and t["iterations"] == 6
    assert t["seed"] == 0 and t["device"].startswith("cpu") and t["seconds"] > 0
    assert t["rampup"] == 3 and t["lr_schedule"] == "cosine"
    assert info.metrics["val_iteration"] == 6 and 0 <= info.metrics["val_dice"] <= 1
    # An existing output is refused before any work, in one line.
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "exists" in err and len(err.strip().splitlines()) == 1
    # The baselines, with other options.
    out2 = tmp_path / "unet.safetensors"
    assert (
        main(
            [
                "train",
                "--data",
                str(phantom_acdc),
                "--preset",
                "tiny",
                "--model-type",
                "unet",
                "--labelled",
                "all",
                "--iterations",
                "3",
                "--no-augment",
                "--val-patients",
                "--batch-size",
                "2",
                "--lr",
                "1e-3",
                "-o",
                str(out2),
            ]
        )
        == 0
    )
    info2 = load_checkpoint(out2)[1]
    assert info2.model_type == "unet" and info2.training["unlabelled"] == 0
    assert info2.metrics == {} and info2.training["augment"] is False
    assert "rampup" not in info2.training and "lr_schedule" not in info2.training
    assert "no validation" in capsys.readouterr().err


def test_train_model_interrupted_still_writes_the_best(phantom_acdc, tmp_path):
    from napari_sdnet.training.recipe import train_model

    out = tmp_path / "m.safetensors"
    gen = train_model(phantom_acdc, "tiny", "gan", 4, output=out, iterations=50, device="cpu")
    for _ in range(3):
        next(gen)
    with pytest.raises(StopIteration) as stop:
        gen.throw(KeyboardInterrupt)
    result = stop.value.value
    assert result.stop_reason == "interrupted" and result.path == out and out.is_file()
    assert result.info.training["stop_reason"] == "interrupted"


@pytest.mark.shared_data
def test_train_command_on_acdc_h5(acdc_h5, tmp_path, capsys):
    from napari_sdnet.cli import main
    from napari_sdnet.io.datasets import acdc_split_patients, patient_id
    from napari_sdnet.training.checkpoint import read_checkpoint_info
    from napari_sdnet.training.recipe import build_train_data

    cfg = PreprocessConfig(target_spacing=4.0, size=SIZE)
    data, desc = build_train_data(
        acdc_h5, labelled=5, max_volumes=4, val_volumes=2, h5_spacing=1.5, config=cfg
    )
    split = acdc_split_patients(acdc_h5)
    assert desc["train_volumes"] == 4 and desc["val_volumes"] == 2
    assert desc["labelled"] == 5 and desc["unlabelled"] == len(data.unlabelled_images)
    assert len(data.real_masks) == desc["labelled"] + desc["unlabelled"]
    assert {patient_id(v) for v in data.val_volume_ids} <= split["val"]
    assert not desc["warnings"]
    out = tmp_path / "h5.safetensors"
    argv = [
        "train",
        "--data",
        str(acdc_h5),
        "--preset",
        "tiny",
        "--labelled",
        "5",
        "--max-volumes",
        "4",
        "--val-volumes",
        "2",
        "--iterations",
        "4",
        "--h5-spacing",
        "1.5",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    info = read_checkpoint_info(out)
    assert info.training["layout"] == "acdc_h5" and info.training["h5_spacing"] == 1.5
    assert info.training["max_volumes"] == 4 and info.metrics["val_volumes"] == 2
    # Without --h5-spacing the tiny preset's 4 mm pixels do not fit ACDC: a warning says so.
    out2 = tmp_path / "h5b.safetensors"
    assert main([*argv[:-4], "-o", str(out2)]) == 0
    assert "h5_spacing" in capsys.readouterr().err


def test_train_from_init_continues_a_pretraining(phantom_acdc, tmp_path):
    """`--init` starts from a checkpoint's weights (a unet pre-training continued as sdnet)."""
    from napari_sdnet.cli import main
    from napari_sdnet.training.checkpoint import load_checkpoint
    from napari_sdnet.training.recipe import train_model

    common = ["--data", str(phantom_acdc), "--preset", "tiny", "--labelled", "all",
              "--device", "cpu"]
    stage1 = tmp_path / "unet.safetensors"
    assert main(["train", *common, "--model-type", "unet", "--iterations", "3",
                 "-o", str(stage1)]) == 0
    pre, _ = load_checkpoint(stage1)
    # Zero iterations of the second stage would keep the weights; one step moves them from
    # the pre-trained ones, not from a fresh initialisation.
    stage2 = tmp_path / "sdnet.safetensors"
    assert main(["train", *common, "--init", str(stage1), "--iterations", "1", "--lr", "1e-6",
                 "-o", str(stage2)]) == 0
    model, info = load_checkpoint(stage2)
    assert info.model_type == "sdnet"
    assert info.training["init"]["model"] == stage1.name
    assert info.training["init"]["model_type"] == "unet"
    w_pre = dict(pre.decomposer.named_parameters())
    w_new = dict(model.decomposer.named_parameters())
    diff = max((w_new[k] - w_pre[k]).abs().max().item() for k in w_pre)
    assert diff < 1e-3  # tiny lr: still the pre-trained weights (a fresh init differs by ~0.1)
    # Stage 3: fit only the Z head and the reconstructor, keep the lowest reconstruction L1.
    stage3 = tmp_path / "recon.safetensors"
    freeze = [f"--freeze=decomposer.{part}" for part in ("down", "bottleneck", "up", "mask_head")]
    assert main(["train", *common, "--init", str(stage2), "--iterations", "2", *freeze,
                 "--select-on", "reconstruction", "-o", str(stage3)]) == 0
    fitted, info3 = load_checkpoint(stage3)
    assert info3.training["select_on"] == "reconstruction"
    assert info3.training["freeze"] == [f"decomposer.{p}" for p in ("down", "bottleneck", "up",
                                                                     "mask_head")]
    assert info3.metrics["val_recon_l1"] > 0
    w2, w3 = model.state_dict(), fitted.state_dict()
    assert all(torch.equal(w2[k], w3[k]) for k in w2 if k.startswith("decomposer.down"))
    assert not all(torch.equal(w2[k], w3[k]) for k in w2 if k.startswith("reconstructor"))
    # --reinit restarts parts of the initial model (seeded): here the Z head and reconstructor
    stage4 = tmp_path / "reinit.safetensors"
    assert main(["train", *common, "--init", str(stage3), "--iterations", "1", "--lr", "1e-9",
                 "--reinit", "decomposer.z_head", "--reinit", "reconstructor",
                 "-o", str(stage4)]) == 0
    restarted, info4 = load_checkpoint(stage4)
    assert info4.training["reinit"] == ["decomposer.z_head", "reconstructor"]
    w4 = dict(restarted.named_parameters())  # parameters: BatchNorm statistics do move
    torch.manual_seed(0)
    fresh = dict(SDNet("tiny").named_parameters())  # the seed's (lr 1e-9: one step moves nothing)
    for key in w4:
        if key.startswith(("decomposer.z_head", "reconstructor")):
            assert torch.allclose(w4[key], fresh[key], atol=1e-6), key
        elif key.startswith("decomposer.down"):
            assert torch.allclose(w4[key], w3[key], atol=1e-6), key
    with pytest.raises(InputError, match="reinit"):
        next(train_model(phantom_acdc, "tiny", "sdnet", None, output=tmp_path / "y.safetensors",
                         init=stage3, reinit=("decoder",), iterations=1))
    with pytest.raises(InputError, match="init"):
        next(train_model(phantom_acdc, "tiny", "sdnet", None, output=tmp_path / "y.safetensors",
                         reinit=("reconstructor",), iterations=1))
    # A checkpoint of another preset is refused before any data are loaded.
    with pytest.raises(CheckpointError, match="tiny"):
        next(train_model(phantom_acdc, "compact", "sdnet", None, output=tmp_path / "x.safetensors",
                         init=stage1, iterations=1))


def test_training_works_after_an_abandoned_inference_generator(phantom):
    """A half-consumed prediction generator must not leave the thread without gradients."""
    from napari_sdnet.inference import iter_predict

    x, _, _ = phantom
    model = _tiny_model(0)
    gen = iter_predict(model, x, batch_size=1)
    next(gen)  # suspended mid-way, as when a napari worker is cancelled
    assert torch.is_grad_enabled()
    final = run_to_end(train(_tiny_model(1), _small_data(phantom), TrainConfig(max_iterations=2)))
    assert final.iteration == 2
    gen.close()
