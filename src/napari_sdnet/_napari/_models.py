"""The model and device choosers of the docks, over the viewer's session.

:class:`ModelChooser` offers the models of the session by name: the bundled model, a model
file, and every model fine-tuned in this viewer (newest last, e.g. ``fine-tuned 1 (60 steps,
2 slices)``). Whatever model is in use is shown as chosen in every widget, so pressing Segment
after fine-tuning segments with the fine-tuned model, not the bundled one.
:class:`DeviceChooser` is the ``auto/cuda/mps/cpu`` combo with the device in use below it.

The session (:class:`~napari_sdnet._napari._state.SDNetState`) holds the loaded model and the
fine-tuned ones (:class:`~napari_sdnet._napari._state.ModelEntry`); this module only shows
them. torch is imported only to describe a device or move a model to another one.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from napari_sdnet._napari._dock import DEVICES, device_combo
from napari_sdnet.errors import InputError, SDNetError

MODEL_BUNDLED = "bundled model"
MODEL_FILE = "model file"
SESSION_PREFIX = "session:"  # model_source() of a fine-tuned model of the session


def ask_model_path(parent: QWidget | None, start: str) -> str | None:
    """Ask for a napari-sdnet model file; None when cancelled."""
    path, _ = QFileDialog.getOpenFileName(
        parent, "Choose an SDNet model file", start, "napari-sdnet models (*.safetensors)"
    )
    return path or None


def model_key(source: str, device: str) -> tuple:
    """What a model was loaded from: ``(resolved path, device choice, file mtime)``."""
    if source.startswith(SESSION_PREFIX):
        return (source, device, None)
    if source == "bundled":
        from napari_sdnet.api import bundled_model_path

        path = bundled_model_path()
    else:
        path = Path(source)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = None
    return (str(path.resolve()) if mtime is not None else source, device, mtime)


def on_device(model: Any, choice: str) -> Any:
    """``model``, or a copy on the device ``choice`` resolves to (the session's fine-tuned
    models live where they were trained)."""
    from napari_sdnet.api import Model
    from napari_sdnet.device import resolve_device

    device = resolve_device(choice)
    if model is None or model.device == device:
        return model
    network = copy.deepcopy(model.network).to(device).eval()
    return Model(network=network, info=model.info, device=device, source=model.source)


def _unless_gone(name: str) -> Callable[..., None]:
    """A slot for the session's signals that calls the method ``name`` (no arguments) unless
    the widget's Qt objects are gone: those signals may still fire while the viewer closes.
    A method of the class, so psygnal holds the widget weakly as with any bound method."""

    def slot(self: Any, *_: Any) -> None:
        try:
            getattr(self, name)()
        except RuntimeError:  # the widget's Qt objects are gone (viewer closing)
            pass

    return slot


class DeviceChooser:
    """The device combo and the "in use" label (added to a form by :meth:`add_rows`)."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.combo = device_combo()
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setToolTip("the device the model runs on")
        self.combo.currentTextChanged.connect(self.update_label)
        state.events.model.connect(self._on_model)

    def add_rows(self, form: QFormLayout) -> None:
        form.addRow("device", self.combo)
        form.addRow("in use", self.label)

    def set(self, device: str) -> None:
        """Choose ``auto``, ``cuda``, ``mps`` or ``cpu``."""
        index = self.combo.findText(device.strip().lower())
        if index < 0:
            raise InputError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        self.combo.setCurrentIndex(index)

    _on_model = _unless_gone("update_label")

    def update_label(self, *_: Any) -> None:
        from napari_sdnet.device import describe_device, resolve_device

        model, key = self.state.model, self.state.model_key
        choice = self.combo.currentText()
        try:
            dev = resolve_device(choice)
        except SDNetError as exc:
            self.label.setText(f"not available: {exc}")
            return
        text = describe_device(dev)
        if model is not None and key and key[1] == choice:
            text = f"{describe_device(model.device)}, model loaded"
        self.label.setText(text)


class ModelChooser:
    """The model combo (bundled, file, fine-tuned ones), the file field and Browse."""

    def __init__(self, state: Any, parent: QWidget) -> None:
        from napari_sdnet.api import bundled_model_path

        self.state, self.parent = state, parent
        self.ask_model_path: Callable[[QWidget | None, str], str | None] = ask_model_path
        self.combo = QComboBox()
        self.combo.addItems([MODEL_BUNDLED, MODEL_FILE])
        self.combo.setToolTip(
            "the model that segments: the bundled one, a napari-sdnet .safetensors file, or "
            "one fine-tuned in this window"
        )
        self.path = QLineEdit()
        self.path.setPlaceholderText("path/to/model.safetensors")
        self.path.setToolTip("a napari-sdnet model file (.safetensors)")
        self.browse_button = QPushButton("Browse...")
        self.browse_button.setToolTip("choose a model file")
        self.browse_button.clicked.connect(self._browse)
        self.combo.currentIndexChanged.connect(self.on_kind_changed)
        if not bundled_model_path().is_file():
            self.combo.setItemText(0, f"{MODEL_BUNDLED} (not installed)")
            self.combo.setCurrentIndex(1)
        state.models_changed.connect(self._on_models)
        self.refresh()
        self.on_kind_changed()

    def add_rows(self, form: QFormLayout) -> None:
        form.addRow("model", self.combo)
        row = QHBoxLayout()
        row.addWidget(self.path)
        row.addWidget(self.browse_button)
        form.addRow("model file", row)

    _on_models = _unless_gone("refresh")

    def refresh(self, *_: Any) -> None:
        """List the session's fine-tuned models; choose the one in use, if it is one."""
        current = self.combo.currentIndex()
        name = self.combo.itemData(current) if current >= 2 else None
        self.combo.blockSignals(True)
        while self.combo.count() > 2:
            self.combo.removeItem(2)
        entries = self.state.finetuned_models()
        for entry in entries:
            self.combo.addItem(entry.label, entry.name)
            self.combo.setItemData(self.combo.count() - 1, entry.detail, 3)  # 3: ToolTipRole
        in_use = self.state.entry_in_use()
        names = [e.name for e in entries]
        if in_use is not None and in_use in entries:
            self.combo.setCurrentIndex(2 + entries.index(in_use))
        elif name is not None:
            self.combo.setCurrentIndex(2 + names.index(name) if name in names else 0)
        else:
            self.combo.setCurrentIndex(current)
        self.combo.blockSignals(False)
        self.on_kind_changed()

    def on_kind_changed(self, *_: Any) -> None:
        from_file = self.combo.currentIndex() == 1
        self.path.setEnabled(from_file)
        self.browse_button.setEnabled(from_file)

    def _browse(self) -> None:
        start = str(Path(self.path.text()).parent) if self.path.text() else ""
        path = self.ask_model_path(self.parent, start)
        if path:
            self.set(path)

    def set(self, source: str | os.PathLike[str]) -> None:
        """Use ``"bundled"``, a model file, or a fine-tuned model of the session by name."""
        text = str(source).strip()
        if text.lower() == "bundled":
            self.combo.setCurrentIndex(0)
            return
        i = self.combo.findData(text.removeprefix(SESSION_PREFIX))
        if i >= 2:
            self.combo.setCurrentIndex(i)
            return
        self.combo.setCurrentIndex(1)
        self.path.setText(text)
        self.path.end(False)  # show the file name rather than the folders

    def source(self) -> str:
        """``"bundled"``, the model file path (may be empty) or ``"session:<name>"``."""
        i = self.combo.currentIndex()
        if i == 0:
            return "bundled"
        if i == 1:
            return self.path.text().strip()
        return SESSION_PREFIX + str(self.combo.itemData(i))

    def set_enabled(self, enabled: bool) -> None:
        self.combo.setEnabled(enabled)
        if enabled:
            self.on_kind_changed()
        else:
            self.path.setEnabled(False)
            self.browse_button.setEnabled(False)
