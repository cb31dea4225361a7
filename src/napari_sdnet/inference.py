"""Batched inference on model-grid slices (pure PyTorch; shared by the API, trainer and widgets).

The fast path (docs/benchmarks.md, "Predict speed"):

* **An inference copy of the networks.** The decomposer and reconstructor are copied once per
  set of weights (the copy is rebuilt whenever a parameter or buffer changes, e.g. after a
  training step): BatchNorm folded into the preceding convolution (eval mode: exact up to
  rounding) and, on CPU and CUDA, the weights in ``channels_last`` layout, which oneDNN and
  cuDNN run 2-3x faster than NCHW for these small-channel convolutions. The model itself is
  never changed (training, checkpoints and its memory layout stay as they are).
* **Precision.** ``fp32``, ``bf16`` or ``fp16`` autocast (:func:`resolve_precision`): ``auto``
  is bf16 on CPUs with native bf16 arithmetic (AMX or AVX512-BF16, see
  :func:`napari_sdnet.device.cpu_has_native_bf16`; masks agree with fp32 at Dice >= 0.995 on
  the real sample study, ``tests/test_inference.py``), fp16 on CUDA, fp32 elsewhere. The mask
  head (a 1x1 convolution) and the Z head's dense layers always run in fp32, so the
  probabilities and Z are not rounded to 8 mantissa bits.
* **No wasted work.** ``outputs`` says what is wanted: the mask alone skips the Z head and the
  reconstructor, ``("mask", "z")`` skips the reconstructor.
* **CUDA**: inputs are copied from pinned host memory asynchronously, outputs come back into
  pinned buffers, one synchronisation per batch.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_sdnet.device import PRECISION_CHOICES, cpu_has_native_bf16
from napari_sdnet.errors import InputError
from napari_sdnet.model import SDNet
from napari_sdnet.model.networks import binarise, mask_from_logits

__all__ = [
    "ALL_OUTPUTS",
    "OUTPUT_NAMES",
    "SliceOutputs",
    "decode_latents",
    "default_batch_size",
    "inference_copy",
    "iter_predict",
    "mask_path",
    "predict_slices",
    "resolve_precision",
]

#: What :func:`iter_predict` can compute: the soft mask M, the latent vector Z, g(round(M), Z).
OUTPUT_NAMES = ("mask", "z", "reconstruction")
ALL_OUTPUTS = OUTPUT_NAMES


@dataclass
class SliceOutputs:
    """Model outputs for ``N`` slices on the model grid (None: not asked for)."""

    probability: np.ndarray | None  # float32 (N, S, S): soft mask M ((N, C, S, S) for C > 1)
    z: np.ndarray | None  # float32 (N, z_dim)
    reconstruction: np.ndarray | None  # float32 (N, S, S): g(round(M), Z) in [-1, 1]


# --------------------------------------------------------------------------------- settings
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for a precision setting on ``device``.

    ``auto`` (or None): bf16 on a CPU with native bf16 arithmetic, fp16 on CUDA, else fp32.
    ``bf16`` is accepted on any CPU (without native support it is emulated, and slower) and on
    CUDA GPUs that support it; ``fp16`` on CUDA only; other devices (MPS) run fp32.

    Raises:
        InputError: an unknown setting, or one the device cannot run.
    """
    dev = torch.device(device)
    choice = "auto" if precision is None else str(precision).strip().lower()
    if choice not in PRECISION_CHOICES:
        raise InputError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}"
        )
    if choice == "auto":
        if dev.type == "cuda":
            return "fp16"
        if dev.type == "cpu" and cpu_has_native_bf16():
            return "bf16"
        return "fp32"
    if choice != "fp32" and dev.type not in ("cpu", "cuda"):
        raise InputError(f"{choice} inference is not supported on {dev.type}; use fp32")
    if choice == "fp16" and dev.type == "cpu":
        raise InputError("fp16 inference needs a GPU; on the CPU use --precision bf16 or fp32")
    if choice == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("this CUDA GPU has no bf16 support; use --precision fp16 or fp32")
    return choice


def default_batch_size(device: torch.device | str, precision: str) -> int:
    """Slices per forward pass chosen for throughput (compact preset, docs/benchmarks.md).

    CPU: 8 in fp32 (the activations of a batch stay in the L2 cache; on the 2-core EPYC batch
    16 took 30 % longer), 32 in bf16 (half the bytes per activation; 16 took 6 % longer); GPU:
    64 (not measured).
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        return 32 if precision == "bf16" else 8
    return 64


def _autocast(device: torch.device, precision: str = "auto"):
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None or device.type not in ("cpu", "cuda"):
        return torch.autocast(
            device.type if device.type in ("cpu", "cuda") else "cpu", enabled=False
        )
    return torch.autocast(device.type, dtype=dtype)


def _check_outputs(outputs: Collection[str]) -> frozenset[str]:
    wanted = frozenset([outputs] if isinstance(outputs, str) else outputs)
    unknown = sorted(wanted - set(OUTPUT_NAMES))
    if unknown:
        raise InputError(f"unknown output(s) {unknown}; choose from {list(OUTPUT_NAMES)}")
    if not wanted:
        raise InputError("ask for at least one output (mask, z or reconstruction)")
    return wanted


# ------------------------------------------------------------------------ the inference copy
class _FP32(nn.Module):
    """Runs ``module`` in fp32 even under autocast (cheap heads whose outputs users read)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(
            x.device.type if x.device.type in ("cpu", "cuda") else "cpu", enabled=False
        ):
            return self.module(x.float())


def _fold_batchnorm(module: nn.Module) -> None:
    """Fold every ``Conv2d -> BatchNorm2d`` pair of the Sequentials in ``module`` (eval mode).

    ``bn(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(var + eps)`` and
    ``b' = (b - mean) * g / sqrt(var + eps) + beta``; the BatchNorm becomes an Identity.
    """
    for seq in module.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if not (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and bn.running_mean is not None
            ):
                continue
            with torch.no_grad():
                scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
                weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
                bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
                bias = (bias - bn.running_mean.double()) * scale + bn.bias.double()
                conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
                conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
            setattr(seq, bn_name, nn.Identity())


class _InferenceNets(nn.Module):
    """Eval-only copies of the decomposer and reconstructor (see the module docstring)."""

    def __init__(self, model: SDNet, channels_last: bool) -> None:
        super().__init__()
        decomposer = copy.deepcopy(model.decomposer).eval()
        reconstructor = copy.deepcopy(model.reconstructor).eval()
        for net in (decomposer, reconstructor):
            _fold_batchnorm(net)
            for p in net.parameters():
                p.requires_grad_(False)
            for m in net.modules():
                if isinstance(m, nn.LeakyReLU):
                    m.inplace = True  # no autograd here: save a copy of every activation
        decomposer.mask_head = _FP32(decomposer.mask_head)
        decomposer.z_head.dense = _FP32(decomposer.z_head.dense)
        self.decomposer = decomposer
        self.reconstructor = reconstructor
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def decompose(self, x: torch.Tensor, with_z: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Soft mask M (B, C, S, S) and Z (fp32; None when not wanted: the Z head is skipped)."""
        logits, z = self.decomposer.forward_logits(self.layout(x), with_z=with_z)
        return mask_from_logits(logits.float()), None if z is None else z.float()

    def decode(self, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """g(binarise(mask), z), fp32 (the values of SDNet.decode)."""
        return self.reconstructor(self.layout(binarise(mask)), z).float()


_CACHE: weakref.WeakKeyDictionary[SDNet, tuple[tuple, _InferenceNets]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _weights_key(model: SDNet, channels_last: bool) -> tuple | None:
    """Identifies the current weights: storage, layout and in-place version of every tensor."""
    try:
        return (channels_last,) + tuple(
            (t.device, t.data_ptr(), t._version)
            for module in (model.decomposer, model.reconstructor)
            for t in (*module.parameters(), *module.buffers())
        )
    except RuntimeError:  # inference tensors track no version: never cache those
        return None


def inference_copy(model: SDNet, channels_last: bool | None = None) -> _InferenceNets:
    """The eval-only copy of ``model``'s decomposer and reconstructor for its current weights.

    Cached per model and rebuilt when any weight, BatchNorm statistic or device changes.
    ``channels_last`` defaults to True on CPU and CUDA.
    """
    device = next(model.parameters()).device
    if channels_last is None:
        channels_last = device.type in ("cpu", "cuda")
    key = _weights_key(model, channels_last)
    with _CACHE_LOCK:
        hit = _CACHE.get(model) if key is not None else None
        if hit is not None and hit[0] == key:
            return hit[1]
    nets = _InferenceNets(model, channels_last)
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[model] = (key, nets)
    return nets


class _MaskPath(nn.Module):
    """image (B, 1, S, S) -> soft mask M (B, C, S, S), fp32: what :func:`iter_predict` computes
    for ``outputs=("mask",)`` (no Z head, no reconstructor)."""

    def __init__(self, nets: _InferenceNets) -> None:
        super().__init__()
        self.nets = nets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, _ = self.nets.decomposer.forward_logits(self.nets.layout(x), with_z=False)
        logits = logits.float()
        if logits.shape[1] == 1:
            return mask_from_logits(logits)
        # mask_from_logits' softmax over the channels, written as element-wise operations:
        # ONNX Runtime's Softmax on the channel axis of (B, 4, 128, 128) took 14 ms a batch
        # (23 % of the graph's time); these take 2 ms, to the same values (within 2e-7)
        e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
        return e[:, 1:] / e.sum(dim=1, keepdim=True)


def mask_path(model: SDNet) -> nn.Module:
    """The mask path of ``model``'s inference copy (BatchNorm folded, NCHW) as one module:
    what the ONNX Runtime engine exports (:mod:`napari_sdnet.onnx_engine`)."""
    return _MaskPath(inference_copy(model, channels_last=False)).eval()


# ------------------------------------------------------------------------------- transfers
class _Transfer:
    """Host <-> device copies: pinned and asynchronous on CUDA, plain elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def to_device(self, arr: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(arr))
        if not self.cuda:
            return host.to(self.device)
        return host.pin_memory().to(self.device, non_blocking=True)

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.cuda:
            return tensor.cpu()
        out = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        out.copy_(tensor, non_blocking=True)
        return out

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.numpy()


def _setup(
    model: SDNet, precision: str, batch_size: int | None
) -> tuple[torch.device, str, int, _InferenceNets, _Transfer]:
    """What one inference run needs: ``(device, precision, batch_size, nets, transfer)``, the
    model's device, the precision resolved there (:func:`resolve_precision`), the batch size
    (None: :func:`default_batch_size`), the model's :func:`inference_copy` and a
    :class:`_Transfer` to that device."""
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    if batch_size is None:
        batch_size = default_batch_size(device, precision)
    return device, precision, batch_size, inference_copy(model), _Transfer(device)


# ------------------------------------------------------------------------------- inference
def iter_predict(
    model: SDNet,
    images: np.ndarray,
    batch_size: int | None = 16,
    *,
    precision: str = "fp32",
    outputs: Collection[str] = ALL_OUTPUTS,
) -> Iterator[tuple[int, SliceOutputs]]:
    """Run ``model`` over ``images`` (N, S, S) in batches, yielding ``(n_done, outputs)``.

    Yielding after every batch lets callers report progress and stop early. Runs on the
    model's device under ``torch.inference_mode`` with the model's inference copy
    (:func:`inference_copy`); the model's own mode and weights are left untouched.

    Args:
        precision: ``fp32`` (default: what training validates with), ``bf16``, ``fp16`` or
            ``auto`` (:func:`resolve_precision`).
        outputs: which of ``mask``, ``z``, ``reconstruction`` to compute; the others are None
            in the yielded :class:`SliceOutputs` (the mask alone skips the Z head and the
            reconstructor).
        batch_size: slices per forward pass; None picks :func:`default_batch_size`.
    """
    images = np.asarray(images, dtype=np.float32)
    wanted = _check_outputs(outputs)
    device, precision, batch_size, nets, transfer = _setup(model, precision, batch_size)
    want_z = "z" in wanted or "reconstruction" in wanted
    for start in range(0, len(images), batch_size):
        # The inference-mode context is left before each yield: grad mode is per thread, and a
        # caller (e.g. a worker thread that is later reused for training) must not be left
        # without gradients while this generator is suspended or abandoned.
        with torch.inference_mode(), _autocast(device, precision):
            batch = transfer.to_device(images[start : start + batch_size])[:, None]
            mask, z = nets.decompose(batch, with_z=want_z)
            recon = nets.decode(mask, z)[:, 0] if "reconstruction" in wanted else None
            if mask.shape[1] == 1:
                mask = mask[:, 0]
            host = [
                transfer.to_host(mask) if "mask" in wanted else None,
                transfer.to_host(z) if "z" in wanted else None,
                transfer.to_host(recon) if recon is not None else None,
            ]
            transfer.sync()
        yield (
            min(start + batch_size, len(images)),
            SliceOutputs(_numpy(host[0]), _numpy(host[1]), _numpy(host[2])),
        )


def predict_slices(
    model: SDNet, images: np.ndarray, batch_size: int | None = 16, **options: Any
) -> SliceOutputs:
    """All outputs for ``images`` (N, S, S) at once: :func:`iter_predict` driven to the end,
    with its keyword options (``precision``, default fp32; ``outputs``, default all)."""
    wanted = _check_outputs(options.pop("outputs", ALL_OUTPUTS))
    parts = [out for _, out in iter_predict(model, images, batch_size, outputs=wanted, **options)]
    z_dim = model.config.z_dim
    size = model.config.image_size

    def join(name: str, empty_shape: tuple[int, ...]) -> np.ndarray | None:
        key = {"probability": "mask"}.get(name, name)
        if key not in wanted:
            return None
        if not parts:
            return np.zeros(empty_shape, np.float32)
        return np.concatenate([getattr(p, name) for p in parts])

    return SliceOutputs(
        probability=join("probability", (0, size, size)),
        z=join("z", (0, z_dim)),
        reconstruction=join("reconstruction", (0, size, size)),
    )


def decode_latents(
    model: SDNet,
    masks: np.ndarray,
    z: np.ndarray,
    batch_size: int | None = 16,
    *,
    precision: str = "fp32",
) -> np.ndarray:
    """g(round(M), Z) for any masks (N, S, S) and Z (N, z_dim): latent mixing's primitive."""
    masks = np.asarray(masks, dtype=np.float32)
    z = np.asarray(z, dtype=np.float32)
    device, precision, batch_size, nets, transfer = _setup(model, precision, batch_size)
    out = []
    with torch.inference_mode(), _autocast(device, precision):
        for start in range(0, len(masks), batch_size):
            m = transfer.to_device(masks[start : start + batch_size])
            m = m if m.ndim == 4 else m[:, None]  # (N, S, S) or (N, C, S, S)
            zz = transfer.to_device(z[start : start + batch_size])
            out.append(transfer.to_host(nets.decode(m, zz)[:, 0]))
        transfer.sync()
    size = model.config.image_size
    return (
        np.concatenate([o.numpy() for o in out]) if out else np.zeros((0, size, size), np.float32)
    )
