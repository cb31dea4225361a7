"""SDNet losses: soft Dice, L1 reconstruction, least-squares GAN; hard Dice for evaluation."""

from __future__ import annotations

import numpy as np
import torch


def soft_dice(pred: torch.Tensor, target: torch.Tensor, smooth: float = 0.1) -> torch.Tensor:
    """Soft Dice per image and channel (smoothing in numerator and denominator), averaged.

    ``pred`` and ``target`` are ``(B, C, H, W)`` (or ``(B, H, W)``) in [0, 1]; with several
    channels (structures) each one counts alike.
    """
    start = 2 if pred.ndim == 4 else 1
    pred = pred.float().flatten(start)
    target = target.float().flatten(start)
    inter = (pred * target).sum(dim=-1)
    denom = pred.sum(dim=-1) + target.sum(dim=-1)
    return ((2.0 * inter + smooth) / (denom + smooth)).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 0.1) -> torch.Tensor:
    """``1 - soft_dice``: the supervised segmentation loss."""
    return 1.0 - soft_dice(pred, target, smooth)


def lsgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss for the generator: push D's score on fakes to 1."""
    return torch.mean((fake_scores.float() - 1.0) ** 2)


def lsgan_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss for a discriminator: real -> 1, fake -> 0 (averaged halves)."""
    real = torch.mean((real_scores.float() - 1.0) ** 2)
    fake = torch.mean(fake_scores.float() ** 2)
    return 0.5 * (real + fake)


def hard_dice(pred: np.ndarray, target: np.ndarray, empty: float = 1.0) -> float:
    """Dice of two binary arrays of any shape (a 3D volume gives the per-volume 3D Dice).

    When both are empty the structure is absent and correctly predicted absent: ``empty``.
    """
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    denom = int(pred.sum()) + int(target.sum())
    if denom == 0:
        return float(empty)
    return 2.0 * float(np.logical_and(pred, target).sum()) / denom
