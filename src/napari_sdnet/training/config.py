"""What a training run is given: its settings (:class:`TrainConfig`, :class:`LossWeights`,
:func:`check_budget`), its data (:class:`TrainData`) and what it reports (:class:`Progress`).
Used by :mod:`napari_sdnet.training.trainer`, which re-exports them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sdnet.choices import LR_SCHEDULES, MODEL_TYPES, SELECT_ON
from napari_sdnet.errors import InputError
from napari_sdnet.io.slices import structure_channels
from napari_sdnet.training.augment import AugmentConfig


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
