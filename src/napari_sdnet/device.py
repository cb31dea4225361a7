"""Choosing the PyTorch device: ``auto`` (CUDA, then MPS, then CPU), ``cuda``, ``mps``, ``cpu``.
"""

from __future__ import annotations

from napari_sdnet.errors import InputError

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


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
