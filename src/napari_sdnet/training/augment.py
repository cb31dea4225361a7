"""On-the-fly augmentation of training batches: the geometric and intensity changes of
:func:`augment_batch` (seeded, on the training device) and the scanner/protocol-shift MR
transforms of :func:`mr_transforms` (MONAI). Used by :mod:`napari_sdnet.training.trainer`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


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
