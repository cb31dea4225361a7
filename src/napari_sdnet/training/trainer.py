"""The one training loop, written as a generator that yields :class:`Progress`.

Used by ``napari-sdnet train``, by fine-tuning (API, CLI and the napari widget) and by the
benchmarks. The caller drives it::

    for progress in train(model, data, TrainConfig(max_seconds=60)):
        print(progress.iteration, progress.losses)

and may stop between yields (``generator.close()``, or just breaking out of the loop): the model
is then left usable, holding the best weights seen on validation (or the latest weights when
there is no validation set).

Semi-supervised SDNet as in the reference (Chartsias et al. 2018 and the authors' code): per
iteration one generator step on an unlabelled batch, one on a labelled batch, then one step for
both discriminators (least-squares GAN, a pool of past fakes). The baselines ``unet`` (Dice loss
only) and ``gan`` (U-Net plus the mask discriminator) use the same loop.
"""

from __future__ import annotations

# Names that moved to augment.py, validation.py and state.py stay importable from here.
__all__ = [
    "AugmentConfig",
    "FakePool",
    "LossWeights",
    "Progress",
    "Resume",
    "TrainConfig",
    "TrainData",
    "TrainState",
    "augment_batch",
    "check_budget",
    "clone_model",
    "cosine_lr",
    "describe_losses",
    "mr_transforms",
    "rampup_factor",
    "recalibrate_batchnorm",
    "run_to_end",
    "train",
    "validate_structures",
    "validation_dice",
    "validation_recon_l1",
]

import copy
import math
import time
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_sdnet.errors import InputError
from napari_sdnet.inference import predict_slices
from napari_sdnet.model import SDNet, binarise, mask_from_logits
from napari_sdnet.training.augment import (
    AugmentConfig,
    _augment_masks,
    augment_batch,
    mr_transforms,
)
from napari_sdnet.training.config import (
    LossWeights,
    Progress,
    TrainConfig,
    TrainData,
    check_budget,
)
from napari_sdnet.training.losses import (
    dice_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    structures_loss,
)
from napari_sdnet.training.state import (
    Resume,
    TrainState,
    _config_fingerprint,
    restore_run,
    snapshot_run,
)
from napari_sdnet.training.validation import (
    _set_train_mode,
    recalibrate_batchnorm,
    validate_structures,
    validation_dice,
    validation_recon_l1,
)


class FakePool:
    """The last ``size`` generated samples; queries mix new and stored ones (as in CycleGAN)."""

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size = size
        self.items: list[torch.Tensor] = []
        self._rng = generator

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        if self.size <= 0:
            return batch
        out = []
        for item in batch.detach():
            if len(self.items) < self.size:
                self.items.append(item.clone())
                out.append(item)
            elif torch.rand(1, generator=self._rng).item() < 0.5:
                idx = int(torch.randint(len(self.items), (1,), generator=self._rng))
                out.append(self.items[idx].clone())
                self.items[idx] = item.clone()
            else:
                out.append(item)
        return torch.stack(out)


class _Stream:
    """Endless shuffled batches of indices; reshuffles when it wraps."""

    def __init__(self, n: int, batch: int, rng: np.random.Generator) -> None:
        self.n, self.batch, self.rng = n, batch, rng
        self.order = rng.permutation(n)
        self.pos = 0

    def next(self) -> np.ndarray:
        out = []
        while len(out) < self.batch:
            if self.pos >= self.n:
                self.order = self.rng.permutation(self.n)
                self.pos = 0
            take = min(self.batch - len(out), self.n - self.pos)
            out.extend(self.order[self.pos : self.pos + take])
            self.pos += take
        return np.asarray(out)


def _cpu_state(model: SDNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _set_requires_grad(params: Sequence[torch.nn.Parameter], flag: bool) -> None:
    for param in params:
        param.requires_grad_(flag)


def rampup_factor(iteration: int, rampup: int) -> float:
    """Weight factor of the unsupervised/adversarial terms at ``iteration`` (0-based):
    ``exp(-5 (1 - t)^2)`` with ``t = iteration / rampup``, then 1 (``rampup`` 0: always 1)."""
    if rampup <= 0 or iteration >= rampup:
        return 1.0
    t = iteration / rampup
    return math.exp(-5.0 * (1.0 - t) ** 2)


def cosine_lr(lr: float, done: float) -> float:
    """The cosine schedule's rate when ``done`` (0-1) of the budget is spent: ``lr`` -> 0."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(max(done, 0.0), 1.0)))


class _Run:
    """One training run's state and its steps; :func:`train` drives it as a generator.

    Set-up (:meth:`__init__`), one iteration (:meth:`iterate`: generator steps on an unlabelled
    and a labelled batch, then the discriminators), :meth:`validate`, :meth:`snapshot` /
    :meth:`restore` for resuming, and :meth:`finish`, which leaves the model usable.
    """

    def __init__(self, model: SDNet, data: TrainData, config: TrainConfig) -> None:
        self.model, self.data, self.config = model, data, config
        data.check(model.config.image_size)
        self.device = device = next(model.parameters()).device
        torch.manual_seed(config.seed)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.rng = rng = np.random.default_rng(config.seed)
        self.sdnet = config.model_type == "sdnet"
        self.gan = config.model_type in ("sdnet", "gan")
        has_unlabelled = data.unlabelled_images is not None and len(data.unlabelled_images) > 0
        use_unlabelled = has_unlabelled and config.model_type != "unet"

        self.original_flags = {name: p.requires_grad for name, p in model.named_parameters()}
        self._freeze(config.freeze)
        self.g_params = [p for p in model.generator_parameters() if p.requires_grad]
        self.d_params = [p for p in model.discriminator_parameters() if p.requires_grad]
        if not self.g_params:
            self._restore_flags()
            raise InputError("every generator parameter is frozen: nothing to train")
        betas = (config.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.g_params, lr=config.lr, betas=betas)
        self.opt_d = (
            torch.optim.Adam(self.d_params, lr=config.lr, betas=betas)
            if self.gan and self.d_params
            else None
        )
        self.use_amp = config.amp and device.type == "cuda"
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=self.use_amp)

        self.structures = model.config.structures
        lab_t, real_t, self.val_t = data.targets(self.structures)
        self.lab_x = torch.from_numpy(np.asarray(data.labelled_images, np.float32))
        self.lab_m = torch.from_numpy(lab_t)  # (N, C, S, S) uint8, one channel per structure
        self.unl_x = (
            torch.from_numpy(np.asarray(data.unlabelled_images, np.float32))
            if use_unlabelled
            else None
        )
        self.real_m = torch.from_numpy(real_t)
        bs = config.batch_size
        self.lab_stream = _Stream(len(self.lab_x), bs, rng)
        self.unl_stream = _Stream(len(self.unl_x), bs, rng) if self.unl_x is not None else None
        self.real_stream = _Stream(len(self.real_m), bs, rng)
        n_stream = max(len(self.lab_x), len(data.unlabelled_images) if has_unlabelled else 0)
        self.per_epoch = config.iterations_per_epoch or max(1, math.ceil(n_stream / bs))
        max_iter = config.max_iterations
        if config.max_epochs is not None:
            by_epochs = config.max_epochs * self.per_epoch
            max_iter = by_epochs if max_iter is None else min(max_iter, by_epochs)
        self.max_iter = max_iter
        self.pool_m = FakePool(config.pool_size, self.gen)
        self.pool_x = FakePool(config.pool_size, self.gen)
        w = config.weights
        # Adversarial terms in use (a weight of 0 skips the discriminator altogether).
        self.use_mask_adv = self.gan and (w.adv_mask > 0 or w.unl_adv_mask > 0)
        self.use_image_adv = self.sdnet and (w.adv_image > 0 or w.unl_adv_image > 0)
        self.has_val = data.val_images is not None and len(data.val_images) > 0
        self.cal_images = self._calibration_images(use_unlabelled)
        aug = config.augment
        self.mr_aug = mr_transforms(aug, config.seed) if aug.enabled and aug.mr else None

        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_dice: float | None = None  # validation Dice of the kept weights
        self.best_l1: float | None = None  # and their reconstruction L1 (sdnet)
        self.best_score: float | None = None  # selection score of the kept weights (higher wins)
        self.best_iter: int | None = None
        self.stale_epochs = 0
        self.iteration = 0
        self.elapsed_before = 0.0  # seconds spent before a resume
        self.start = time.perf_counter()

    # ---------------------------------------------------------------------------- set-up
    def _freeze(self, prefixes: Sequence[str]) -> None:
        flags = self.original_flags
        unknown = [p for p in prefixes if not any(n.startswith(p) for n in flags)]
        if unknown:
            parts = sorted({".".join(n.split(".")[:2]) for n in flags})
            raise InputError(
                f"freeze: no parameter name starts with {', '.join(map(repr, unknown))}; "
                f"prefixes look like {', '.join(parts)}"
            )
        for name, param in self.model.named_parameters():
            param.requires_grad_(not any(name.startswith(p) for p in prefixes))

    def _restore_flags(self) -> None:
        for name, param in self.model.named_parameters():
            param.requires_grad_(self.original_flags[name])

    def _calibration_images(self, use_unlabelled: bool) -> np.ndarray | None:
        """Evenly spread training images for BatchNorm recalibration (no randomness used)."""
        pool = [np.asarray(self.data.labelled_images)]
        if use_unlabelled:
            pool.append(np.asarray(self.data.unlabelled_images))
        n_pool = sum(len(a) for a in pool)
        n_cal = min(self.config.bn_recalibration, n_pool)
        if not n_cal:
            return None
        idx = np.unique(np.linspace(0, n_pool - 1, n_cal).round().astype(int))
        return np.concatenate(pool)[idx]

    # ---------------------------------------------------------------------------- helpers
    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def autocast(self):
        return torch.autocast(
            device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp
        )

    def recalibrate(self) -> None:
        if self.cal_images is not None:
            _set_train_mode(self.model)
            recalibrate_batchnorm(self.model, self.cal_images, reconstructor=self.sdnet)

    def batch(self, x: torch.Tensor, idx: np.ndarray, m: torch.Tensor | None = None):
        xb = x[idx][:, None].to(self.device, non_blocking=True)
        mb = None if m is None else m[idx].to(self.device, torch.float32, non_blocking=True)
        xb, mb = augment_batch(xb, mb, self.config.augment, self.gen)
        if self.mr_aug is not None:
            xb = self.scanner_shift(xb)
        return xb, mb

    def scanner_shift(self, x: torch.Tensor, pad_value: float = -1.0) -> torch.Tensor:
        """The MR transforms per slice on the [0, 1] scale; padding stays ``pad_value``."""
        pad = x == pad_value
        unit = ((x + 1.0) / 2.0).clamp(0.0, 1.0).cpu()
        out = torch.stack([torch.as_tensor(self.mr_aug(s)).float() for s in unit])
        out = (out.clamp(0.0, 1.0) * 2.0 - 1.0).to(x.device, x.dtype)
        return torch.where(pad, torch.full_like(out, pad_value), out)

    @staticmethod
    def update(
        opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor
    ) -> bool:
        """One optimiser step on ``loss``; False (and no update) when the loss is not finite."""
        if not math.isfinite(loss.item()):
            return False
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return True

    def g_step(self, loss: torch.Tensor, losses: dict[str, float], key: str) -> bool:
        """One generator update (see :meth:`update`); when made, ``loss`` is recorded in
        ``losses`` under ``key``."""
        if not self.update(self.opt_g, self.scaler_g, loss):
            return False
        losses[key] = loss.item()
        return True

    def set_lr(self) -> None:
        """The learning rate of this iteration (cosine schedule; constant: left as it is)."""
        config = self.config
        if config.lr_schedule != "cosine":
            return
        done = self.iteration / self.max_iter if self.max_iter else 0.0
        if config.max_seconds is not None:
            done = max(done, self.elapsed / config.max_seconds)
        lr = cosine_lr(config.lr, done)
        for opt in filter(None, (self.opt_g, self.opt_d)):
            for group in opt.param_groups:
                group["lr"] = lr

    @staticmethod
    def adversarial(
        discriminator: torch.nn.Module, fake: torch.Tensor, weight: float
    ) -> torch.Tensor:
        """``weight`` times the LSGAN generator loss of ``fake`` under ``discriminator``."""
        return weight * lsgan_generator_loss(discriminator(fake))

    def image_adversarial(
        self,
        loss: torch.Tensor,
        recon: torch.Tensor,
        real: torch.Tensor,
        weight: float,
        fake_x: list[torch.Tensor],
        real_x: list[torch.Tensor],
    ) -> torch.Tensor:
        """``loss`` plus the image adversarial term (``weight``) of the reconstruction ``recon``
        of ``real`` when that term is used; pools the pair for :meth:`discriminator_step`."""
        if self.use_image_adv:
            loss = loss + self.adversarial(self.model.image_discriminator, recon, weight)
        fake_x.append(recon.detach())
        real_x.append(real)
        return loss

    # ---------------------------------------------------------------------------- steps
    def validate(self, progress: Progress) -> bool:
        """Validate, keep the weights if best; True when the selection score improved."""
        model, data = self.model, self.data
        self.recalibrate()
        if len(self.structures) == 1:
            # one pass over the validation images serves both scores
            outputs = predict_slices(model, data.val_images, batch_size=32)
            dice_val = validation_dice(
                model, data.val_images, data.val_masks, data.val_volume_ids, outputs
            )
            if self.sdnet:
                progress.val_recon_l1 = validation_recon_l1(model, data.val_images, outputs)
        else:
            per_structure, l1 = validate_structures(
                model, data.val_images, self.val_t, data.val_volume_ids
            )
            dice_val = float(np.mean(list(per_structure.values())))
            progress.val_dice_structures = per_structure
            if self.sdnet:
                progress.val_recon_l1 = l1
        _set_train_mode(model)
        score = dice_val if self.config.select_on == "dice" else -progress.val_recon_l1
        improved = self.best_score is None or score > self.best_score
        if improved:
            self.best_dice, self.best_score, self.best_iter = dice_val, score, progress.iteration
            self.best_l1 = progress.val_recon_l1
            self.best_state = _cpu_state(model)
        progress.val_dice = dice_val
        progress.best_val_dice = self.best_dice
        progress.best_val_recon_l1 = self.best_l1
        progress.best_iteration = self.best_iter
        return improved

    def iterate(self, ramp: float) -> dict[str, float] | None:
        """G step (unlabelled), G step (labelled), D step; the losses, or None if not finite.

        ``ramp`` scales the unsupervised and adversarial terms (``TrainConfig.rampup``). Terms
        whose weight is 0 (e.g. the mask adversarial ones when fine-tuning) are not computed,
        and a discriminator that no term uses is not trained. No device tensor outlives the
        iteration (except the pools of fakes).
        """
        model, w = self.model, self.config.weights
        losses: dict[str, float] = {}
        fake_m: list[torch.Tensor] = []
        fake_x: list[torch.Tensor] = []
        real_x: list[torch.Tensor] = []
        # The discriminators only score the generator's outputs here: no gradients for them.
        _set_requires_grad(self.d_params, False)
        try:
            # ---- generator step on an unlabelled batch
            if self.unl_stream is not None and (self.use_mask_adv or self.sdnet):
                xu, _ = self.batch(self.unl_x, self.unl_stream.next())
                with self.autocast():
                    mu, zu = model.decomposer(xu)
                    loss = xu.new_zeros((), dtype=torch.float32)
                    if self.use_mask_adv:
                        loss = loss + self.adversarial(
                            model.mask_discriminator, mu, ramp * w.unl_adv_mask
                        )
                    if self.sdnet:
                        recon_u = model.reconstructor(binarise(mu), zu)
                        l1 = F.l1_loss(recon_u.float(), xu.float())
                        loss = loss + ramp * w.unl_recon * l1
                        loss = self.image_adversarial(
                            loss, recon_u, xu, ramp * w.unl_adv_image, fake_x, real_x
                        )
                        losses["unl_recon_l1"] = l1.item()
                if not self.g_step(loss, losses, "unlabelled"):
                    return None
                fake_m.append(mu.detach())
            # ---- generator step on a labelled batch
            xl, ml = self.batch(self.lab_x, self.lab_stream.next(), self.lab_m)
            with self.autocast():
                if len(self.structures) == 1:
                    m, z = model.decomposer(xl)
                    dice = dice_loss(m, ml)
                else:
                    logits, z = model.decomposer.forward_logits(xl)
                    m = mask_from_logits(logits)
                    dice = structures_loss(logits, ml)
                loss = w.dice * dice
                if self.use_mask_adv:
                    loss = loss + self.adversarial(model.mask_discriminator, m, ramp * w.adv_mask)
                if self.sdnet:
                    recon_gt = model.reconstructor(ml, z)
                    recon = model.reconstructor(binarise(m), z)
                    l1_gt = F.l1_loss(recon_gt.float(), xl.float())
                    l1 = F.l1_loss(recon.float(), xl.float())
                    loss = loss + w.recon_gt * l1_gt + w.recon * l1
                    loss = self.image_adversarial(
                        loss, recon_gt, xl, ramp * w.adv_image, fake_x, real_x
                    )
                    losses["recon_l1"] = l1.item()
            losses["dice_loss"] = dice.item()
            if not self.g_step(loss, losses, "labelled"):
                return None
            fake_m.append(m.detach())
        finally:
            _set_requires_grad(self.d_params, True)
        if self.opt_d is not None and (self.use_mask_adv or self.use_image_adv):
            d_loss = self.discriminator_step(fake_m, fake_x, real_x)
            if d_loss is None:
                return None
            losses["discriminators"] = d_loss
        return losses

    def discriminator_step(self, fake_m, fake_x, real_x) -> float | None:
        """One update of the discriminators that a generator term uses; None if not finite."""
        model = self.model
        with self.autocast():
            d_loss = torch.zeros((), device=self.device)
            if self.use_mask_adv:
                real_mb = self.real_m[self.real_stream.next()].to(self.device, torch.float32)
                real_mb = _augment_masks(real_mb, self.config.augment, self.gen)
                fm = self.pool_m.query(torch.cat(fake_m))
                d_loss = d_loss + lsgan_discriminator_loss(
                    model.mask_discriminator(real_mb), model.mask_discriminator(fm)
                )
            if self.use_image_adv:
                fx = self.pool_x.query(torch.cat(fake_x))
                d_loss = d_loss + lsgan_discriminator_loss(
                    model.image_discriminator(torch.cat(real_x)),
                    model.image_discriminator(fx),
                )
        value = d_loss.item()
        if not self.update(self.opt_d, self.scaler_d, d_loss):
            return None
        return value

    def progress(self, losses: dict[str, float]) -> Progress:
        return Progress(
            iteration=self.iteration,
            epoch=(self.iteration - 1) // self.per_epoch + 1 if self.iteration else 0,
            iterations_per_epoch=self.per_epoch,
            max_iterations=self.max_iter,
            elapsed=self.elapsed,
            losses=losses,
            best_val_dice=self.best_dice,
            best_val_recon_l1=self.best_l1,
            best_iteration=self.best_iter,
        )

    def finish(self, stop_reason: str) -> None:
        """Leave the model usable: kept (or last) weights, eval mode, flags as they were;
        release what holds device memory (the model itself stays where it is)."""
        model = self.model
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        elif self.iteration > 0 and stop_reason != "diverged":
            self.recalibrate()  # no validated weights: keep the last ones, matching statistics
        model.eval()
        self._restore_flags()
        self.pool_m.items.clear()
        self.pool_x.items.clear()
        self.opt_g.state.clear()
        if self.opt_d is not None:
            self.opt_d.state.clear()
        self.best_state = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------------------- resume
    def _fingerprint(self) -> dict[str, Any]:
        data = self.data
        return {
            "config": _config_fingerprint(self.config),
            "preset": self.model.config.name,
            "structures": list(self.model.config.structures),
            "labelled": len(data.labelled_images),
            "unlabelled": 0 if self.unl_x is None else len(self.unl_x),
            "real_masks": len(self.real_m),
            "validation": 0 if not self.has_val else len(data.val_images),
        }

    def snapshot(self) -> TrainState:
        """The run as it stands between two iterations (CPU copies; see :class:`Resume`)."""
        return snapshot_run(self)

    def restore(self, state: TrainState) -> None:
        """Continue from ``state`` (a :meth:`snapshot` of a run with the same data/settings)."""
        restore_run(self, state)


def train(
    model: SDNet,
    data: TrainData,
    config: TrainConfig | None = None,
    *,
    resume: Resume | None = None,
) -> Generator[Progress, None, Progress]:
    """Train ``model`` in place on its current device, yielding :class:`Progress` per iteration.

    Stops at the first of: ``max_iterations``, ``max_epochs``, ``max_seconds``, early stopping
    (``patience`` epochs without a better validation Dice), a non-finite loss (``"diverged"``),
    or the caller closing the generator (``generator.close()``, or dropping the last reference
    to it; a ``break`` out of a ``for`` loop over a generator that is still referenced does NOT
    close it). Validation runs at the end of every ``validate_every`` epochs and once more when
    the iteration or time budget runs out, so short runs are validated too.

    In every case the model ends holding the best validated weights (or the last ones when
    there is no validation set, or when it was stopped before the first validation), in eval
    mode, with its parameters' ``requires_grad`` flags as they were. The final
    :class:`Progress` has ``done=True`` and a ``stop_reason``: ``"budget"``, ``"time"``,
    ``"early_stopping"``, ``"diverged"`` (closing the generator yields no final report).

    ``resume``: a :class:`Resume` to continue a saved run (its ``snapshot``) and/or to take
    snapshots of this one (its ``capture``, set here).
    """
    config = config or TrainConfig()
    run = _Run(model, data, config)
    if resume is not None:
        if resume.snapshot is not None:
            try:
                run.restore(resume.snapshot)
            except BaseException:
                run.finish("stopped")
                raise
        resume.capture = run.snapshot
    stop_reason = "budget"
    _set_train_mode(model)
    try:
        while run.max_iter is None or run.iteration < run.max_iter:
            # Grad mode is per thread: a caller (a reused worker thread) may have left it off.
            torch.set_grad_enabled(True)
            run.set_lr()
            losses = run.iterate(rampup_factor(run.iteration, config.rampup))
            if losses is None:
                stop_reason = "diverged"
                break
            run.iteration += 1
            progress = run.progress(losses)
            epoch = progress.epoch
            out_of_time = config.max_seconds is not None and progress.elapsed >= config.max_seconds
            last = out_of_time or (run.max_iter is not None and run.iteration >= run.max_iter)
            end_of_epoch = run.iteration % run.per_epoch == 0
            scheduled = end_of_epoch and epoch % config.validate_every == 0
            if run.has_val and (scheduled or last):
                improved = run.validate(progress)
                if scheduled:
                    run.stale_epochs = 0 if improved else run.stale_epochs + config.validate_every
            yield progress
            if out_of_time:
                stop_reason = "time"
                break
            if run.has_val and config.patience is not None and run.stale_epochs >= config.patience:
                stop_reason = "early_stopping"
                break
    except GeneratorExit:
        stop_reason = "stopped"
        raise
    finally:
        run.finish(stop_reason)
    final = run.progress({})
    final.done, final.stop_reason = True, stop_reason
    yield final
    return final


def run_to_end(gen: Generator[Progress, None, Progress]) -> Progress:
    """Drive a training generator to the end and return its final :class:`Progress`."""
    last: Progress | None = None
    for progress in gen:
        last = progress
    if last is None:  # pragma: no cover - train always yields a final report
        raise RuntimeError("training produced no report")
    return last


def clone_model(model: SDNet) -> SDNet:
    """A deep copy (same device), e.g. to keep the model before fine-tuning for undo."""
    return copy.deepcopy(model)


def describe_losses(losses: dict[str, Any]) -> str:
    """Compact text of a loss dict for progress bars."""
    return " ".join(f"{k}={v:.3f}" for k, v in losses.items())
