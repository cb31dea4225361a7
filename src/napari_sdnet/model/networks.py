"""SDNet networks in pure PyTorch: decomposer, reconstructor, PatchGAN discriminators.

Everything is parameterised by :class:`~napari_sdnet.model.presets.ModelConfig`; with the
``paper`` preset the layers follow the authors' Keras reference exactly:

* :class:`Decomposer` f: a U-Net (conv3x3 'same' -> BN -> LeakyReLU(0.3), twice per level,
  2x2 max-pool; up path = nearest x2 upsample -> conv3x3 -> BN -> concat skip -> two conv blocks)
  whose 1x1 conv + sigmoid gives the soft myocardium mask M, and a Z head on the bottleneck
  (conv256, conv64, flatten, dense32, dense16 + sigmoid) giving Z in [0, 1].
* :func:`binarise`: straight-through rounding (forward: round(M); backward: identity).
* :class:`Reconstructor` g(M, Z): Z -> dense -> dense -> reshape -> (upsample, conv, BN, LReLU)
  x2 -> an 8-channel spatial map, concatenated with the mask -> 3 residual blocks 9 wide
  (InstanceNorm) -> conv7x7 -> tanh.
* :class:`Discriminator`: PatchGAN (conv4x4 s2 x3, conv4x4 s1, conv to 1), LeakyReLU(0.2), no
  normalisation, linear output (least-squares GAN). 28x28 map at 224 input.
* :class:`SDNet`: the four networks plus the config.

Weights are initialised like Keras (Glorot-uniform kernels, zero biases) unless the config asks
for ``weight_init="pytorch"``. No device is hard-coded; the modules work under ``torch.autocast``
and ``torch.inference_mode``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_sdnet.errors import InputError
from napari_sdnet.model.presets import ModelConfig, get_preset

__all__ = [
    "Decomposer",
    "Discriminator",
    "Reconstructor",
    "SDNet",
    "SDNetOutput",
    "binarise",
    "hard_channels",
    "mask_from_logits",
    "build_model",
    "count_parameters",
]


def binarise(mask: Tensor) -> Tensor:
    """Round a soft mask to {0, 1} in the forward pass, pass gradients straight through.

    One channel (the paper's myocardium mask): ``mask + (round(mask) - mask).detach()``, the
    value is ``round(mask)``, the gradient with respect to ``mask`` is the identity. Several
    channels (a multi-channel anatomy factor whose channels and the implied background
    ``1 - sum`` are a softmax): the one-hot of the arg-max over background and channels, with
    the same straight-through gradient. Hard masks (already 0/1) are returned unchanged.
    """
    if mask.ndim != 4 or mask.shape[1] == 1:
        return mask + (torch.round(mask) - mask).detach()
    return mask + (hard_channels(mask) - mask).detach()


def hard_channels(mask: Tensor) -> Tensor:
    """One-hot (B, C, H, W) of the arg-max over background (``1 - sum``) and the C channels;
    background wins ties. One channel: ``mask >= 0.5``."""
    if mask.ndim != 4 or mask.shape[1] == 1:
        return (mask >= 0.5).to(mask.dtype)
    background = 1.0 - mask.sum(dim=1, keepdim=True)
    winner = torch.cat([background, mask], dim=1).argmax(dim=1, keepdim=True)
    channels = torch.arange(1, mask.shape[1] + 1, device=mask.device).view(1, -1, 1, 1)
    return (winner == channels).to(mask.dtype)


def mask_from_logits(logits: Tensor) -> Tensor:
    """M from the mask head: sigmoid of one channel, or the structures' part of a softmax over
    background + structures (channel 0 of ``logits`` is the background)."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits.float(), dim=1)[:, 1:].to(logits.dtype)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------- blocks
class ConvBNAct(nn.Sequential):
    """conv kxk 'same' -> BatchNorm -> LeakyReLU (the activation is optional)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        config: ModelConfig,
        slope: float | None,
        kernel: int = 3,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2),
            nn.BatchNorm2d(out_ch, eps=config.bn_eps, momentum=config.bn_momentum),
        ]
        if slope is not None:
            layers.append(nn.LeakyReLU(slope))
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """Two :class:`ConvBNAct` blocks: one U-Net level."""

    def __init__(self, in_ch: int, out_ch: int, config: ModelConfig) -> None:
        slope = config.decomposer_leaky_slope
        super().__init__(
            ConvBNAct(in_ch, out_ch, config, slope),
            ConvBNAct(out_ch, out_ch, config, slope),
        )


class UpLevel(nn.Module):
    """Nearest x2 upsample -> conv3x3 -> BN (no activation) -> concat skip -> DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int, config: ModelConfig) -> None:
        super().__init__()
        self.up = ConvBNAct(in_ch, out_ch, config, slope=None)
        self.conv = DoubleConv(2 * out_ch, out_ch, config)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """Upsample ``x``, merge it with the encoder feature ``skip``."""
        x = self.up(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(torch.cat([x, skip], dim=1))


class ZHead(nn.Module):
    """Bottleneck features -> Z: convs (BN, LReLU), flatten, dense, LReLU, dense, sigmoid."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        slope = config.decomposer_leaky_slope
        convs: list[nn.Module] = []
        in_ch = config.unet_widths[-1]
        for width in config.z_conv_widths:
            convs.append(ConvBNAct(in_ch, width, config, slope))
            in_ch = width
        self.convs = nn.Sequential(*convs)
        flat = in_ch * config.bottleneck_size**2
        self.dense = nn.Sequential(
            nn.Linear(flat, config.z_dense_width),
            nn.LeakyReLU(slope),
            nn.Linear(config.z_dense_width, config.z_dim),
        )

    def forward(self, bottleneck: Tensor) -> Tensor:
        """Z in [0, 1], shape (B, z_dim)."""
        return torch.sigmoid(self.dense(torch.flatten(self.convs(bottleneck), 1)))


class ResBlock(nn.Module):
    """conv3x3 -> IN -> LReLU -> conv3x3 -> IN -> add input -> LReLU (width unchanged)."""

    def __init__(self, width: int, config: ModelConfig) -> None:
        super().__init__()
        slope = config.reconstructor_leaky_slope
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.InstanceNorm2d(width, eps=config.in_eps, affine=True),
            nn.LeakyReLU(slope),
            nn.Conv2d(width, width, 3, padding=1),
            nn.InstanceNorm2d(width, eps=config.in_eps, affine=True),
        )
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: Tensor) -> Tensor:
        """Residual update of ``x``."""
        return self.act(x + self.body(x))


# ---------------------------------------------------------------------------------- networks
class Decomposer(nn.Module):
    """f(X) -> (M, Z): U-Net mask head and the Z head on the bottleneck.

    Input: (B, 1, S, S) images in [-1, 1], S = ``config.image_size``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.unet_widths
        self.down = nn.ModuleList()
        in_ch = 1
        for width in widths[:-1]:
            self.down.append(DoubleConv(in_ch, width, config))
            in_ch = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], config)
        # Ordered from the deepest level up to the first.
        self.up = nn.ModuleList(
            UpLevel(widths[i + 1], widths[i], config) for i in reversed(range(config.depth))
        )
        self.mask_head = nn.Conv2d(widths[0], config.mask_logit_channels, 1)
        self.z_head = ZHead(config)

    def forward_logits(
        self, x: Tensor, *, with_z: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """Mask logits and Z (B, z_dim) in [0, 1].

        Logits: (B, 1, S, S) before the sigmoid for a myocardium-only model, (B, 1 + C, S, S)
        (background first) before the softmax for C structures; :func:`mask_from_logits` gives M.
        ``with_z=False`` (inference of the mask alone) skips the Z head and returns None for Z.
        """
        _check_input(x, self.config, "image")
        skips: list[Tensor] = []
        for level in self.down:
            x = level(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        z = self.z_head(x) if with_z else None
        for up, skip in zip(self.up, reversed(skips), strict=True):
            x = up(x, skip)
        return self.mask_head(x), z

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Soft mask M (B, C, S, S) in [0, 1] (C = ``config.n_structures``) and Z (B, z_dim)."""
        logits, z = self.forward_logits(x)
        return mask_from_logits(logits), z


class Reconstructor(nn.Module):
    """g(M, Z) -> image (B, 1, S, S) in [-1, 1].

    ``mask`` is used as given: :class:`SDNet` binarises it first (:func:`binarise`).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        slope = config.reconstructor_leaky_slope
        base = config.recon_base_size
        self.dense = nn.Sequential(
            nn.Linear(config.z_dim, config.recon_dense_width),
            nn.LeakyReLU(slope),
            nn.Linear(config.recon_dense_width, config.recon_spatial_channels * base * base),
            nn.LeakyReLU(slope),
        )
        ups: list[nn.Module] = []
        in_ch = config.recon_spatial_channels
        for width in config.recon_decoder_widths:
            ups.append(nn.Upsample(scale_factor=2.0, mode="nearest"))
            ups.append(ConvBNAct(in_ch, width, config, slope))
            in_ch = width
        self.decoder = nn.Sequential(*ups)
        width = config.recon_width
        self.res_blocks = nn.Sequential(
            *(ResBlock(width, config) for _ in range(config.recon_res_blocks))
        )
        k = config.recon_final_kernel
        self.out_conv = nn.Conv2d(width, 1, k, padding=k // 2)

    def forward(self, mask: Tensor, z: Tensor) -> Tensor:
        """Reconstruct the image from a mask (B, C, S, S) and Z (B, z_dim)."""
        cfg = self.config
        _check_input(mask, cfg, "mask", channels=cfg.n_structures)
        if z.ndim != 2 or z.shape[1] != cfg.z_dim or z.shape[0] != mask.shape[0]:
            raise InputError(
                f"Z must have shape ({mask.shape[0]}, {cfg.z_dim}), got {tuple(z.shape)}"
            )
        base = cfg.recon_base_size
        spatial = self.dense(z).view(z.shape[0], cfg.recon_spatial_channels, base, base)
        spatial = self.decoder(spatial)
        x = torch.cat([spatial, mask.to(spatial.dtype)], dim=1)
        if x.device.type == "cpu":
            # Same values, another memory layout: oneDNN runs these 9-channel full-resolution
            # convs ~20% faster (forward + backward) in channels-last on CPU (measured).
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.tanh(self.out_conv(self.res_blocks(x)))


class Discriminator(nn.Module):
    """PatchGAN critic for masks (D_M) or images (D_X): linear output map (B, 1, P, P).

    All convs use Keras 'same' padding (stride-2 convs halve the size; the stride-1 4x4 convs pad
    1 before and 2 after, as TensorFlow does). P = ``config.discriminator_map_size()``: 28 at
    224 input.
    """

    def __init__(self, config: ModelConfig, in_channels: int = 1) -> None:
        super().__init__()
        self.config = config
        self.in_channels = in_channels
        k = config.disc_kernel
        layers: list[nn.Module] = []
        in_ch = in_channels
        for width, stride in zip(config.disc_widths, config.disc_strides, strict=True):
            layers.extend(_same_conv(in_ch, width, k, stride))
            layers.append(nn.LeakyReLU(config.disc_leaky_slope))
            in_ch = width
        layers.extend(_same_conv(in_ch, 1, k))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Patch scores (B, 1, P, P), unbounded (least-squares GAN targets 0 and 1)."""
        _check_input(x, self.config, "discriminator input", channels=self.in_channels)
        return self.net(x)


class SDNetOutput(NamedTuple):
    """Result of :meth:`SDNet.forward`."""

    mask: Tensor
    """Soft mask M = sigmoid(mask_logits), (B, 1, S, S) in [0, 1]."""
    mask_logits: Tensor
    """Mask logits, (B, 1, S, S)."""
    z: Tensor
    """Latent vector Z, (B, z_dim) in [0, 1]."""
    reconstruction: Tensor
    """g(binarise(M), Z), (B, 1, S, S) in [-1, 1]."""


class SDNet(nn.Module):
    """The full model: decomposer, reconstructor and the two discriminators.

    Args:
        config: a :class:`ModelConfig` or a preset name (``paper``, ``compact``, ``tiny``).
    """

    def __init__(self, config: ModelConfig | str = "paper") -> None:
        super().__init__()
        if isinstance(config, str):
            config = get_preset(config)
        self.config = config
        self.decomposer = Decomposer(config)
        self.reconstructor = Reconstructor(config)
        self.mask_discriminator = Discriminator(config, in_channels=config.n_structures)
        self.image_discriminator = Discriminator(config)
        if config.weight_init == "glorot_uniform":
            self.apply(_glorot_init)

    def forward(self, x: Tensor) -> SDNetOutput:
        """Decompose ``x`` (B, 1, S, S) and reconstruct it from the binarised mask and Z."""
        logits, z = self.decomposer.forward_logits(x)
        mask = mask_from_logits(logits)
        return SDNetOutput(mask, logits, z, self.decode(mask, z))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Soft mask (B, 1, S, S) and Z (B, z_dim) of images ``x``."""
        return self.decomposer(x)

    def decode(self, mask: Tensor, z: Tensor) -> Tensor:
        """Image g(binarise(mask), z); ``mask`` may be soft or hard (e.g. mixed latents)."""
        return self.reconstructor(binarise(mask), z)

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the decomposer and reconstructor (the generator optimiser)."""
        yield from self.decomposer.parameters()
        yield from self.reconstructor.parameters()

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of both discriminators (the discriminator optimiser)."""
        yield from self.mask_discriminator.parameters()
        yield from self.image_discriminator.parameters()

    def extra_repr(self) -> str:
        """Show the preset name in ``repr``."""
        return f"preset={self.config.name!r}, image_size={self.config.image_size}"


def build_model(config: ModelConfig | str = "paper") -> SDNet:
    """A freshly initialised :class:`SDNet` for a config or preset name."""
    return SDNet(config)


# ---------------------------------------------------------------------------------- helpers
def _check_input(x: Tensor, config: ModelConfig, what: str, channels: int = 1) -> None:
    size = config.image_size
    if x.ndim != 4 or x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
        raise InputError(
            f"{what} must have shape (batch, {channels}, {size}, {size}) for the "
            f"{config.name!r} model, got {tuple(x.shape)}"
        )


def _same_conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Conv with Keras/TensorFlow 'same' padding for an even input size: output = size / stride.

    TensorFlow pads ``max(kernel - stride, 0)`` pixels in total, the odd one after (right and
    bottom). Symmetric cases use the conv's own padding; others an explicit ``ZeroPad2d``.
    """
    total = max(kernel - stride, 0)
    before = total // 2
    if total % 2 == 0:
        return [nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=before)]
    pad = nn.ZeroPad2d((before, total - before, before, total - before))
    return [pad, nn.Conv2d(in_ch, out_ch, kernel, stride=stride)]


def _glorot_init(module: nn.Module) -> None:
    """Keras defaults: Glorot-uniform kernels, zero biases (norm layers keep 1 / 0)."""
    if isinstance(module, nn.Conv2d | nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
