"""Validation during training (per-volume Dice, per-structure Dice, reconstruction error) and
the BatchNorm recalibration that precedes it. Used by :mod:`napari_sdnet.training.trainer`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from napari_sdnet.inference import SliceOutputs, predict_slices
from napari_sdnet.model import SDNet, binarise, hard_channels
from napari_sdnet.training.losses import hard_dice


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
