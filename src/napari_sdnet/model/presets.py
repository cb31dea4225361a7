"""Model configurations (:class:`ModelConfig`) and the shipped presets.

A :class:`ModelConfig` holds every number that shapes the SDNet networks. It is frozen, it
round-trips exactly through :meth:`ModelConfig.to_dict` / :meth:`ModelConfig.from_dict` (and
through JSON), and it travels inside every checkpoint so that a model file rebuilds the networks
it was trained with.

Presets
-------
``paper``
    Exactly the published SDNet (Chartsias et al., MICCAI 2018, authors' Keras code): 224x224
    input at 1.37 mm/pixel, U-Net with 64-128-256-512-1024 filters, Z head conv256, conv64,
    dense32, dense16 (sigmoid), reconstructor and PatchGAN discriminators as in the reference.
``compact``
    The same structure, narrowed so that training and fine-tuning are practical on a laptop CPU:
    128x128 input at 1.7 mm/pixel (218 mm field of view), U-Net 8-16-32-64-128 filters, Z head
    conv64, conv32, dense32, dense16, the paper's reconstructor, discriminators 16-32-64-128.
    6.1 MB of float32 weights in all (4.8 MB for the decomposer + reconstructor). Chosen by
    measurement (``benchmarks/bench_model_presets.py``), see below.
``tiny``
    64x64 input, 4 base filters, depth 3, narrow heads: for tests only (milliseconds).

PatchGAN map sizes (``discriminator_map_size``): paper 28x28, compact 16x16, tiny 8x8.

Measurements
------------
2-core Intel Xeon (Sapphire Rapids, KVM guest), torch 2.13 CPU, ``torch.set_num_threads(2)``,
float32. Times in seconds; the fastest of >= 3 runs during which other processes used < 0.25
cores (the machine was shared). "seg" = decomposer only (segmentation), "full" = with the
reconstruction, both on a batch of 16 slices in ``torch.inference_mode``; "240 sl." = 15 x seg;
"train" = one full iteration at batch 4 (generator step on an unlabelled batch, generator step
on a labelled batch, one step of both discriminators; Adam). Run-to-run noise is about +-20%.
Candidates ``c<size>_<mm>_b<base>`` use the compact heads unless marked ``paperheads``;
``narrowrec`` also halves the reconstructor's spatial map (8 -> 4 channels).

Rows marked * were measured before the reconstructor's CPU channels-last layout was added
(which makes a training iteration 0.05-0.1 s faster at 128-160 px); ``paper`` (+) could only be
measured while other processes used about one of the two cores, so its times are upper bounds.

=========================== ========== ======== ============= ============= ======== ======
config                      FoV mm     params   MB all / gen  seg / full    240 sl.  train
=========================== ========== ======== ============= ============= ======== ======
paper (224 @ 1.37, b64) +   307        40.49 M  154.4 / 149.2 14.1 / 17.6   211      12.5
c224_1.37_b16 *             307        4.54 M   17.3 / 16.0   0.60 / 0.85   9.0      1.79
c224_1.37_b8 *              307        2.85 M   10.9 / 9.5    0.26 / 0.49   3.9      1.26
c192_1.37_b8 *              263        2.36 M   9.0 / 7.7     0.19 / 0.35   2.8      0.96
c160_1.37_b16_paperheads *  219        5.35 M   20.4 / 15.1   0.31 / 0.43   4.6      1.12
c160_1.37_b16 *             219        3.63 M   13.9 / 12.5   0.30 / 0.41   4.4      0.93
c160_1.37_b12 *             219        2.65 M   10.1 / 8.8    0.25 / 0.35   3.7      0.86
c160_1.37_b8                219        1.94 M   7.4 / 6.1     0.18 / 0.32   2.7      0.59
c160_1.37_b8_narrowrec      219        1.51 M   5.8 / 4.4     0.17 / 0.24   2.6      0.49
c144_1.52_b8                219        1.76 M   6.7 / 5.4     0.10 / 0.18   1.5      0.52
c128_1.37_b16 *             175        3.29 M   12.6 / 11.2   0.19 / 0.27   2.9      0.64
c128_1.7_b12                218        2.31 M   8.8 / 7.5     0.16 / 0.23   2.3      0.53
**compact** = c128_1.7_b8   218        1.60 M   6.1 / 4.8     0.09 / 0.16   1.3      0.41
tiny (64 @ 4.0, b4)         256        0.08 M   0.3 / 0.3     0.01 / 0.02   0.2      0.09
=========================== ========== ======== ============= ============= ======== ======

Why this compact:

* Field of view. On the ACDC NIfTI patients the myocardium reaches up to 62 mm from the image
  centre (all labels, RV included: 101 mm); on the ACDC H5 volumes up to 54 px, i.e. <= 90 mm
  at <= 1.68 mm/pixel. A half field of view of ~109 mm (218 mm) keeps every heart inside with
  a margin; 128 px at 1.37 mm (175 mm) would clip some.
* Cost. About half of a training iteration at 160 px is the reconstructor, whose widths the
  paper fixes (three 9-channel residual blocks at full resolution, called three times per
  iteration), so narrowing the U-Net alone cannot reach the ~0.5 s target at 160 px (b8: 0.59 s).
  128 px at 1.7 mm keeps the 218 mm view and gives 0.41 s per iteration and ~1.3 s per 240
  slices. 1.7 mm is close to ACDC's native 1.37-1.68 mm; the myocardium (6-12 mm thick) stays
  4-7 pixels wide.
* Width. Base 8 (U-Net 8..128) is the cheapest tested; base 12 costs +30% per iteration.
  The Z head (64, 32) and discriminators (16..128) are scaled down with the U-Net; the paper's
  heads would add 1.7 M parameters and ~20% to an iteration (c160 b16: 1.12 vs 0.93 s).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any

from napari_sdnet.choices import PRESET_NAMES, STRUCTURES
from napari_sdnet.errors import InputError, dataclass_kwargs

__all__ = ["ModelConfig", "PRESETS", "get_preset", "preset_names"]

_TUPLE_FIELDS = ("z_conv_widths", "recon_decoder_widths", "disc_widths", "disc_strides")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the SDNet networks.

    The defaults are the ``paper`` values. Widths are channel counts; sizes are pixels.

    Attributes:
        name: preset name (informational; travels with checkpoints).
        image_size: S, the side of the square model-grid input slice (pixels).
        pixel_spacing_mm: in-plane spacing (mm/pixel) the inputs are resampled to. Not used by
            the networks; it records what preprocessing the weights expect
            (``image_size * pixel_spacing_mm`` is the field of view).
        base_filters: filters of the first U-Net level; level ``i`` has ``base * 2**i``.
        depth: number of U-Net down levels (max-pools); the bottleneck has
            ``base * 2**depth`` filters at ``S / 2**depth`` pixels.
        z_dim: length of the latent vector Z (sigmoid, in [0, 1]).
        z_conv_widths: 3x3 conv widths of the Z head, applied to the bottleneck.
        z_dense_width: hidden dense width of the Z head.
        recon_dense_width: hidden dense width of the reconstructor's Z branch.
        recon_spatial_channels: channels of the reshaped dense output at
            ``S / 2**len(recon_decoder_widths)`` pixels.
        recon_decoder_widths: conv widths after each x2 upsample of the Z branch; the last one is
            the width of the spatial map concatenated with the mask.
        recon_res_blocks: number of residual blocks (each ``recon_decoder_widths[-1] + 1`` wide).
        recon_final_kernel: kernel of the last conv (to 1 channel, then tanh).
        disc_widths: conv widths of the PatchGAN discriminators (a final conv to 1 follows).
        disc_strides: strides of those convs (same length as ``disc_widths``).
        disc_kernel: kernel size of all discriminator convs.
        decomposer_leaky_slope: LeakyReLU slope in the decomposer (U-Net and Z head).
        reconstructor_leaky_slope: LeakyReLU slope in the reconstructor (Keras default 0.3).
        disc_leaky_slope: LeakyReLU slope in the discriminators.
        bn_momentum: BatchNorm momentum in PyTorch's convention (Keras 0.99 -> 0.01).
        bn_eps: BatchNorm epsilon (Keras default 1e-3).
        in_eps: InstanceNorm epsilon (keras-contrib default 1e-3).
        weight_init: ``"glorot_uniform"`` (Keras default: Glorot-uniform weights, zero biases)
            or ``"pytorch"`` (PyTorch's default initialisation).
        structures: what the spatial factor M holds, one channel each, in the order of
            :data:`napari_sdnet.choices.STRUCTURES`: ``("myocardium",)`` (the paper: a binary
            myocardium mask, sigmoid) or ``("rv", "myocardium", "lv")`` (a multi-channel
            anatomy factor: softmax over background + the structures, binarised to one-hot).
    """

    name: str = "paper"
    image_size: int = 224
    pixel_spacing_mm: float = 1.37
    base_filters: int = 64
    depth: int = 4
    z_dim: int = 16
    z_conv_widths: tuple[int, ...] = (256, 64)
    z_dense_width: int = 32
    recon_dense_width: int = 32
    recon_spatial_channels: int = 16
    recon_decoder_widths: tuple[int, ...] = (16, 8)
    recon_res_blocks: int = 3
    recon_final_kernel: int = 7
    disc_widths: tuple[int, ...] = (32, 64, 128, 256)
    disc_strides: tuple[int, ...] = (2, 2, 2, 1)
    disc_kernel: int = 4
    decomposer_leaky_slope: float = 0.3
    reconstructor_leaky_slope: float = 0.3
    disc_leaky_slope: float = 0.2
    bn_momentum: float = 0.01
    bn_eps: float = 1e-3
    in_eps: float = 1e-3
    weight_init: str = "glorot_uniform"
    structures: tuple[str, ...] = ("myocardium",)

    def __post_init__(self) -> None:
        if not isinstance(self.structures, tuple):
            object.__setattr__(self, "structures", tuple(self.structures))
        # Normalise sequences to tuples so that lists from JSON compare equal.
        for key in _TUPLE_FIELDS:
            value = getattr(self, key)
            if not isinstance(value, tuple):
                object.__setattr__(self, key, tuple(value))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        def positive_int(key: str) -> None:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"model config: {key} must be a positive integer, got {value!r}")

        for key in (
            "image_size",
            "base_filters",
            "depth",
            "z_dim",
            "z_dense_width",
            "recon_dense_width",
            "recon_spatial_channels",
            "recon_final_kernel",
            "disc_kernel",
        ):
            positive_int(key)
        if isinstance(self.recon_res_blocks, bool) or not isinstance(self.recon_res_blocks, int):
            raise InputError("model config: recon_res_blocks must be an integer")
        if self.recon_res_blocks < 0:
            raise InputError("model config: recon_res_blocks must be >= 0")
        for key in _TUPLE_FIELDS:
            values = getattr(self, key)
            if not values or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values
            ):
                raise InputError(
                    f"model config: {key} must be a non-empty list of positive integers, "
                    f"got {list(values)!r}"
                )
        if len(self.disc_strides) != len(self.disc_widths):
            raise InputError("model config: disc_strides and disc_widths must have equal length")
        if any(s not in (1, 2) for s in self.disc_strides):
            raise InputError("model config: disc_strides must be 1 or 2")
        if self.recon_final_kernel % 2 != 1:
            raise InputError("model config: recon_final_kernel must be odd")
        for key in (
            "pixel_spacing_mm",
            "decomposer_leaky_slope",
            "reconstructor_leaky_slope",
            "disc_leaky_slope",
            "bn_momentum",
            "bn_eps",
            "in_eps",
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"model config: {key} must be a number, got {value!r}")
        if self.pixel_spacing_mm <= 0:
            raise InputError("model config: pixel_spacing_mm must be > 0")
        if not 0 < self.bn_momentum <= 1 or self.bn_eps <= 0 or self.in_eps <= 0:
            raise InputError("model config: bn_momentum must be in (0, 1], eps values > 0")
        if self.weight_init not in ("glorot_uniform", "pytorch"):
            raise InputError(
                f"model config: weight_init must be 'glorot_uniform' or 'pytorch', "
                f"got {self.weight_init!r}"
            )
        if not isinstance(self.name, str) or not self.name:
            raise InputError("model config: name must be a non-empty string")
        known = [s for s in STRUCTURES if s in self.structures]
        if (
            list(self.structures) != known
            or len(set(self.structures)) != len(self.structures)
            or "myocardium" not in self.structures
        ):
            raise InputError(
                f"model config: structures must include 'myocardium' and come from "
                f"{', '.join(STRUCTURES)} in that order, got {list(self.structures)!r}"
            )
        unet_factor = 2**self.depth
        if self.image_size % unet_factor:
            raise InputError(
                f"model config: image_size {self.image_size} must be divisible by "
                f"2**depth = {unet_factor}"
            )
        recon_factor = 2 ** len(self.recon_decoder_widths)
        if self.image_size % recon_factor:
            raise InputError(
                f"model config: image_size {self.image_size} must be divisible by "
                f"{recon_factor} (one x2 upsample per reconstructor decoder width)"
            )
        disc_factor = 2 ** sum(1 for s in self.disc_strides if s == 2)
        if self.image_size % disc_factor:
            raise InputError(
                f"model config: image_size {self.image_size} must be divisible by "
                f"{disc_factor} (one halving per stride-2 discriminator conv)"
            )

    # ------------------------------------------------------------------ derived sizes
    @property
    def unet_widths(self) -> tuple[int, ...]:
        """Filters per U-Net level, the bottleneck last (paper: 64, 128, 256, 512, 1024)."""
        return tuple(self.base_filters * 2**i for i in range(self.depth + 1))

    @property
    def bottleneck_size(self) -> int:
        """Side of the bottleneck feature map (paper: 14)."""
        return self.image_size // 2**self.depth

    @property
    def recon_base_size(self) -> int:
        """Side of the reconstructor's reshaped dense output (paper: 56)."""
        return self.image_size // 2 ** len(self.recon_decoder_widths)

    @property
    def n_structures(self) -> int:
        """Channels of the spatial factor M (paper: 1, the myocardium)."""
        return len(self.structures)

    @property
    def mask_logit_channels(self) -> int:
        """Channels of the mask head: 1 (sigmoid) or background + structures (softmax)."""
        return 1 if self.n_structures == 1 else self.n_structures + 1

    @property
    def myocardium_channel(self) -> int:
        """Index of the myocardium in M."""
        return self.structures.index("myocardium")

    @property
    def recon_width(self) -> int:
        """Channels of the reconstructor's residual blocks: spatial map + M (paper: 8 + 1)."""
        return self.recon_decoder_widths[-1] + self.n_structures

    @property
    def field_of_view_mm(self) -> float:
        """Side of the model grid in mm (paper: 224 * 1.37 = 306.9 mm)."""
        return self.image_size * self.pixel_spacing_mm

    def discriminator_map_size(self) -> int:
        """Side of the PatchGAN output map (paper: 28 at 224 input).

        All convs use Keras 'same' padding, so each stride-2 conv halves the size and stride-1
        convs keep it: ``image_size / 8`` with the default strides (224 -> 28, 160 -> 20,
        64 -> 8).
        """
        return self.image_size // 2 ** sum(1 for s in self.disc_strides if s == 2)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (tuples become lists); ``from_dict`` inverts it exactly."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild a config from :meth:`to_dict` output (e.g. read from a checkpoint).

        Unknown keys are an error. Missing keys take the default (paper) value, so a field added
        later must default to the behaviour that older checkpoints were trained with.

        Raises:
            InputError: for a non-dict, unknown keys or invalid values.
        """
        kwargs = dataclass_kwargs(
            data, cls, "model config", "model config has unknown keys: {names}", kind=dict
        )
        if "structures" in kwargs:
            value = kwargs["structures"]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise InputError(f"model config: structures must be a list of names, got {value!r}")
            kwargs["structures"] = tuple(value)
        for key in _TUPLE_FIELDS:
            if key in kwargs:
                value = kwargs[key]
                if not isinstance(value, list | tuple):
                    raise InputError(f"model config: {key} must be a list, got {value!r}")
                kwargs[key] = tuple(value)
        try:
            return cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - defensive
            raise InputError(f"invalid model config: {exc}") from exc

    def to_json(self) -> str:
        """Compact JSON text of :meth:`to_dict` (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        """Inverse of :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"model config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


PAPER = ModelConfig(name="paper")

COMPACT = ModelConfig(
    name="compact",
    image_size=128,
    pixel_spacing_mm=1.7,
    base_filters=8,
    z_conv_widths=(64, 32),
    disc_widths=(16, 32, 64, 128),
)

TINY = ModelConfig(
    name="tiny",
    image_size=64,
    pixel_spacing_mm=4.0,
    base_filters=4,
    depth=3,
    z_conv_widths=(16, 8),
    z_dense_width=16,
    recon_dense_width=16,
    recon_spatial_channels=4,
    recon_decoder_widths=(8, 4),
    recon_res_blocks=1,
    disc_widths=(4, 8, 16, 16),
)

PRESETS: dict[str, ModelConfig] = {c.name: c for c in (PAPER, COMPACT, TINY)}
# the CLI offers napari_sdnet.choices.PRESET_NAMES without importing this module (torch)
assert tuple(PRESETS) == PRESET_NAMES, "napari_sdnet.choices.PRESET_NAMES is out of date"


def preset_names() -> tuple[str, ...]:
    """Names of the shipped presets."""
    return tuple(PRESETS)


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name`` (``paper``, ``compact`` or ``tiny``).

    Raises:
        InputError: for an unknown name; the message lists the valid ones.
    """
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        valid = ", ".join(PRESETS)
        raise InputError(f"unknown model preset {name!r}; choose one of: {valid}") from None
