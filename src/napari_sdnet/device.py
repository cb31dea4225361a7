"""Choosing the PyTorch device: ``auto`` (CUDA, then MPS, then CPU), ``cuda``, ``mps``, ``cpu``.

Also what the CPU can do for inference (:func:`cpu_has_native_bf16`) and the precision choices
(:data:`PRECISION_CHOICES`, resolved by :func:`napari_sdnet.inference.resolve_precision`).
Nothing here imports torch at module level, so the command line can offer the choices.
"""

from __future__ import annotations

import os

from napari_sdnet.errors import InputError

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
#: Inference precision settings (``napari_sdnet.inference.resolve_precision``): ``auto`` is
#: bf16 on CPUs with native bf16 arithmetic, fp16 on CUDA, fp32 elsewhere.
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")

# CPU feature flags (/proc/cpuinfo) that mean native bf16 arithmetic: x86 AMX and AVX512-BF16,
# Arm's BF16 extension.
_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
_native_bf16: bool | None = None


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes in bf16 natively (AMX, AVX512-BF16 or Arm BF16).

    Asks PyTorch's own CPU detection first (``torch.cpu._is_amx_tile_supported``,
    ``_is_avx512_bf16_supported``), then the CPU flags of ``/proc/cpuinfo``. oneDNN also
    "supports" bf16 on plain AVX512 CPUs, but by emulation, which is slower than fp32, so that
    is not counted. ``SDNET_NATIVE_BF16=0/1`` overrides the detection. Cached.
    """
    global _native_bf16
    override = os.environ.get("SDNET_NATIVE_BF16", "").strip()
    if override in ("0", "1"):
        return override == "1"
    if _native_bf16 is None:
        found = False
        try:
            import torch

            cpu = getattr(torch, "cpu", None)
            for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
                fn = getattr(cpu, probe, None)
                if fn is not None and bool(fn()):
                    found = True
        except Exception:  # noqa: BLE001 - private API; fall back to the CPU flags
            found = False
        if not found:
            found = bool(_cpuinfo_flags() & set(_BF16_FLAGS))
        _native_bf16 = found
    return _native_bf16


def _mps_available(torch) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Devices usable on this machine, best first (always ends with ``cpu``)."""
    import torch

    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if _mps_available(torch):
        found.append("mps")
    return [*found, "cpu"]


def resolve_device(device: str | None = "auto"):
    """Return the :class:`torch.device` for a user's choice.

    ``auto`` (or None) picks CUDA, then MPS, then CPU. ``cuda:1`` style indices are accepted.
    Asking for a device that is not available is an :class:`InputError` that says what is.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    choice = (device or "auto").strip().lower()
    if choice == "auto":
        return torch.device(available_devices()[0])
    kind = choice.split(":", 1)[0]
    if kind not in DEVICE_CHOICES:
        raise InputError(f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "CUDA was requested but no CUDA GPU is available to PyTorch "
            f"(available: {', '.join(available_devices())})"
        )
    if kind == "mps" and not _mps_available(torch):
        raise InputError(
            f"MPS was requested but is not available (available: {', '.join(available_devices())})"
        )
    try:
        dev = torch.device(choice)
    except RuntimeError as exc:
        raise InputError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(
            f"{choice} requested but only {torch.cuda.device_count()} CUDA device(s) present"
        )
    return dev


def describe_device(dev) -> str:
    """A short human-readable name, e.g. ``cuda:0 (NVIDIA H100)`` or ``cpu (2 threads)``."""
    import torch

    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if dev.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'' if n == 1 else 's'})"
    return str(dev)
