"""Fine-tuning a model on a few painted slices (:func:`finetune`, SDNet's semi-supervised
losses without the mask adversarial terms). Re-exported by :mod:`napari_sdnet.api`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sdnet.choices import labels_text
from napari_sdnet.errors import InputError, TrainingError
from napari_sdnet.io.slices import ACDC_LABELS, MYOCARDIUM, model_grid_labels
from napari_sdnet.models import Model, _as_model
from napari_sdnet.preprocess import preprocess_labels, preprocess_volume
from napari_sdnet.segmentation import THRESHOLD, _check_batch_size, _check_image, _resolve_spacing

if TYPE_CHECKING:
    from napari_sdnet.training.trainer import Progress


def _painted_slices(labels: Any, image_shape: tuple[int, ...]) -> np.ndarray:
    """The label map checked against the image; returns it as uint8."""
    lab = np.asarray(labels)
    if tuple(lab.shape) != tuple(image_shape):
        raise InputError(
            f"labels have shape {lab.shape} but the image has shape {tuple(image_shape)}; "
            "paint the labels on the image's own grid"
        )
    if lab.dtype.kind == "b":
        raise InputError(
            "labels are boolean; use ACDC values (2 = myocardium) so it is clear what is painted"
        )
    if lab.dtype.kind not in "iuf":
        raise InputError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.dtype.kind == "f" and (not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab))):
        raise InputError("labels must hold whole numbers (they have fractional or NaN values)")
    if lab.size and (lab.min() < 0 or lab.max() > 255):
        raise InputError(f"label values must be in 0-255, got {lab.min()}..{lab.max()}")
    return lab.astype(np.uint8)


#: Fine-tuning defaults shared by the API, the CLI and the widget (docs/benchmarks.md).
#: The budget is a number of steps, about a minute on an idle 2-core CPU and seconds on a GPU,
#: so that the result does not depend on the machine: a minute on a GPU would be thousands of
#: steps, and many steps over-fit a few painted slices (Sunnybrook, 2 given slices: 314 steps
#: +0.020 Dice (seed 0), 150 steps +0.032 (3 seeds)). lr 3e-4 was chosen on the Sunnybrook
#: study with 2 given slices: 1e-4 barely moved the model in 150 steps, 1e-3 overshot.
FINETUNE_STEPS = 150


FINETUNE_LR = 3e-4


#: The learning rate falls from ``lr`` to 0 along a cosine over the budget (time or steps),
#: so the returned (last) weights are not those of a mid-stride Adam step. Measured on the
#: Sunnybrook study, 2 given slices, 150 steps, seeds 0/1: Dice gain +0.034/+0.035 with it,
#: +0.017/+0.015 with a constant rate (docs/benchmarks.md).
FINETUNE_SCHEDULE = "cosine"


#: Fine-tuning whose result segments the painted slices themselves worse than the start by
#: more than this (hard myocardium Dice, model grid) is refused: it has broken the model.
FINETUNE_WORSE_BY = 0.05


#: ... when the start segmented them at all (an untrained model has nothing to lose).
FINETUNE_CHECK_FROM = 0.2


def _painted_dice(network: Any, data: Any) -> float:
    """Hard Dice of ``network`` on the painted (labelled) model-grid slices: the myocardium's,
    or for a model of several structures the mean over the structures painted there."""
    from napari_sdnet.inference import predict_slices
    from napari_sdnet.segmentation import structure_labels
    from napari_sdnet.training.losses import hard_dice

    out = predict_slices(network, data.labelled_images, batch_size=16)
    if data.labelled_labels is None:
        return float(hard_dice(out.probability >= THRESHOLD, data.labelled_masks > 0))
    structures = network.config.structures
    predicted = structure_labels(np.moveaxis(out.probability, 1, 0), structures)
    values = [ACDC_LABELS[s] for s in structures if (data.labelled_labels == ACDC_LABELS[s]).any()]
    return float(np.mean([hard_dice(predicted == v, data.labelled_labels == v) for v in values]))


def _painted_mask(lab: np.ndarray, structures: Sequence[str]) -> np.ndarray:
    """Per 2D slice: does ``lab`` hold any painted structure of the model (its labels)?
    Raises :class:`InputError`, naming the values found, when no slice does."""
    values = [ACDC_LABELS[s] for s in structures]
    painted = np.isin(lab, values).reshape(-1, *lab.shape[-2:]).any(axis=(1, 2))
    if painted.any():
        return painted
    found = sorted(int(v) for v in np.unique(lab))
    what = labels_text(values)
    if tuple(structures) == ("myocardium",):
        how = "paint the myocardium with label 2"
        convention = "the myocardium is label 2, the ACDC convention"
    else:
        how = "paint RV cavity 1, myocardium 2 or LV cavity 3"
        convention = "the ACDC convention is 1 RV, 2 myocardium, 3 LV"
    if found and found != [0]:
        hint = f" (the labels hold the values {found[:8]}; {convention})"
    else:
        hint = " (the labels are empty)"
    raise InputError(f"no slice has {what} painted; {how} on at least one slice{hint}")


def finetune_loss_weights() -> Any:
    """SDNet's losses for fine-tuning on a few painted slices: the paper's, WITHOUT the
    adversarial mask terms.

    The mask discriminator's "real" masks would be only the few painted ones: it learns them by
    heart within a few steps and then pushes every prediction towards those shapes. Measured on
    Sunnybrook (2 given slices, 150 steps, seed 1): Dice on the other slices 0.719 with the
    mask adversarial terms, 0.771 without. The Dice, reconstruction (labelled and unlabelled
    slices) and image adversarial terms stay, so the unpainted slices still teach the model
    through the reconstruction (SDNet's semi-supervision). The mask discriminator is not trained
    either (it is kept as it was).
    """
    from napari_sdnet.training.trainer import LossWeights

    return LossWeights(adv_mask=0.0, unl_adv_mask=0.0)


def finetune(
    model: Model,
    image: Any,
    labels: Any,
    spacing: Sequence[float] | None = None,
    *,
    seconds: float | None = None,
    steps: int | None = None,
    lr: float = FINETUNE_LR,
    lr_schedule: str = FINETUNE_SCHEDULE,
    freeze: Sequence[str] = (),
    device: Any = None,
    batch_size: int = 4,
    seed: int = 0,
    stop: Callable[[], bool] | None = None,
) -> Generator[Progress, None, Model]:
    """Fine-tune a COPY of ``model`` on the slices painted in ``labels``; yields progress.

    Every 2D slice (every ``(t, z)`` slice of a 4D study) of ``labels`` that holds at least one
    myocardium pixel (ACDC value 2) is a labelled training slice; for a model of several
    structures, one that holds any of them (1 RV, 2 myocardium, 3 LV), and all of its
    structures are learnt from it (unpainted pixels are background). Every other slice of the
    study is part of the unlabelled pool (SDNet's semi-supervised losses). The study is
    preprocessed exactly as :func:`segment` does (one normalisation for the whole array).
    Training is :func:`napari_sdnet.training.trainer.train` with ``model_type="sdnet"`` and
    :func:`finetune_loss_weights` (no adversarial mask terms), augmentation on and no
    validation, until the ``seconds`` or ``steps`` budget (whichever comes first) or until
    ``stop()`` returns True.

    Use it as a generator (``for progress in finetune(...)``; the return value is the new
    model) or with :func:`run`: ``new = api.run(api.finetune(model, image, labels, ...))``.

    Args:
        model: the base model; it is never modified.
        image: ``(y, x)``, ``(z, y, x)`` or ``(t, z, y, x)``.
        labels: same shape, ACDC values: 2 = myocardium (other values are ignored); for a model
            of several structures also 1 = RV cavity, 3 = LV cavity.
        spacing: as for :func:`segment`.
        seconds / steps: the budget; at least one is required.
        lr: Adam learning rate (the start of the schedule).
        lr_schedule: ``"cosine"`` (default: from ``lr`` down to 0 at the end of the budget;
            with both budgets, whichever is further along) or ``"constant"``.
        freeze: parameter-name prefixes not to train, e.g. ``("reconstructor",)`` or
            ``("decomposer.down",)``.
        device: where to train; default the model's device.
        batch_size: slices per batch.
        seed: seeds the batch order and the augmentation.
        stop: polled after every step; when it returns True training ends early and the model
            so far is returned.

    Returns (as the generator's return value):
        A new :class:`Model` whose ``info.training["finetuned"]`` records the base model, the
        labelled/unlabelled slice counts, steps and seconds. Its metrics are cleared (the base
        model's metrics no longer apply; they are kept in that record).

    Raises:
        InputError: no slice with myocardium (label 2; a three-structure model: any of 1-3)
            painted, labels of another shape, no budget, or bad image/spacing (as
            :func:`segment`).
    """
    from napari_sdnet.device import resolve_device
    from napari_sdnet.training.checkpoint import CheckpointInfo
    from napari_sdnet.training.trainer import (
        AugmentConfig,
        TrainConfig,
        TrainData,
        check_budget,
        clone_model,
        train,
    )

    model = _as_model(model)
    arr = _check_image(image)
    lab = _painted_slices(labels, arr.shape)
    if seconds is None and steps is None:
        raise InputError("give a fine-tuning budget: seconds=... and/or steps=...")
    check_budget(lr=lr, seconds=seconds, steps=steps)
    batch_size = _check_batch_size(batch_size)

    structures = model.config.structures
    painted = _painted_mask(lab, structures)
    in_plane, _ = _resolve_spacing(spacing, arr.ndim, model.preprocess)
    slices, grid = preprocess_volume(arr, in_plane, model.preprocess)
    size = model.config.image_size
    flat = slices.reshape(-1, size, size)
    lab_flat = lab.reshape(-1, *lab.shape[-2:])[painted]  # the painted slices only
    if len(structures) == 1:
        labels_grid = None
        masks = preprocess_labels((lab_flat == MYOCARDIUM).astype(np.uint8), grid)
    else:
        # the painted slices' ACDC labels on the model grid (a painted slice counts as labelled
        # for every structure: where none is painted is background); the myocardium from them
        known = np.where(np.isin(lab_flat, [ACDC_LABELS[s] for s in structures]), lab_flat, 0)
        labels_grid = model_grid_labels(known, grid)
        masks = (labels_grid == MYOCARDIUM).astype(np.uint8)
    data = TrainData(
        labelled_images=flat[painted],
        labelled_masks=masks,
        unlabelled_images=flat[~painted] if (~painted).any() else None,
        labelled_labels=labels_grid,
    )
    n_labelled, n_unlabelled = int(painted.sum()), int((~painted).sum())

    dev = model.device if device is None else resolve_device(device)
    if not model.info.has_discriminators:
        warnings.warn(
            "the model file holds no discriminators; fine-tuning starts them from scratch",
            UserWarning,
            stacklevel=2,
        )
    network = clone_model(model.network).to(dev)
    before = _painted_dice(network, data)
    # A U-Net/GAN baseline is fine-tuned as what it is (Dice on the painted slices): its
    # reconstructor was never trained, and a few steps would not make it so.
    sdnet = model.model_type == "sdnet"
    config = TrainConfig(
        model_type="sdnet" if sdnet else "unet",
        batch_size=batch_size,
        lr=float(lr),
        max_iterations=None if steps is None else int(steps),
        max_epochs=None,
        max_seconds=None if seconds is None else float(seconds),
        patience=None,
        seed=seed,
        augment=AugmentConfig(enabled=True),
        weights=finetune_loss_weights(),
        # the user's choice, and the mask discriminator (its loss is not used, see above)
        freeze=(*freeze, "mask_discriminator"),
        lr_schedule=lr_schedule,
    )
    trainer = train(network, data, config)
    last: Progress | None = None
    try:
        for progress in trainer:
            last = progress
            yield progress
            if progress.done:
                break
            if stop is not None and stop():
                trainer.close()  # leaves the network usable, in eval mode
                break
    finally:
        trainer.close()
    if last is not None and last.stop_reason == "diverged":
        raise TrainingError(
            f"fine-tuning diverged at step {last.iteration} (the loss became NaN or infinite); "
            "nothing was kept. Try a lower learning rate"
        )
    from napari_sdnet.training.checkpoint import non_finite_tensors

    bad = non_finite_tensors(network.state_dict())
    if bad:
        raise TrainingError(
            f"fine-tuning produced NaN or infinite weights (e.g. {bad[0]}); nothing was kept. "
            "Try a lower learning rate"
        )
    after = _painted_dice(network, data)
    dice_of = "myocardium" if len(structures) == 1 else "mean structure"
    if before >= FINETUNE_CHECK_FROM and after < before - FINETUNE_WORSE_BY:
        raise TrainingError(
            f"fine-tuning made the model worse on the painted slices themselves ({dice_of} "
            f"Dice {before:.3f} -> {after:.3f}); nothing was kept. Try a lower learning rate "
            "or check the painted labels"
        )
    iterations = 0 if last is None else last.iteration
    elapsed = 0.0 if last is None else last.elapsed
    base = model.info
    record = {
        "base_model": model.source,
        "base_training": {k: v for k, v in base.training.items() if k != "finetuned"},
        "base_metrics": dict(base.metrics),
        "labelled_slices": n_labelled,
        "unlabelled_slices": n_unlabelled,
        "image_shape": [int(s) for s in arr.shape],
        "spacing": [float(s) for s in in_plane],
        "steps": int(iterations),
        "seconds": round(float(elapsed), 2),
        "lr": float(lr),
        "lr_schedule": lr_schedule,
        "freeze": list(freeze),
        "painted_dice_before": round(before, 4),
        "painted_dice_after": round(after, 4),
    }
    training = dict(base.training)
    training["finetuned"] = [*base.training.get("finetuned", []), record]
    info = CheckpointInfo(
        model_config=base.model_config,
        preprocess=base.preprocess,
        model_type=base.model_type,
        training=training,
        metrics={},
        has_discriminators=True,
    )
    network.eval()
    return Model(network=network, info=info, device=dev, source=f"finetuned({model.source})")
