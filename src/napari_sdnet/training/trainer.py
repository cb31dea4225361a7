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

import copy
import json
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_sdnet.choices import LR_SCHEDULES, MODEL_TYPES, SELECT_ON
from napari_sdnet.errors import InputError
from napari_sdnet.inference import SliceOutputs, predict_slices
from napari_sdnet.io.slices import structure_channels
from napari_sdnet.model import SDNet, binarise, hard_channels, mask_from_logits
from napari_sdnet.training.losses import (
    dice_loss,
    hard_dice,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    structures_loss,
)


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)


def check_budget(
    *,
    lr: Any = None,
    iterations: Any = None,
    epochs: Any = None,
    seconds: Any = None,
    steps: Any = None,
) -> None:
    """Raise :class:`InputError` unless each given number is usable: ``lr`` and ``seconds``
    finite and > 0, ``iterations``/``epochs``/``steps`` whole numbers >= 1 (None: not given).
    One check for training, fine-tuning, the CLI and the widgets."""
    if lr is not None and not (_is_number(lr) and math.isfinite(lr) and lr > 0):
        raise InputError(f"the learning rate (lr) must be a finite number > 0, got {lr!r}")
    if seconds is not None and not (_is_number(seconds) and math.isfinite(seconds) and seconds > 0):
        raise InputError(f"the time budget (seconds) must be a finite number > 0, got {seconds!r}")
    for name, value in (("iterations", iterations), ("epochs", epochs), ("steps", steps)):
        if value is None:
            continue
        if not (_is_number(value) and float(value).is_integer() and value >= 1):
            raise InputError(f"{name} must be a whole number >= 1, got {value!r}")


@dataclass
class LossWeights:
    """Loss weights. Labelled terms: the paper's lambdas; unlabelled: the authors' code."""

    dice: float = 10.0  # Dice(M_gt, M)
    recon_gt: float = 10.0  # L1(g(M_gt, Z), X)
    recon: float = 1.0  # L1(g(M, Z), X)
    adv_mask: float = 10.0  # LSGAN on M
    adv_image: float = 1.0  # LSGAN on g(M_gt, Z)
    unl_adv_mask: float = 10.0  # unlabelled: LSGAN on M
    unl_recon: float = 5.0  # unlabelled: L1(g(M, Z), X)
    unl_adv_image: float = 5.0  # unlabelled: LSGAN on g(M, Z)


@dataclass
class AugmentConfig:
    """On-the-fly augmentation of training batches (on the training device)."""

    enabled: bool = True
    rotation_deg: float = 15.0
    rotate90: bool = False  # random multiples of 90 degrees (for unknown orientations)
    flip: bool = True  # random left-right and up-down flips
    scale: tuple[float, float] = (0.85, 1.15)  # zoom: covers spacing differences between sites
    shift: float = 0.05  # fraction of the field of view
    gamma: tuple[float, float] = (0.7, 1.4)  # on the [0, 1] scale; keeps black and white
    contrast: tuple[float, float] = (0.85, 1.15)  # scales from black (black stays black)
    noise_std: float = 0.02
    probability: float = 0.8  # chance that a slice is augmented at all
    # Scanner and protocol shift (MONAI's MR transforms, each with its own probability): bias
    # field, random non-linear intensity curves, gamma, blur, sharpening, lower in-plane
    # resolution, noise. Off by default (the paper and the Table 1 protocol have none).
    mr: bool = False
    mr_probability: float = 1.0  # scales every MR transform's probability


def mr_transforms(cfg: AugmentConfig, seed: int):
    """The scanner-shift transforms (MONAI), seeded: applied per slice to ``(1, S, S)``
    intensities in [0, 1] (see :meth:`_Run.batch`)."""
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandBiasField,
        RandGaussianNoise,
        RandGaussianSharpen,
        RandGaussianSmooth,
        RandHistogramShift,
        RandSimulateLowResolution,
    )

    p = cfg.mr_probability
    compose = Compose(
        [
            RandBiasField(prob=0.4 * p, coeff_range=(0.0, 0.4), degree=3),
            RandHistogramShift(prob=0.4 * p, num_control_points=(5, 10)),
            RandAdjustContrast(prob=0.4 * p, gamma=(0.6, 1.6)),
            RandGaussianSmooth(prob=0.15 * p, sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0)),
            RandGaussianSharpen(prob=0.15 * p),
            RandSimulateLowResolution(
                prob=0.2 * p,
                zoom_range=(0.5, 0.9),
                downsample_mode="area",
                upsample_mode="bilinear",
            ),
            RandGaussianNoise(prob=0.25 * p, std=0.04),
        ]
    )
    compose.set_random_state(seed=seed)
    return compose


def _mr_generators(compose) -> list[Any]:
    return [compose.R, *(t.R for t in compose.transforms)]


@dataclass
class TrainConfig:
    """Settings of one training (or fine-tuning) run."""

    model_type: str = "sdnet"
    batch_size: int = 4
    lr: float = 1e-4
    beta1: float = 0.5
    max_iterations: int | None = None
    max_epochs: int | None = 200
    max_seconds: float | None = None
    # Default: one pass over the larger of the labelled and unlabelled sets, whether or not the
    # model type uses the unlabelled one, so that sdnet/unet/gan runs on the same data have
    # epochs of the same length (validation frequency, patience, max_epochs).
    iterations_per_epoch: int | None = None
    patience: int | None = 20  # epochs without a better validation score before stopping
    validate_every: int = 1  # epochs
    pool_size: int = 50
    # Training images (not augmented) whose BatchNorm statistics replace the running averages
    # before each validation and at the end (0: keep the running averages, as the reference).
    bn_recalibration: int = 32
    amp: bool = True  # mixed precision, CUDA only
    seed: int = 0
    weights: LossWeights = field(default_factory=LossWeights)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    freeze: Sequence[str] = ()  # parameter-name prefixes not to update, e.g. ("reconstructor",)
    # What picks the kept weights: "dice" (highest validation Dice; patience counts epochs
    # without a better one) or "reconstruction" (lowest validation L1 of g(round(M), Z) against
    # the image; sdnet only), e.g. to fit the reconstructor with the mask path frozen.
    select_on: str = "dice"
    # Iterations over which the unsupervised and adversarial loss weights (all terms but the
    # Dice and the labelled reconstructions) rise from ~0 to their values, along
    # exp(-5 (1 - t)^2) (the ramp-up of Laine & Aila, ICLR 2017). 0: no ramp (the paper).
    # Keeps a model trained from scratch on very few labels from being taken over by the
    # unlabelled terms before it segments at all (measured: docs/benchmarks.md, Table 1).
    rampup: int = 0
    # Learning rate over the budget: "constant" (the paper) or "cosine" (from lr down to 0 at
    # the end of the budget, measured in iterations or, with max_seconds, in time, whichever
    # is further along; used by fine-tuning, whose result is the last weights).
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise InputError(
                f"unknown model type {self.model_type!r}; choose one of {', '.join(MODEL_TYPES)}"
            )
        if self.batch_size < 1:
            raise InputError("batch size must be >= 1")
        if self.select_on not in SELECT_ON:
            raise InputError(
                f"unknown selection {self.select_on!r}; choose one of {', '.join(SELECT_ON)}"
            )
        if self.select_on == "reconstruction" and self.model_type != "sdnet":
            raise InputError(
                f"selection on reconstruction needs an sdnet model, not {self.model_type!r} "
                "(its reconstructor is not trained)"
            )
        if self.max_iterations is None and self.max_epochs is None and self.max_seconds is None:
            raise InputError("give at least one of max_iterations, max_epochs, max_seconds")
        # lr 0 is allowed here (e.g. to recompute statistics); user-facing entry points
        # (train_model, finetune) ask for lr > 0 through check_budget
        if not (_is_number(self.lr) and math.isfinite(self.lr) and self.lr >= 0):
            raise InputError(f"the learning rate must be a finite number >= 0, got {self.lr!r}")
        check_budget(
            iterations=self.max_iterations, epochs=self.max_epochs, seconds=self.max_seconds
        )
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(
                f"unknown lr schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}"
            )
        if self.rampup < 0:
            raise InputError(f"rampup must be >= 0 iterations, got {self.rampup}")


@dataclass
class TrainData:
    """Model-grid arrays for training. Images (N, S, S) in [-1, 1], masks (N, S, S) binary."""

    labelled_images: np.ndarray
    labelled_masks: np.ndarray
    unlabelled_images: np.ndarray | None = None
    real_masks: np.ndarray | None = None  # "real" masks for D_M; default: the labelled masks
    val_images: np.ndarray | None = None
    val_masks: np.ndarray | None = None
    val_volume_ids: Sequence[str] | None = None  # per val slice: Dice is per volume (3D)
    # ACDC label maps (N, S, S) on the model grid, for models of several structures (the
    # masks above are the myocardium alone): labelled, "real" for D_M, validation.
    labelled_labels: np.ndarray | None = None
    real_labels: np.ndarray | None = None
    val_labels: np.ndarray | None = None

    @classmethod
    def from_slice_sets(
        cls, labelled, unlabelled=None, validation=None, real_masks=None, real_labels=None
    ):
        """Build from :class:`~napari_sdnet.io.datasets.SliceSet` objects (their ``labels``
        too, when loaded)."""
        return cls(
            labelled_images=labelled.images,
            labelled_masks=labelled.masks,
            unlabelled_images=None if unlabelled is None else unlabelled.images,
            real_masks=real_masks,
            val_images=None if validation is None else validation.images,
            val_masks=None if validation is None else validation.masks,
            val_volume_ids=None if validation is None else list(validation.volume_ids),
            labelled_labels=labelled.labels,
            real_labels=real_labels,
            val_labels=None if validation is None else validation.labels,
        )

    def targets(
        self, structures: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(labelled, real, validation)`` target channels ``(N, C, S, S)`` uint8 for a model
        of ``structures``: the myocardium masks, or one channel per structure from the labels."""
        if tuple(structures) == ("myocardium",):

            def one(masks):
                return None if masks is None else (np.asarray(masks) > 0)[:, None].astype(np.uint8)

            real = self.real_masks if self.real_masks is not None else self.labelled_masks
            return one(self.labelled_masks), one(real), one(self.val_masks)
        if self.labelled_labels is None:
            raise InputError(
                f"a model of {', '.join(structures)} needs label maps of every structure "
                "(labelled_labels); these data hold myocardium masks only"
            )
        if self.val_images is not None and self.val_labels is None:
            raise InputError("validation label maps (val_labels) are missing")
        real = self.real_labels if self.real_labels is not None else self.labelled_labels
        val = None if self.val_labels is None else structure_channels(self.val_labels, structures)
        return (
            structure_channels(self.labelled_labels, structures),
            structure_channels(real, structures),
            val,
        )

    def check(self, size: int) -> None:
        """Raise :class:`InputError` unless the arrays fit a model of input ``size``."""
        arrays = {
            "labelled images": self.labelled_images,
            "labelled masks": self.labelled_masks,
            "unlabelled images": self.unlabelled_images,
            "real masks": self.real_masks,
            "validation images": self.val_images,
            "validation masks": self.val_masks,
            "labelled label maps": self.labelled_labels,
            "real label maps": self.real_labels,
            "validation label maps": self.val_labels,
        }
        for name, arr in arrays.items():
            if arr is None:
                if name in ("labelled images", "labelled masks"):
                    raise InputError(f"{name} are missing")
                continue
            if not isinstance(arr, np.ndarray):
                raise InputError(f"{name} must be a NumPy array, got {type(arr).__name__}")
            if arr.ndim != 3 or arr.shape[1:] != (size, size):
                raise InputError(
                    f"{name} have shape {arr.shape}; the model needs (N, {size}, {size})"
                )
            if name.endswith("images") and not np.isfinite(arr).all():
                raise InputError(f"{name} contain NaN or infinite values")
        if len(self.labelled_images) == 0:
            raise InputError("no labelled slice to train on")
        if len(self.labelled_images) != len(self.labelled_masks):
            raise InputError(
                f"{len(self.labelled_images)} labelled images but "
                f"{len(self.labelled_masks)} labelled masks"
            )
        if self.real_masks is not None and len(self.real_masks) == 0:
            raise InputError("real masks for the mask discriminator are empty (give None)")
        if (self.val_images is None) != (self.val_masks is None):
            raise InputError("give both validation images and masks, or neither")
        if self.val_images is not None and self.val_masks is not None:
            if len(self.val_images) != len(self.val_masks):
                raise InputError(
                    f"{len(self.val_images)} validation images but "
                    f"{len(self.val_masks)} validation masks"
                )
            if self.val_volume_ids is not None and len(self.val_volume_ids) != len(self.val_images):
                raise InputError(
                    f"{len(self.val_volume_ids)} validation volume ids for "
                    f"{len(self.val_images)} validation images"
                )


@dataclass
class Progress:
    """One report from the training loop."""

    iteration: int
    epoch: int
    iterations_per_epoch: int
    max_iterations: int | None
    elapsed: float
    losses: dict[str, float] = field(default_factory=dict)
    val_dice: float | None = None  # set on iterations where validation ran
    val_recon_l1: float | None = None  # sdnet: validation L1 of g(round(M), Z), same iterations
    # several structures: validation Dice of each (val_dice is their mean), same iterations
    val_dice_structures: dict[str, float] | None = None
    best_val_dice: float | None = None
    best_val_recon_l1: float | None = None  # sdnet: the kept weights' validation L1
    best_iteration: int | None = None
    done: bool = False
    stop_reason: str | None = None

    @property
    def fraction(self) -> float | None:
        """Share of the iteration budget used, when there is one."""
        if self.max_iterations:
            return min(1.0, self.iteration / self.max_iterations)
        return None


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


def _random_affine(
    b: int, cfg: AugmentConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample affine matrices ``(B, 2, 3)`` for ``F.affine_grid`` and the ``apply`` flags.

    ``theta`` maps output to input coordinates (normalised, x first): rotation, zoom (> 1
    magnifies), optional flips, shift. Samples with ``apply == 0`` get the identity. Always draws
    the same random numbers for a given ``b`` and config, so runs are reproducible.
    """

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=gen).mul(hi - lo).add(lo)

    apply = (torch.rand(b, generator=gen) < cfg.probability).float()
    angle = torch.deg2rad(uniform(-cfg.rotation_deg, cfg.rotation_deg)) * apply
    if cfg.rotate90:
        angle = angle + torch.randint(0, 4, (b,), generator=gen).float() * (math.pi / 2) * apply
    zoom = 1.0 + (uniform(*cfg.scale) - 1.0) * apply
    flip_x = torch.where((torch.rand(b, generator=gen) < 0.5) & (apply > 0) & cfg.flip, -1.0, 1.0)
    flip_y = torch.where((torch.rand(b, generator=gen) < 0.5) & (apply > 0) & cfg.flip, -1.0, 1.0)
    shift = torch.stack([uniform(-cfg.shift, cfg.shift), uniform(-cfg.shift, cfg.shift)], 1) * 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip_x, -sin * flip_y
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip_x, cos * flip_y
    theta[:, :, 2] = shift * apply[:, None]
    return theta, apply


def _warp(x: torch.Tensor, theta: torch.Tensor, mode: str, pad: float) -> torch.Tensor:
    """Resample ``x`` (B, C, S, S) with ``theta``; points outside the input get ``pad``."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    # grid_sample pads with zeros: shift the values so that zero padding means ``pad``.
    return F.grid_sample(x - pad, grid, mode=mode, align_corners=False) + pad


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor | None,
    cfg: AugmentConfig,
    gen: torch.Generator,
    pad_value: float = -1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random affine (rotation, flips, zoom, shift) and intensity changes of (B, 1, S, S) batches.

    Masks get the same geometry (nearest neighbour, so they stay binary and on the same
    anatomy). Padding stays exactly ``pad_value`` in images (pixels moved in from outside the
    field of view, and pixels that were ``pad_value`` already) and 0 in masks: the intensity
    changes (gamma, contrast, noise) touch only the other pixels. Random numbers come from
    ``gen`` (CPU), so the same seed gives the same batch on any device.
    """
    if not cfg.enabled:
        return images, masks
    b = images.shape[0]
    dev = images.device
    theta, apply = _random_affine(b, cfg, gen)
    out = _warp(images, theta, "bilinear", pad_value)
    padding = _warp((images == pad_value).to(images.dtype), theta, "nearest", 1.0) > 0.5
    if masks is not None:
        masks = _warp(masks, theta, "nearest", 0.0)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=gen).mul(hi - lo).add(lo)

    # Intensity, on the [0, 1] scale: gamma (keeps both ends), then a contrast factor that
    # scales from the dark end (black stays black, bright tissue saturates or dims, as a
    # different clipping percentile would do), then additive Gaussian noise.
    gamma = torch.exp(uniform(math.log(cfg.gamma[0]), math.log(cfg.gamma[1])) * apply)
    contrast = 1.0 + (uniform(*cfg.contrast) - 1.0) * apply
    unit = ((out + 1.0) / 2.0).clamp(0.0, 1.0)
    unit = unit ** gamma.to(dev, out.dtype)[:, None, None, None]
    unit = unit * contrast.to(dev, out.dtype)[:, None, None, None]
    changed = unit.clamp(0.0, 1.0) * 2.0 - 1.0
    if cfg.noise_std > 0:
        noise = torch.randn(out.shape, generator=gen).to(dev, out.dtype) * cfg.noise_std
        changed = (changed + noise * apply.to(dev, out.dtype)[:, None, None, None]).clamp(-1, 1)
    out = torch.where(padding, torch.full_like(out, pad_value), changed)
    return out, masks


def _augment_masks(masks: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """The geometric part of :func:`augment_batch` for masks alone (the real masks for D_M)."""
    if not cfg.enabled:
        return masks
    theta, _ = _random_affine(masks.shape[0], cfg, gen)
    return _warp(masks, theta, "nearest", 0.0)


def validation_dice(
    model: SDNet,
    images: np.ndarray,
    masks: np.ndarray,
    volume_ids: Sequence[str] | None,
    outputs: SliceOutputs | None = None,
) -> float:
    """Mean hard myocardium Dice, per volume (3D) when ``volume_ids`` is given, else per slice.

    ``outputs``: the model's outputs for ``images`` when already computed (not run again).
    """
    outputs = outputs if outputs is not None else predict_slices(model, images, batch_size=32)
    prob = outputs.probability
    pred = prob >= 0.5
    ids = list(volume_ids) if volume_ids is not None else [str(i) for i in range(len(images))]
    scores = []
    for vid in dict.fromkeys(ids):
        sel = np.asarray([i == vid for i in ids])
        scores.append(hard_dice(pred[sel], masks[sel] > 0))
    return float(np.mean(scores)) if scores else float("nan")


def validate_structures(
    model: SDNet,
    images: np.ndarray,
    targets: np.ndarray,
    volume_ids: Sequence[str] | None,
    batch_size: int = 32,
) -> tuple[dict[str, float], float]:
    """Per-structure mean hard Dice (3D per volume when ``volume_ids`` is given) of a model of
    several structures on ``images`` ``(N, S, S)`` against ``targets`` ``(N, C, S, S)``, and the
    mean absolute error of g(binarise(M), Z) against the images (one pass)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hard, err = [], 0.0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.asarray(images[start : start + batch_size], np.float32))
            x = x[:, None].to(device)
            mask, z = model.decomposer(x)
            hard.append(hard_channels(mask).to(torch.bool).cpu().numpy())
            recon = model.reconstructor(binarise(mask), z)
            err += float((recon.float() - x).abs().sum())
    model.train(was_training)
    pred = np.concatenate(hard)
    ids = list(volume_ids) if volume_ids is not None else [str(i) for i in range(len(images))]
    scores: dict[str, float] = {}
    for c, name in enumerate(model.config.structures):
        per_volume = []
        for vid in dict.fromkeys(ids):
            sel = np.asarray([i == vid for i in ids])
            per_volume.append(hard_dice(pred[sel, c], targets[sel, c] > 0))
        scores[name] = float(np.mean(per_volume)) if per_volume else float("nan")
    return scores, err / max(1, np.asarray(images).size)


def validation_recon_l1(
    model: SDNet, images: np.ndarray, outputs: SliceOutputs | None = None
) -> float:
    """Mean absolute error of the reconstruction g(round(M), Z) against ``images`` ([-1, 1]).

    ``outputs``: the model's outputs for ``images`` when already computed (not run again).
    """
    outputs = outputs if outputs is not None else predict_slices(model, images, batch_size=32)
    recon = outputs.reconstruction
    return float(np.mean(np.abs(recon - np.asarray(images, np.float32))))


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


def _set_train_mode(model: SDNet) -> None:
    """Train mode, except BatchNorm layers whose parameters are all frozen: those stay in eval
    mode so that their running statistics (part of the weights) do not change either."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def recalibrate_batchnorm(
    model: SDNet, images: np.ndarray, batch_size: int = 16, reconstructor: bool = True
) -> None:
    """Recompute the running statistics of every trainable BatchNorm layer from ``images``.

    With BatchNorm momentum 0.01 (Keras' 0.99) the running averages lag the weights by about
    a hundred iterations, so a model validated or saved early in training behaves worse in
    eval mode than in training mode. This replaces them by the plain average over ``images``
    (``(N, S, S)``, model grid) under the current weights: a forward pass of the whole model
    in train mode, without gradients. BatchNorm layers in eval mode (frozen ones, see
    :func:`train`) keep their statistics, and so does the reconstructor when
    ``reconstructor`` is False (the U-Net and GAN baselines never use it).
    """
    networks = [model.decomposer, model.reconstructor] if reconstructor else [model.decomposer]
    layers = [
        m
        for net in networks
        for m in net.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
    ]
    if not layers or len(images) == 0:
        return
    device = next(model.parameters()).device
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                chunk = np.asarray(images[start : start + batch_size], np.float32)
                x = torch.from_numpy(chunk)[:, None].to(device)
                mask, z = model.decomposer(x)
                if reconstructor:
                    model.reconstructor(binarise(mask), z)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum


@dataclass
class TrainState:
    """Everything a run needs to continue where it stopped (see :class:`Resume`).

    ``tensors``: flat ``name -> CPU tensor`` (model, kept weights, optimiser moments, pools of
    fakes, random generator); ``meta``: JSON-friendly counters, scores, NumPy random state and
    the settings the run was started with (checked on resume).
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


@dataclass
class Resume:
    """Continue a run from ``snapshot``, and/or get ``capture()`` to snapshot this one.

    Pass it to :func:`train`; once the generator has started, ``capture()`` returns a
    :class:`TrainState` of the run as it stands at the current yield (call it only between
    yields). Resuming with the same data and settings continues exactly as the uninterrupted
    run would have (same batches, augmentation and optimiser state); the budgets
    (``max_iterations``, ``max_epochs``, ``max_seconds``, ``patience``) may be changed.
    """

    snapshot: TrainState | None = None
    capture: Any = None  # Callable[[], TrainState], set by train()


#: TrainConfig fields a resumed run may change (budgets); every other setting must match.
_RESUMABLE_CHANGES = ("max_iterations", "max_epochs", "max_seconds", "patience")


def _config_fingerprint(config: TrainConfig) -> dict[str, Any]:
    from dataclasses import asdict

    out = asdict(config)
    for key in _RESUMABLE_CHANGES:
        out.pop(key)
    out.pop("amp")
    return json.loads(json.dumps(out, default=list))


def _flatten(prefix: str, value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move the tensors of a nested state (optimiser ``state_dict``) into ``tensors``; return
    the JSON-friendly rest, tensors replaced by ``{"tensor": name}``."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().to("cpu").clone().contiguous()
        return {"tensor": prefix}
    if isinstance(value, dict):
        return {str(k): _flatten(f"{prefix}/{k}", v, tensors) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_flatten(f"{prefix}/{i}", v, tensors) for i, v in enumerate(value)]
    return value


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"tensor"}:
            return tensors[value["tensor"]]
        return {k: _unflatten(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    return value


def _optimizer_state(saved: dict[str, Any]) -> dict[str, Any]:
    """An optimiser ``state_dict`` read back from JSON (integer parameter indices)."""
    return {
        "state": {int(k): v for k, v in saved["state"].items()},
        "param_groups": saved["param_groups"],
    }


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

    def g_step(self, loss: torch.Tensor) -> bool:
        """One generator update (see :meth:`update`)."""
        return self.update(self.opt_g, self.scaler_g, loss)

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
                        adv_m = lsgan_generator_loss(model.mask_discriminator(mu))
                        loss = loss + ramp * w.unl_adv_mask * adv_m
                    if self.sdnet:
                        recon_u = model.reconstructor(binarise(mu), zu)
                        l1 = F.l1_loss(recon_u.float(), xu.float())
                        loss = loss + ramp * w.unl_recon * l1
                        if self.use_image_adv:
                            adv_x = lsgan_generator_loss(model.image_discriminator(recon_u))
                            loss = loss + ramp * w.unl_adv_image * adv_x
                        losses["unl_recon_l1"] = l1.item()
                        fake_x.append(recon_u.detach())
                        real_x.append(xu)
                if not self.g_step(loss):
                    return None
                losses["unlabelled"] = loss.item()
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
                    adv_m = lsgan_generator_loss(model.mask_discriminator(m))
                    loss = loss + ramp * w.adv_mask * adv_m
                if self.sdnet:
                    recon_gt = model.reconstructor(ml, z)
                    recon = model.reconstructor(binarise(m), z)
                    l1_gt = F.l1_loss(recon_gt.float(), xl.float())
                    l1 = F.l1_loss(recon.float(), xl.float())
                    loss = loss + w.recon_gt * l1_gt + w.recon * l1
                    if self.use_image_adv:
                        adv_x = lsgan_generator_loss(model.image_discriminator(recon_gt))
                        loss = loss + ramp * w.adv_image * adv_x
                    losses["recon_l1"] = l1.item()
                    fake_x.append(recon_gt.detach())
                    real_x.append(xl)
            if not self.g_step(loss):
                return None
            losses["dice_loss"] = dice.item()
            losses["labelled"] = loss.item()
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
        tensors: dict[str, torch.Tensor] = {}
        for key, value in self.model.state_dict().items():
            tensors[f"model/{key}"] = value.detach().to("cpu").clone().contiguous()
        for key, value in (self.best_state or {}).items():
            tensors[f"best/{key}"] = value.clone().contiguous()
        for name, pool in (("pool_m", self.pool_m), ("pool_x", self.pool_x)):
            if pool.items:
                tensors[name] = torch.stack([t.to("cpu") for t in pool.items]).contiguous()
        tensors["torch_generator"] = self.gen.get_state().clone()
        mr_states = []
        for i, rng in enumerate(_mr_generators(self.mr_aug) if self.mr_aug is not None else []):
            kind, keys, pos, has_gauss, cached = rng.get_state()
            tensors[f"mr_aug/{i}"] = torch.from_numpy(np.asarray(keys, np.int64))
            mr_states.append([kind, int(pos), int(has_gauss), float(cached)])
        tensors["torch_global"] = torch.get_rng_state().clone()
        streams = {}
        for name in ("lab_stream", "unl_stream", "real_stream"):
            stream = getattr(self, name)
            if stream is not None:
                tensors[f"{name}/order"] = torch.from_numpy(np.asarray(stream.order, np.int64))
                streams[name] = stream.pos
        meta = {
            "fingerprint": self._fingerprint(),
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "stale_epochs": self.stale_epochs,
            "best_dice": self.best_dice,
            "best_l1": self.best_l1,
            "best_score": self.best_score,
            "best_iter": self.best_iter,
            "has_best": self.best_state is not None,
            "numpy_rng": self.rng.bit_generator.state,
            "mr_aug": mr_states,
            "streams": streams,
            "opt_g": _flatten("opt_g", self.opt_g.state_dict(), tensors),
            "opt_d": None
            if self.opt_d is None
            else _flatten("opt_d", self.opt_d.state_dict(), tensors),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
        }
        return TrainState(tensors=tensors, meta=meta)

    def restore(self, state: TrainState) -> None:
        """Continue from ``state`` (a :meth:`snapshot` of a run with the same data/settings)."""
        meta, tensors = state.meta, state.tensors
        mine, theirs = self._fingerprint(), meta.get("fingerprint")
        if theirs != mine:
            diff = sorted(
                k for k in set(mine) | set(theirs or {}) if mine.get(k) != (theirs or {}).get(k)
            )
            if "config" in diff:
                changed = sorted(
                    k
                    for k in mine["config"]
                    if mine["config"][k] != (theirs or {}).get("config", {}).get(k)
                )
                diff = [d for d in diff if d != "config"] + [f"setting {k}" for k in changed]
            raise InputError(
                "the saved training state was made with other data or settings "
                f"({', '.join(diff)} differ); resume with the same command"
            )
        model_state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
        self.model.load_state_dict(model_state)
        if meta["has_best"]:
            self.best_state = {
                k[len("best/") :]: v.clone() for k, v in tensors.items() if k.startswith("best/")
            }
        for name, pool in (("pool_m", self.pool_m), ("pool_x", self.pool_x)):
            pool.items = [t.to(self.device) for t in tensors[name]] if name in tensors else []
        self.gen.set_state(tensors["torch_generator"])
        torch.set_rng_state(tensors["torch_global"])
        self.rng.bit_generator.state = meta["numpy_rng"]
        if self.mr_aug is not None:
            for i, (rng, (kind, pos, has_gauss, cached)) in enumerate(
                zip(_mr_generators(self.mr_aug), meta["mr_aug"], strict=True)
            ):
                keys = tensors[f"mr_aug/{i}"].numpy().astype(np.uint32)
                rng.set_state((kind, keys, pos, has_gauss, cached))
        for name, pos in meta["streams"].items():
            stream = getattr(self, name)
            stream.order = tensors[f"{name}/order"].numpy().copy()
            stream.pos = int(pos)
        self.opt_g.load_state_dict(_optimizer_state(_unflatten(meta["opt_g"], tensors)))
        if self.opt_d is not None and meta["opt_d"] is not None:
            self.opt_d.load_state_dict(_optimizer_state(_unflatten(meta["opt_d"], tensors)))
        if meta["scaler_g"]:
            self.scaler_g.load_state_dict(meta["scaler_g"])
        if meta["scaler_d"]:
            self.scaler_d.load_state_dict(meta["scaler_d"])
        self.iteration = int(meta["iteration"])
        self.stale_epochs = int(meta["stale_epochs"])
        self.best_dice, self.best_l1 = meta["best_dice"], meta["best_l1"]
        self.best_score, self.best_iter = meta["best_score"], meta["best_iter"]
        self.elapsed_before = float(meta["elapsed"])
        self.start = time.perf_counter()


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
