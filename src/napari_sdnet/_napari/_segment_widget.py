"""Dock widget "SDNet segmentation": segment the myocardium of an image layer.

Layout and wiring only: the work is :func:`napari_sdnet.api.segment_iter` (run in a napari
thread worker, so the window stays responsive and Cancel works between batches), the export is
:mod:`napari_sdnet._napari._export`, and what the plugin made is remembered in the viewer's
:class:`~napari_sdnet._napari._state.SDNetState`.

What it adds for an image layer ``<image>``:

* ``<image> myocardium``: Labels (uint8, myocardium = 2 as in ACDC) with the image's scale,
  translate, rotation, units and a copy of its metadata (``sdnet_geometry`` included, so File >
  Save Selected Layer(s) writes it lined up with the source file);
* ``<image> reconstruction``: Image (gray, hidden at first), SDNet's reconstruction of the image
  from (mask, Z), in the image's intensity units.

Running again updates those layers in place while they hold what the plugin wrote; once the
user has painted on one, a new ``<image> myocardium [2]`` is made instead. For a 4D study in
"current frame" mode only that frame of the 4D layers is written (frames painted by the user
elsewhere stay as they are). Layers the plugin did not make are never touched.

torch is imported only when a model is loaded or a device is described.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils import notifications
from napari.viewer import Viewer
from qtpy.QtCore import QEventLoop, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_sdnet._napari._common import (
    DEVICES,
    MYOCARDIUM,
    MessagesMixin,
    confirm_overwrite,
    device_combo,
    free_layer_name,
)
from napari_sdnet._napari._common import free_gpu_memory as _free_gpu_memory
from napari_sdnet._napari._common import is_out_of_memory as _is_out_of_memory
from napari_sdnet._napari._export import default_mask_name, export_mask
from napari_sdnet._napari._state import MadeLayer, SegmentationRecord, get_state, unwrap
from napari_sdnet.errors import InputError, SDNetError

PLUGIN = "napari-sdnet"
WIDGET_NAME = "SDNet segmentation"
MODEL_BUNDLED = "bundled model"
MODEL_FILE = "model file"
FRAMES_ALL = "all frames"
FRAMES_CURRENT = "current frame"
EXPORT_ACDC = "ACDC labels (myocardium = 2)"
EXPORT_BINARY = "binary (myocardium = 1)"


# ---------------------------------------------------------------------------------- dialogs
# Module-level functions, also set as widget attributes, so tests (and scripts) replace them.
def ask_save_path(parent: QWidget | None, suggested: str) -> str | None:
    """Ask where to save a mask; None when cancelled."""
    path, _ = QFileDialog.getSaveFileName(
        parent, "Export mask as NIfTI", suggested, "NIfTI (*.nii.gz *.nii)"
    )
    return path or None


def ask_model_path(parent: QWidget | None, start: str) -> str | None:
    """Ask for a napari-sdnet model file; None when cancelled."""
    path, _ = QFileDialog.getOpenFileName(
        parent, "Choose an SDNet model file", start, "napari-sdnet models (*.safetensors)"
    )
    return path or None


# ---------------------------------------------------------------------- the job (worker side)
@dataclass
class _Job:
    """One segmentation request, fixed on the UI thread when Segment is pressed."""

    image: Image
    data: np.ndarray
    spacing: tuple[float, ...]
    frame: int | None
    model_source: str
    device: str
    model_key: tuple
    model: Any = None
    batch_size: int = 8


@dataclass
class _Outcome:
    model: Any = None
    segmentation: Any = None
    labels: np.ndarray | None = None
    reconstruction: np.ndarray | None = None
    error: BaseException | None = None
    loading: bool = False


def _run_job(job: _Job) -> Generator[tuple[str, Any], None, _Outcome]:
    """Worker body: load the model (unless cached), segment, prepare the layer data.

    Yields ``("status", text)``, ``("model", model)``, ``("progress", (done, total))``. Every
    exception is returned in the outcome rather than raised: napari's generator worker drops
    ``RuntimeError`` (e.g. CUDA out of memory) without any signal.
    """
    from napari_sdnet import api

    outcome = _Outcome(model=job.model)
    try:
        if outcome.model is None:
            outcome.loading = True
            yield ("status", f"loading the model ({job.model_source}) ...")
            outcome.model = api.load_model(job.model_source, job.device)
            outcome.loading = False
            yield ("model", outcome.model)
        for item in api.segment_iter(
            outcome.model, job.data, job.spacing, batch_size=job.batch_size
        ):
            if isinstance(item, api.Segmentation):
                outcome.segmentation = item
                break
            yield ("progress", item)
        seg = outcome.segmentation
        outcome.labels = api.to_acdc_labels(seg.mask)
        outcome.reconstruction = seg.reconstruction_intensity
    except Exception as exc:  # shown to the user on the UI thread
        outcome.error = exc
    return outcome


# ------------------------------------------------------------------------------- the widget
class SegmentWidget(MessagesMixin, QWidget):
    """Dock widget: choose an image layer, a model and a device; Segment; Export mask."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # napari hands widgets a PublicOnlyProxy; the state is keyed by the real viewer
        self.viewer = unwrap(napari_viewer)
        self.state = get_state(self.viewer)
        self.worker = None
        self.last_error: BaseException | None = None
        self.batch_size = 8
        # replaceable dialogs (tests, scripts)
        self.ask_save_path: Callable[[QWidget | None, str], str | None] = ask_save_path
        self.confirm_overwrite: Callable[[QWidget | None, Path], bool] = confirm_overwrite
        self.ask_model_path: Callable[[QWidget | None, str], str | None] = ask_model_path
        self._job: _Job | None = None
        self._choices: list[Image] = []
        # stop a running job when the widget goes away (e.g. the viewer is closed); the
        # closure must not reference ``self``, which is being destroyed
        running: dict[str, Any] = {}
        self._running = running
        self.destroyed.connect(lambda *_: running.get("worker") and running["worker"].quit())
        self._build()
        self._connect_viewer()
        self._refresh_layers()
        self._update_device_label()

    # -- layout --------------------------------------------------------------------------------
    def _build(self) -> None:
        from napari_sdnet.api import bundled_model_path

        layout = QVBoxLayout(self)
        form = QFormLayout()
        layout.addLayout(form)

        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("image layer to segment (2D, 3D or 4D)")
        self.layer_combo.currentIndexChanged.connect(self._on_layer_changed)
        form.addRow("image", self.layer_combo)

        self.frames_combo = QComboBox()
        self.frames_combo.addItems([FRAMES_ALL, FRAMES_CURRENT])
        self.frames_combo.setToolTip(
            "4D studies: segment every frame, or only the frame shown in the viewer"
        )
        form.addRow("frames", self.frames_combo)

        self.model_combo = QComboBox()
        self.model_combo.addItems([MODEL_BUNDLED, MODEL_FILE])
        self.model_combo.setToolTip("the bundled model, or a napari-sdnet .safetensors file")
        form.addRow("model", self.model_combo)
        row = QHBoxLayout()
        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("path/to/model.safetensors")
        self.browse_button = QPushButton("Browse...")
        self.browse_button.clicked.connect(self._browse_model)
        row.addWidget(self.model_path)
        row.addWidget(self.browse_button)
        form.addRow("model file", row)
        self.model_combo.currentTextChanged.connect(self._on_model_kind_changed)
        if not bundled_model_path().is_file():
            self.model_combo.setItemText(0, f"{MODEL_BUNDLED} (not installed)")
            self.model_combo.setCurrentIndex(1)
        self._on_model_kind_changed()

        self.device_combo = device_combo()
        self.device_combo.currentTextChanged.connect(self._update_device_label)
        form.addRow("device", self.device_combo)
        self.device_label = QLabel()
        self.device_label.setWordWrap(True)
        form.addRow("in use", self.device_label)

        buttons = QHBoxLayout()
        self.segment_button = QPushButton("Segment")
        self.segment_button.setToolTip("segment the myocardium (adds '<image> myocardium')")
        self.segment_button.clicked.connect(self._on_segment_clicked)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.segment_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%v / %m slices")
        layout.addWidget(self.progress)
        self.status = QLabel("ready")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        layout.addWidget(line)
        export_form = QFormLayout()
        self.export_values = QComboBox()
        self.export_values.addItems([EXPORT_ACDC, EXPORT_BINARY])
        export_form.addRow("values", self.export_values)
        layout.addLayout(export_form)
        self.export_button = QPushButton("Export mask...")
        self.export_button.setToolTip(
            "save the myocardium mask of the chosen image as NIfTI with the image's geometry"
        )
        self.export_button.clicked.connect(lambda: self.export_mask())
        layout.addWidget(self.export_button)
        layout.addStretch(1)

    # -- layer chooser -------------------------------------------------------------------------
    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            getattr(events, name).connect(self._refresh_layers)
        events.inserted.connect(self._on_inserted)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_layers)

    def _on_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self._refresh_layers)

    @staticmethod
    def _usable(layer: Any) -> bool:
        return (
            isinstance(layer, Image)
            and 2 <= layer.ndim <= 4
            and not layer.rgb
            and not getattr(layer, "multiscale", False)
        )

    def _refresh_layers(self, *_: Any) -> None:
        current = self.chosen_layer()
        choices = [layer for layer in self.viewer.layers if self._usable(layer)]
        if current is None or current not in choices:
            active = self.viewer.layers.selection.active
            current = active if active in choices else (choices[-1] if choices else None)
        self._choices = choices
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems([f"{layer.name}  ({layer.ndim}D)" for layer in choices])
        if current is not None:
            self.layer_combo.setCurrentIndex(choices.index(current))
        self.layer_combo.blockSignals(False)
        self._on_layer_changed()

    def chosen_layer(self) -> Image | None:
        """The image layer the widget will segment."""
        i = self.layer_combo.currentIndex()
        return self._choices[i] if 0 <= i < len(self._choices) else None

    def select_layer(self, layer: Any) -> bool:
        """Choose ``layer``; shows an error and returns False when it cannot be segmented."""
        layer = unwrap(layer)
        problem = self._layer_problem(layer)
        if problem:
            self._error(problem)
            return False
        self._refresh_layers()
        self.layer_combo.setCurrentIndex(self._choices.index(layer))
        return True

    def _on_layer_changed(self, *_: Any) -> None:
        layer = self.chosen_layer()
        is_4d = layer is not None and layer.ndim == 4
        self.frames_combo.setEnabled(is_4d and not self.state.busy)

    @staticmethod
    def _layer_problem(layer: Any) -> str | None:
        if layer is None:
            return "no image layer: open an image first (File > Open, or File > Open Sample)"
        if not isinstance(layer, Image):
            kind = type(layer).__name__
            return f"{layer.name!r} is a {kind} layer; choose an image layer to segment"
        if not 2 <= layer.ndim <= 4:
            shape = tuple(np.shape(layer.data[0] if layer.multiscale else layer.data))
            return (
                f"{layer.name!r} is {layer.ndim}D {shape}: SDNet segments 2D (y, x), "
                "3D (z, y, x) or 4D (t, z, y, x) images"
            )
        if layer.rgb:
            return f"{layer.name!r} is an RGB image; SDNet segments gray-level MR images"
        if layer.multiscale:
            return f"{layer.name!r} is multiscale; open the full-resolution image only"
        return None

    def _no_layer_message(self) -> str:
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        if not images:
            return self._layer_problem(None) or ""
        return self._layer_problem(images[-1]) or "choose an image layer"

    # -- model and device ----------------------------------------------------------------------
    def _on_model_kind_changed(self, *_: Any) -> None:
        from_file = self.model_combo.currentIndex() == 1
        self.model_path.setEnabled(from_file)
        self.browse_button.setEnabled(from_file)

    def _browse_model(self) -> None:
        start = str(Path(self.model_path.text()).parent) if self.model_path.text() else ""
        path = self.ask_model_path(self, start)
        if path:
            self.set_model(path)

    def set_model(self, source: str | os.PathLike[str]) -> None:
        """Use ``"bundled"`` or a model file."""
        if str(source).strip().lower() == "bundled":
            self.model_combo.setCurrentIndex(0)
        else:
            self.model_combo.setCurrentIndex(1)
            self.model_path.setText(str(source))
            self.model_path.end(False)  # show the file name rather than the folders

    def model_source(self) -> str:
        """``"bundled"`` or the model file path (may be empty)."""
        if self.model_combo.currentIndex() == 0:
            return "bundled"
        return self.model_path.text().strip()

    def set_device(self, device: str) -> None:
        """Choose ``auto``, ``cuda``, ``mps`` or ``cpu``."""
        index = self.device_combo.findText(device.strip().lower())
        if index < 0:
            raise InputError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        self.device_combo.setCurrentIndex(index)

    def _update_device_label(self, *_: Any) -> None:
        from napari_sdnet.device import describe_device, resolve_device

        model = self.state.model
        choice = self.device_combo.currentText()
        try:
            dev = resolve_device(choice)
        except SDNetError as exc:
            self.device_label.setText(f"not available: {exc}")
            return
        text = describe_device(dev)
        if model is not None and self.state.model_key and self.state.model_key[1] == choice:
            text = f"{describe_device(model.device)}, model loaded"
        self.device_label.setText(text)

    def _model_key(self, source: str, device: str) -> tuple:
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

    # -- segmentation --------------------------------------------------------------------------
    def _on_segment_clicked(self) -> None:
        self.segment()

    def segment(self, layer: Any = None) -> Any:
        """Start segmenting ``layer`` (default: the chosen one). Returns the worker, or None
        when nothing was started (the reason is shown as a notification)."""
        if self.worker is not None:
            self._error("a segmentation is already running; wait or press Cancel")
            return None
        self.last_error = None
        layer = unwrap(layer) if layer is not None else self.chosen_layer()
        if layer is None:
            self._error(self._no_layer_message())
            return None
        problem = self._layer_problem(layer)
        if problem:
            self._error(problem)
            return None
        source = self.model_source()
        if not source:
            self._error("choose a model file (.safetensors) first, or the bundled model")
            return None
        job = self._make_job(layer, source)
        if job is None:
            return None
        self._start(job)
        return self.worker

    def _make_job(self, layer: Image, source: str) -> _Job | None:
        data = np.asarray(layer.data)
        spacing = tuple(abs(float(s)) for s in layer.scale)
        if "sdnet_geometry" not in (layer.metadata or {}):
            self._warning(
                f"{layer.name!r} was not opened from a NIfTI file: its scale "
                f"{tuple(round(s, 4) for s in spacing[-2:])} is taken as the pixel size in mm"
            )
        frame = None
        if layer.ndim == 4 and self.frames_combo.currentText() == FRAMES_CURRENT:
            frame = self.current_frame(layer)
            data = data[frame]
            spacing = spacing[1:]
        device = self.device_combo.currentText()
        key = self._model_key(source, device)
        model = self.state.model if self.state.model_key == key else None
        return _Job(
            image=layer,
            data=data,
            spacing=spacing,
            frame=frame,
            model_source=source,
            device=device,
            model_key=key,
            model=model,
            batch_size=self.batch_size,
        )

    def current_frame(self, layer: Image) -> int:
        """Index of the frame of a 4D layer shown in the viewer."""
        point = layer.world_to_data(self.viewer.dims.point)
        n = layer.data.shape[0]
        return int(min(max(round(float(point[0])), 0), n - 1))

    def _start(self, job: _Job) -> None:
        self._job = job
        self.state.busy = True
        self._set_running(True)
        n = int(np.prod(job.data.shape[:-2], dtype=np.int64)) if job.data.ndim > 2 else 1
        self.progress.setRange(0, max(n, 1))
        self.progress.setValue(0)
        what = f"frame {job.frame} of " if job.frame is not None else ""
        self.status.setText(f"segmenting {what}{job.image.name!r} ...")
        worker = create_worker(_run_job, job, _start_thread=False)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = self._running["worker"] = worker
        worker.start()

    def cancel(self) -> None:
        """Ask the running segmentation to stop (after the current batch of slices)."""
        if self.worker is not None:
            self.worker.quit()
            self.cancel_button.setEnabled(False)
            self.status.setText("cancelling ...")

    def wait(self, timeout_ms: int | None = None) -> None:
        """Run the Qt event loop until the running segmentation has finished (scripts)."""
        if self.worker is None:
            return
        loop = QEventLoop()
        # poll on the UI thread: the worker's own ``finished`` may already have been emitted
        # (queued, not yet delivered) before this loop could connect to it
        timer = QTimer()
        timer.setInterval(20)
        timer.timeout.connect(lambda: self.worker is None and loop.quit())
        timer.start()
        if timeout_ms is not None:
            QTimer.singleShot(timeout_ms, loop.quit)
        loop.exec()
        timer.stop()

    def _set_running(self, running: bool) -> None:
        for w in (
            self.segment_button,
            self.layer_combo,
            self.model_combo,
            self.model_path,
            self.browse_button,
            self.device_combo,
            self.export_button,
        ):
            w.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if not running:
            self._on_model_kind_changed()
            self._on_layer_changed()
        else:
            self.frames_combo.setEnabled(False)

    def _on_yielded(self, item: tuple[str, Any]) -> None:
        kind, value = item
        if kind == "status":
            self.status.setText(value)
        elif kind == "model":
            job = self._job
            self.state.model = value
            self.state.model_key = job.model_key if job is not None else None
            self._update_device_label()
        elif kind == "progress":
            done, total = value
            self.progress.setRange(0, max(int(total), 1))
            self.progress.setValue(int(done))
            self.status.setText(f"segmenting: {done} of {total} slices")

    def _on_aborted(self) -> None:
        self.status.setText("cancelled: no layer was added or changed")
        notifications.show_info("SDNet segmentation cancelled; no layer was added or changed")

    def _on_finished(self) -> None:
        self.worker = None
        self._running.pop("worker", None)
        self._job = None
        self.state.busy = False
        self._set_running(False)

    def _on_returned(self, outcome: _Outcome) -> None:
        job = self._job
        if outcome.error is not None:
            self._handle_error(outcome.error, job, outcome.loading)
            return
        if job is None:  # pragma: no cover - defensive
            return
        if job.image not in self.viewer.layers:
            self._warning(
                f"{job.image.name!r} was removed while it was being segmented; result discarded"
            )
            self.status.setText("result discarded (the image layer was removed)")
            return
        try:
            record, notes = self._store(job, outcome)
        except SDNetError as exc:
            self._error(str(exc))
            return
        seg = outcome.segmentation
        flat = seg.mask.reshape(-1, *seg.mask.shape[-2:])
        found = int(flat.any(axis=(1, 2)).sum())
        mask_layer = record.mask.layer if record.mask else None
        where = f"frame {job.frame}: " if job.frame is not None else ""
        self.status.setText(
            f"{where}myocardium found on {found} of {len(flat)} slices -> "
            f"'{mask_layer.name if mask_layer else ''}'"
        )
        for note in notes:
            self._info(note)
        self.state.record_changed.emit(record)

    def _handle_error(self, exc: BaseException, job: _Job | None, loading: bool) -> None:
        self.last_error = exc
        if _is_out_of_memory(exc):
            self.state.forget_model()
            if job is not None:
                job.model = None
            _free_gpu_memory()
            self.device_combo.setCurrentText("cpu")
            message = (
                "the GPU ran out of memory while segmenting. GPU memory was freed and the "
                "device is now set to 'cpu': press Segment to retry on the CPU (slower)"
            )
        elif isinstance(exc, SDNetError):
            message = f"cannot load the model: {exc}" if loading else str(exc)
        else:
            message = f"segmentation failed: {type(exc).__name__}: {exc}"
        self._error(message)

    # -- layers ----------------------------------------------------------------------------------
    def _store(self, job: _Job, outcome: _Outcome) -> tuple[SegmentationRecord, list[str]]:
        """Add or update the plugin's layers for ``job.image`` and record the result."""
        image = job.image
        record = self.state.new_record(image)
        record.image_name = image.name
        notes: list[str] = []
        seg = outcome.segmentation
        low = float(seg.grid.intensity_range[0]) if seg.grid.intensity_range else 0.0
        for kind, values, fill in (
            ("reconstruction", outcome.reconstruction, low),
            ("mask", outcome.labels, 0),
        ):
            made, note = self._write_layer(record, kind, image, values, job.frame, fill)
            setattr(record, kind, made)
            if note:
                notes.append(note)
        if job.frame is None:
            record.segmentation = seg
            record.frames.clear()
        else:
            record.frames[job.frame] = seg
        record.model_source = outcome.model.source if outcome.model is not None else ""
        return record, notes

    def _write_layer(
        self,
        record: SegmentationRecord,
        kind: str,
        image: Image,
        values: np.ndarray,
        frame: int | None,
        fill: float,
    ) -> tuple[MadeLayer, str | None]:
        made: MadeLayer | None = getattr(record, kind)
        layer = made.layer if made is not None else None
        full_shape = tuple(np.shape(image.data))
        present = layer is not None and layer in self.viewer.layers
        if present and tuple(layer.data.shape) == full_shape and made.untouched(frame):
            if frame is None:
                layer.data = values
            else:
                data = layer.data
                data[frame] = values
                layer.data = data
            made.mark_written()
            return made, None
        if frame is None:
            data = values
        else:
            dtype = np.uint8 if kind == "mask" else np.float32
            data = np.full(full_shape, fill, dtype=dtype)
            data[frame] = values
        base = f"{image.name} {'myocardium' if kind == 'mask' else 'reconstruction'}"
        name = free_layer_name(self.viewer, base)
        new_layer = self._add_layer(kind, image, data, name)
        new = MadeLayer.track(new_layer, kind)
        record.made.append(new)
        self.state.add_made(new)
        note = None
        if present and kind == "mask":
            note = (
                f"{layer.name!r} was edited, so it was kept as it is; the new segmentation is "
                f"in {new_layer.name!r}"
            )
        return new, note

    def _add_layer(self, kind: str, image: Image, data: np.ndarray, name: str) -> Any:
        kwargs: dict[str, Any] = {
            "name": name,
            "scale": np.array(image.scale),
            "translate": np.array(image.translate),
            "rotate": np.array(image.rotate),
            "shear": np.array(image.shear),
            "affine": image.affine.affine_matrix.copy(),
            "metadata": copy.deepcopy(dict(image.metadata)),
        }
        for attr in ("units", "axis_labels"):  # napari >= 0.6
            if hasattr(image, attr):
                kwargs[attr] = tuple(getattr(image, attr))
        if kind == "mask":
            layer = self.viewer.add_labels(data, opacity=0.6, **kwargs)
            layer.selected_label = MYOCARDIUM  # corrections are painted as myocardium
            return layer
        return self.viewer.add_image(
            data,
            colormap="gray",
            contrast_limits=list(image.contrast_limits),
            visible=False,
            **kwargs,
        )

    # -- export --------------------------------------------------------------------------------
    def mask_layer_for(self, image: Image | None = None) -> Labels | None:
        """The mask to export for ``image``: the selected Labels layer when it has the image's
        shape (e.g. the user's corrected mask), else the plugin's latest mask for it."""
        image = unwrap(image) if image is not None else self.chosen_layer()
        if image is None:
            return None
        active = self.viewer.layers.selection.active
        if isinstance(active, Labels) and tuple(active.data.shape) == tuple(np.shape(image.data)):
            return active
        record = self.state.record_for(image)
        if record is None or record.mask is None:
            return None
        layer = record.mask.layer
        return layer if layer is not None and layer in self.viewer.layers else None

    def export_mask(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        binary: bool | None = None,
        overwrite: bool | None = None,
    ) -> Path | None:
        """Write the chosen image's mask as NIfTI with the image's geometry.

        ``path`` None asks with a file dialog; ``binary`` None follows the values combobox;
        ``overwrite`` None asks before replacing an existing file. Returns the written path,
        or None (cancelled, or an error that was shown).
        """
        image = self.chosen_layer()
        if image is None:
            self._error(self._no_layer_message())
            return None
        mask = self.mask_layer_for(image)
        if mask is None:
            self._error(f"{image.name!r} has no myocardium mask yet: press Segment first")
            return None
        if binary is None:
            binary = self.export_values.currentText() == EXPORT_BINARY
        if path is None:
            suggested = default_mask_name(image)
            source = (image.metadata or {}).get("source_path")
            if source:
                suggested = str(Path(source).with_name(suggested))
            path = self.ask_save_path(self, suggested)
            if not path:
                return None
        from napari_sdnet._napari._export import with_nifti_suffix

        target = with_nifti_suffix(path)
        if target.exists():
            if overwrite is None:
                overwrite = self.confirm_overwrite(self, target)
            if not overwrite:
                self.status.setText(f"not exported: {target.name} exists")
                return None
        try:
            written, warnings_ = export_mask(
                target, mask.data, image, binary=binary, overwrite=bool(overwrite)
            )
        except SDNetError as exc:
            self._error(str(exc))
            return None
        for text in warnings_:
            self._warning(text)
        value = "1" if binary else "2"
        self.status.setText(f"exported {mask.name!r} to {written} (myocardium = {value})")
        self._info(f"wrote {written} (myocardium = {value})")
        return written



def segment_selected_layer(viewer: Viewer) -> None:
    """Layers > Segment > "Segment myocardium...": dock the widget on the selected
    image layer (menu command; napari injects the viewer)."""
    viewer = unwrap(viewer)
    layer = viewer.layers.selection.active
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET_NAME)
    widget = unwrap(widget)
    if layer is not None:
        widget.select_layer(layer)
