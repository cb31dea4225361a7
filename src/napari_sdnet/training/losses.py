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


def structures_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """Segmentation loss of a model of several structures: cross-entropy of the softmax over
    background + structures, plus ``1 -`` the soft Dice of each structure over the whole batch.

    ``logits`` ``(B, 1 + C, H, W)`` (background first), ``target`` ``(B, C, H, W)`` one-hot
    (exclusive structures). The Dice is pooled over the batch, not per image: per-image Dice
    punishes any pixel of a structure absent from a slice (e.g. the RV at the apex) so hard
    that the structure's channel can die altogether (measured: the RV channel of a 3-structure
    U-Net went to Dice 0 after 5000 iterations with per-image Dice).
    """
    target = target.float()
    index = (
        target * torch.arange(1, target.shape[1] + 1, device=target.device).view(1, -1, 1, 1)
    ).sum(1)
    ce = torch.nn.functional.cross_entropy(logits.float(), index.long())
    prob = torch.softmax(logits.float(), dim=1)[:, 1:]
    inter = (prob * target).sum(dim=(0, 2, 3))
    denom = prob.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3))
    dice = ((2.0 * inter + smooth) / (denom + smooth)).mean()
    return ce + (1.0 - dice)


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
