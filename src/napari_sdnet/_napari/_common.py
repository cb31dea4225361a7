"""Small helpers shared by the napari-sdnet dock widgets (Qt dialogs, messages, GPU memory).

torch is imported inside the functions only.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from napari.utils import notifications
from qtpy.QtWidgets import QComboBox, QLabel, QMessageBox, QWidget

from napari_sdnet.device import DEVICE_CHOICES as DEVICES
from napari_sdnet.io.datasets import MYOCARDIUM as MYOCARDIUM  # ACDC value, re-exported


def device_combo() -> QComboBox:
    """The device chooser both widgets use (auto/cuda/mps/cpu)."""
    combo = QComboBox()
    combo.addItems(list(DEVICES))
    combo.setToolTip("auto: CUDA, then MPS (Apple), then CPU")
    return combo


def confirm_overwrite(parent: QWidget | None, path: Path) -> bool:
    """Ask before replacing an existing file."""
    answer = QMessageBox.question(
        parent,
        "Replace file?",
        f"{path.name} already exists in {path.parent}.\nReplace it?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is PyTorch running out of (GPU) memory."""
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_gpu_memory() -> None:
    """Collect garbage and give cached CUDA memory back (no-op without CUDA)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def free_layer_name(viewer: Any, base: str) -> str:
    """``base``, or ``base [2]``, ``base [3]``, ... : the first name no layer of ``viewer`` has
    (new layers never replace a user's layer)."""
    names = {layer.name for layer in viewer.layers}
    if base not in names:
        return base
    i = 2
    while f"{base} [{i}]" in names:
        i += 1
    return f"{base} [{i}]"


class MessagesMixin:
    """User messages for a dock widget with a ``status`` label: napari notifications."""

    status: QLabel

    def _error(self, message: str) -> None:
        self.status.setText(f"error: {message}")
        notifications.show_error(message)

    @staticmethod
    def _warning(message: str) -> None:
        notifications.show_warning(message)

    @staticmethod
    def _info(message: str) -> None:
        notifications.show_info(message)
