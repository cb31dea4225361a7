"""Dock widget "SDNet fine-tuning": fine-tune the model on the slices the user corrected.

Layout and wiring only: the training is :func:`napari_sdnet.api.finetune` and the new
segmentation :func:`napari_sdnet.api.segment_iter`, both run in a napari thread worker.

The user corrects ``<image> myocardium`` (the Labels layer the segmentation widget made) with
napari's brush and eraser, label 2. The widget listens to that layer's paint events and lists
the edited slices (``(t, z)`` in a 4D study, ``z`` in 3D); the user can add the slice shown in
the viewer or remove slices from the list. The listed slices are the labelled training slices
(only their label-2 pixels count), every other slice of the study is the unlabelled pool.

When training ends (budget used, or Stop: the model so far is kept) the new model replaces the
viewer's model and the study is segmented again; the new mask is written into the myocardium
layer everywhere except on the listed slices, which keep the user's corrections. Undo restores
the previous model and mask; "Save model..." writes the model as a ``.safetensors`` file that
:func:`napari_sdnet.api.load_model` (and the segmentation widget) can load.

torch is imported only in the worker and when GPU memory is freed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils import notifications
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sdnet._napari._common import (
    MYOCARDIUM,
    MessagesMixin,
    confirm_overwrite,
    device_combo,
    free_gpu_memory,
    is_out_of_memory,
)
from napari_sdnet._napari._state import SegmentationRecord, data_digests, get_state, unwrap
from napari_sdnet.api import FINETUNE_LR, FINETUNE_STEPS
from napari_sdnet.errors import SDNetError

WIDGET_NAME = "SDNet fine-tuning"
#: losses drawn in the plot (trainer key -> legend)
PLOTTED_LOSSES = {
    "dice_loss": "Dice loss (edited slices)",
    "recon_l1": "reconstruction L1 (edited)",
    "unl_recon_l1": "reconstruction L1 (others)",
}
LOSS_PLOT_MS = 300  # the plot is redrawn at most this often while training
BUDGET_SECONDS = "seconds"
BUDGET_STEPS = "steps"
UPDATE_ALL = "whole model"
UPDATE_DECOMPOSER = "decomposer only"
NO_EDIT_MESSAGE = (
    "no edited slice: paint the myocardium (label 2) on at least one slice of the "
    "myocardium layer, or add the current slice to the list"
)

SliceKey = tuple[int, ...]


def ask_model_save_path(parent: QWidget | None, suggested: str) -> str | None:
    """Ask where to save the fine-tuned model; None when cancelled."""
    path, _ = QFileDialog.getSaveFileName(
        parent, "Save the fine-tuned model", suggested, "napari-sdnet models (*.safetensors)"
    )
    return path or None


def _slice_text(key: SliceKey) -> str:
    if len(key) == 2:
        return f"t={key[0]}, z={key[1]}"
    if len(key) == 1:
        return f"z={key[0]}"
    return "the image"


def _painted_slices(atoms: Any, ndim: int) -> tuple[set[SliceKey], set[int]] | None:
    """Slices and label values in a napari 0.9 ``Labels.events.paint`` payload, or None
    when the payload is not understood (the caller then compares data)."""
    lead = ndim - 2
    keys: set[SliceKey] = set()
    values: set[int] = set()
    try:
        for atom in atoms:
            if hasattr(atom, "slice_key"):  # brush, eraser, fill, polygon
                ranges = []
                for s in atom.slice_key[:lead]:
                    if isinstance(s, slice):
                        ranges.append(range(int(s.start), int(s.stop)))
                    else:
                        ranges.append(range(int(s), int(s) + 1))
                grid = np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, lead)
                keys.update(tuple(int(v) for v in row) for row in grid)
                values.add(int(atom.new_value))
            else:  # data_setitem: (indices, old values, new values)
                indices, _old, new = atom
                if lead:
                    rows = np.unique(np.stack([np.asarray(i) for i in indices[:lead]], -1), axis=0)
                    keys.update(tuple(int(v) for v in row) for row in rows)
                else:
                    keys.add(())
                values.update(int(v) for v in np.unique(np.asarray(new)))
    except (TypeError, ValueError, AttributeError, IndexError):
        return None
    if lead == 0 and keys:
        keys = {()}
    return keys, values


# ---------------------------------------------------------------------- the job (worker side)
@dataclass
class _Job:
    record: SegmentationRecord
    image: Image
    mask_layer: Labels
    data: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, ...]
    model: Any
    keep: list[SliceKey]
    seconds: float | None
    steps: int | None
    lr: float
    freeze: tuple[str, ...]
    device: str | None
    stop: threading.Event = field(default_factory=threading.Event)
    batch_size: int = 4


@dataclass
class _Outcome:
    model: Any = None
    segmentation: Any = None
    error: BaseException | None = None
    stopped: bool = False
    last: Any = None


def _run_job(job: _Job) -> Generator[tuple[str, Any], None, _Outcome]:
    """Worker body: fine-tune, then segment the study with the new model. Exceptions are
    returned in the outcome (napari's generator worker drops some of them silently)."""
    from napari_sdnet import api

    outcome = _Outcome()
    try:
        gen = api.finetune(
            job.model,
            job.data,
            job.labels,
            job.spacing,
            seconds=job.seconds,
            steps=job.steps,
            lr=job.lr,
            freeze=job.freeze,
            device=job.device,
            batch_size=job.batch_size,
            stop=job.stop.is_set,
        )
        while True:
            try:
                progress = next(gen)
            except StopIteration as end:
                outcome.model = end.value
                break
            outcome.last = progress
            yield ("progress", progress)
        outcome.stopped = job.stop.is_set()
        yield ("status", "segmenting the study with the fine-tuned model ...")
        for item in api.segment_iter(outcome.model, job.data, job.spacing):
            if isinstance(item, api.Segmentation):
                outcome.segmentation = item
                break
    except Exception as exc:  # shown to the user on the UI thread
        outcome.error = exc
    return outcome


@dataclass
class _UndoStep:
    record: SegmentationRecord
    model: Any
    model_key: tuple | None
    mask: np.ndarray
    mask_digests: tuple[str, ...]
    reconstruction: np.ndarray | None
    reconstruction_digests: tuple[str, ...] | None
    segmentation: Any
    frames: dict
    model_source: str
    edited: list[SliceKey]


# ------------------------------------------------------------------------------- the widget
class FinetuneWidget(MessagesMixin, QWidget):
    """Dock widget: the edited slices, the training settings, Fine-tune/Stop, Undo, Save."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        self.state = get_state(self.viewer)
        self.worker = None
        self.last_error: BaseException | None = None
        self.last_model: Any = None  # the latest fine-tuned model
        self.batch_size = 4
        self.ask_save_path: Callable[[QWidget | None, str], str | None] = ask_model_save_path
        self.confirm_overwrite: Callable[[QWidget | None, Path], bool] = confirm_overwrite
        self.edited: list[SliceKey] = []
        self._job: _Job | None = None
        self._undo: _UndoStep | None = None
        self._choices: list[Image] = []
        self._watched: Labels | None = None
        self._baseline: np.ndarray | None = None
        running: dict[str, Any] = {}
        self._running = running

        def _stop_running(*_: Any) -> None:
            job = running.get("job")
            if job is not None:
                job.stop.set()
            if running.get("worker") is not None:
                running["worker"].quit()

        self.destroyed.connect(_stop_running)
        self._build()
        events = self.viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            getattr(events, name).connect(self._refresh_images)
        self.state.record_changed.connect(self._on_record_changed)
        self._refresh_images()

    # -- layout --------------------------------------------------------------------------------
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        layout.addLayout(form)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("a study segmented with the SDNet segmentation widget")
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        form.addRow("study", self.image_combo)
        self.mask_label = QLabel("-")
        self.mask_label.setWordWrap(True)
        form.addRow("corrections in", self.mask_label)

        layout.addWidget(QLabel("edited slices (the labelled ones; only label 2 counts):"))
        self.slice_list = QListWidget()
        self.slice_list.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.slice_list.setMaximumHeight(120)
        layout.addWidget(self.slice_list)
        row = QHBoxLayout()
        self.add_button = QPushButton("Add current slice")
        self.add_button.clicked.connect(lambda: self.add_current_slice())
        self.remove_button = QPushButton("Remove selected")
        self.remove_button.clicked.connect(lambda: self.remove_selected())
        row.addWidget(self.add_button)
        row.addWidget(self.remove_button)
        layout.addLayout(row)

        settings = QFormLayout()
        layout.addLayout(settings)
        budget = QHBoxLayout()
        self.budget_value = QSpinBox()
        self.budget_value.setRange(1, 1_000_000)
        self.budget_value.setValue(FINETUNE_STEPS)
        self.budget_kind = QComboBox()
        self.budget_kind.addItems([BUDGET_STEPS, BUDGET_SECONDS])
        self.budget_kind.setToolTip(
            f"{FINETUNE_STEPS} steps take about a minute on 2 CPU cores, seconds on a GPU; "
            "more steps can over-fit the painted slices"
        )
        budget.addWidget(self.budget_value)
        budget.addWidget(self.budget_kind)
        settings.addRow("budget", budget)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(1e-6, 1.0)
        self.lr_spin.setSingleStep(1e-5)
        self.lr_spin.setValue(FINETUNE_LR)
        settings.addRow("learning rate", self.lr_spin)
        self.update_combo = QComboBox()
        self.update_combo.addItems([UPDATE_ALL, UPDATE_DECOMPOSER])
        self.update_combo.setToolTip(
            "decomposer only: the reconstructor (and so latent mixing) stays as it was"
        )
        settings.addRow("update", self.update_combo)
        self.device_combo = device_combo()
        settings.addRow("device", self.device_combo)

        self.run_button = QPushButton("Fine-tune")
        self.run_button.clicked.connect(self._on_run_clicked)
        layout.addWidget(self.run_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setFormat("%p% of the budget")
        layout.addWidget(self.progress)
        self.loss_label = QLabel("losses: -")
        self.loss_label.setWordWrap(True)
        layout.addWidget(self.loss_label)
        # live plot of the training losses (redrawn when Qt is idle, not on every step)
        self.loss_history: dict[str, list[tuple[int, float]]] = {}
        self.loss_figure = Figure(figsize=(3.6, 2.0))
        self.loss_figure.set_layout_engine("tight")
        self.loss_canvas = FigureCanvasQTAgg(self.loss_figure)
        self.loss_canvas.setMinimumHeight(150)
        layout.addWidget(self.loss_canvas)
        self._loss_timer = QTimer(self)
        self._loss_timer.setSingleShot(True)
        self._loss_timer.setInterval(LOSS_PLOT_MS)
        self._loss_timer.timeout.connect(self._draw_losses)
        self._draw_losses()
        self.status = QLabel("ready")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        row = QHBoxLayout()
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("restore the model and mask from before the last fine-tuning")
        self.undo_button.setEnabled(False)
        self.undo_button.clicked.connect(lambda: self.undo())
        self.save_button = QPushButton("Save model...")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(lambda: self.save_model())
        row.addWidget(self.undo_button)
        row.addWidget(self.save_button)
        layout.addLayout(row)
        layout.addStretch(1)

    # -- the study and its mask ----------------------------------------------------------------
    def _segmented_images(self) -> list[Image]:
        out = []
        for layer in self.viewer.layers:
            if not isinstance(layer, Image):
                continue
            record = self.state.record_for(layer)
            if record is not None and self._mask_of(record) is not None:
                out.append(layer)
        return out

    def _mask_of(self, record: SegmentationRecord) -> Labels | None:
        layer = record.mask.layer if record.mask is not None else None
        return layer if layer is not None and layer in self.viewer.layers else None

    def _refresh_images(self, *_: Any) -> None:
        current = self.chosen_image()
        choices = self._segmented_images()
        if current not in choices:
            current = choices[-1] if choices else None
        self._choices = choices
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems([layer.name for layer in choices])
        if current is not None:
            self.image_combo.setCurrentIndex(choices.index(current))
        self.image_combo.blockSignals(False)
        self._on_image_changed()

    def _on_record_changed(self, record: SegmentationRecord) -> None:
        self._refresh_images()
        if record.image is self.chosen_image():
            self._watch(self._mask_of(record), force=True)

    def chosen_image(self) -> Image | None:
        """The segmented image whose corrections are used."""
        i = self.image_combo.currentIndex()
        return self._choices[i] if 0 <= i < len(self._choices) else None

    def select_image(self, image: Any) -> bool:
        self._refresh_images()
        image = unwrap(image)
        if image not in self._choices:
            return False
        self.image_combo.setCurrentIndex(self._choices.index(image))
        return True

    def mask_layer(self) -> Labels | None:
        """The myocardium layer of the chosen study (where the user paints)."""
        image = self.chosen_image()
        record = self.state.record_for(image) if image is not None else None
        return self._mask_of(record) if record is not None else None

    def _on_image_changed(self, *_: Any) -> None:
        self._watch(self.mask_layer())

    def _watch(self, layer: Labels | None, force: bool = False) -> None:
        """Listen to the paint events of ``layer`` (and to no other layer)."""
        if layer is self._watched and not force:
            return
        if self._watched is not None and layer is not self._watched:
            self._watched.events.paint.disconnect(self._on_paint)
        if layer is not self._watched and layer is not None:
            layer.events.paint.connect(self._on_paint)
        if layer is not self._watched:
            self._set_edited([])
            self._undo = None
            self.undo_button.setEnabled(False)
        self._watched = layer
        self._baseline = None if layer is None else np.array(layer.data, copy=True)
        self.mask_label.setText(repr(layer.name) if layer is not None else "-")

    def _on_paint(self, event: Any) -> None:
        layer = self._watched
        if layer is None:
            return
        parsed = _painted_slices(getattr(event, "value", None) or (), layer.ndim)
        if parsed is None or not parsed[0]:
            keys, values = self._changed_slices(), set()
        else:
            keys, values = parsed
        other = sorted(v for v in values if v not in (0, MYOCARDIUM))
        if other:
            notifications.show_warning(
                f"painted with label {other[0]}: only label 2 (myocardium) counts for "
                "fine-tuning; choose label 2 in the layer controls"
            )
        self._set_edited(sorted(set(self.edited) | set(keys)))

    def _changed_slices(self) -> set[SliceKey]:
        layer = self._watched
        if layer is None or self._baseline is None:
            return set()
        data = np.asarray(layer.data)
        if data.shape != self._baseline.shape:
            return set()
        lead = data.ndim - 2
        diff = (data != self._baseline).reshape(-1, *data.shape[-2:]).any(axis=(1, 2))
        return (
            {
                tuple(int(i) for i in np.unravel_index(k, data.shape[:lead]))
                for k in np.flatnonzero(diff)
            }
            if lead
            else ({()} if diff.any() else set())
        )

    def _set_edited(self, keys: list[SliceKey]) -> None:
        self.edited = list(keys)
        self.slice_list.clear()
        self.slice_list.addItems([_slice_text(k) for k in self.edited])

    def current_slice(self) -> SliceKey | None:
        """The slice of the myocardium layer shown in the viewer."""
        layer = self.mask_layer()
        if layer is None:
            return None
        point = layer.world_to_data(self.viewer.dims.point)
        shape = layer.data.shape
        return tuple(
            int(min(max(round(float(point[i])), 0), shape[i] - 1)) for i in range(layer.ndim - 2)
        )

    def add_current_slice(self) -> SliceKey | None:
        key = self.current_slice()
        if key is None:
            self._error(self._no_study_message())
            return None
        if key not in self.edited:
            self._set_edited(sorted([*self.edited, key]))
        return key

    def remove_selected(self) -> None:
        rows = {self.slice_list.row(item) for item in self.slice_list.selectedItems()}
        self._set_edited([k for i, k in enumerate(self.edited) if i not in rows])

    def remove_slice(self, key: SliceKey) -> None:
        self._set_edited([k for k in self.edited if k != tuple(key)])

    def _no_study_message(self) -> str:
        return (
            "no segmented study with a myocardium layer: segment the study with the SDNet "
            "segmentation widget first, then correct '<image> myocardium' with label 2"
        )

    # -- fine-tuning ---------------------------------------------------------------------------
    def _on_run_clicked(self) -> None:
        if self.worker is not None:
            self.stop()
        else:
            self.finetune()

    def set_budget(self, *, seconds: float | None = None, steps: int | None = None) -> None:
        if steps is not None:
            self.budget_kind.setCurrentText(BUDGET_STEPS)
            self.budget_value.setValue(int(steps))
        elif seconds is not None:
            self.budget_kind.setCurrentText(BUDGET_SECONDS)
            self.budget_value.setValue(max(1, round(float(seconds))))

    def finetune(self) -> Any:
        """Start fine-tuning; returns the worker, or None (the reason is shown)."""
        if self.worker is not None or self.state.busy:
            self._error("a job is running on this viewer; wait for it or stop it")
            return None
        self.last_error = None
        image = self.chosen_image()
        layer = self.mask_layer()
        record = self.state.record_for(image) if image is not None else None
        if image is None or layer is None or record is None:
            self._error(self._no_study_message())
            return None
        model = self.state.model
        if model is None:
            self._error("no model is loaded: segment the study with the SDNet segmentation widget")
            return None
        data = np.asarray(image.data)
        mask = np.asarray(layer.data)
        if mask.shape != data.shape:
            self._error(f"{layer.name!r} does not have the shape of {image.name!r}")
            return None
        if not self.edited:
            self._error(NO_EDIT_MESSAGE)
            return None
        labels = np.zeros(mask.shape, np.uint8)
        empty, other = [], set()
        for key in self.edited:
            values = mask[key]
            labels[key] = np.where(values == MYOCARDIUM, MYOCARDIUM, 0)
            if not (values == MYOCARDIUM).any():
                empty.append(key)
            other.update(int(v) for v in np.unique(values) if v not in (0, MYOCARDIUM))
        if other:
            notifications.show_warning(
                f"the edited slices hold label(s) {sorted(other)}: only label 2 (myocardium) "
                "counts, the other values are treated as background"
            )
        if len(empty) == len(self.edited):
            self._error(
                "no edited slice has any myocardium (label 2) pixel: paint the myocardium "
                "(label 2) on at least one slice"
            )
            return None
        if empty:
            notifications.show_warning(
                f"{len(empty)} listed slice(s) hold no label 2 and count as unlabelled: "
                + ", ".join(_slice_text(k) for k in empty[:5])
            )
        by_steps = self.budget_kind.currentText() == BUDGET_STEPS
        device = self.device_combo.currentText()
        job = _Job(
            record=record,
            image=image,
            mask_layer=layer,
            data=data.copy(),
            labels=labels,
            spacing=tuple(abs(float(s)) for s in image.scale),
            model=model,
            keep=list(self.edited),
            seconds=None if by_steps else float(self.budget_value.value()),
            steps=int(self.budget_value.value()) if by_steps else None,
            lr=float(self.lr_spin.value()),
            freeze=("reconstructor",)
            if self.update_combo.currentText() == UPDATE_DECOMPOSER
            else (),
            device=device,
            batch_size=self.batch_size,
        )
        self._start(job)
        return self.worker

    def _start(self, job: _Job) -> None:
        self._job = self._running["job"] = job
        self.state.busy = True
        self._set_running(True)
        self.progress.setValue(0)
        self.loss_label.setText("losses: -")
        self.loss_history = {}
        self._draw_losses()
        n = len(job.keep)
        self.status.setText(f"fine-tuning on {n} edited slice(s) of {job.image.name!r} ...")
        worker = create_worker(_run_job, job, _start_thread=False)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self.worker = self._running["worker"] = worker
        worker.start()

    def stop(self) -> None:
        """Stop training after the current step; the model so far is kept."""
        if self._job is not None:
            self._job.stop.set()
            self.run_button.setEnabled(False)
            self.status.setText("stopping (the model so far is kept) ...")

    def _set_running(self, running: bool) -> None:
        for w in (
            self.image_combo,
            self.budget_value,
            self.budget_kind,
            self.lr_spin,
            self.update_combo,
            self.device_combo,
            self.add_button,
            self.remove_button,
            self.save_button,
            self.undo_button,
        ):
            w.setEnabled(not running)
        self.run_button.setEnabled(True)
        self.run_button.setText("Stop" if running else "Fine-tune")
        if not running:
            self.undo_button.setEnabled(self._undo is not None)
            self.save_button.setEnabled(self.last_model is not None)

    def _on_yielded(self, item: tuple[str, Any]) -> None:
        kind, value = item
        job = self._job
        if kind == "status":
            self.status.setText(value)
            self.progress.setValue(100)
        elif kind == "progress" and job is not None:
            if job.steps:
                fraction = value.iteration / job.steps
            else:
                fraction = value.elapsed / job.seconds if job.seconds else 0.0
            self.progress.setValue(int(round(100 * min(max(fraction, 0.0), 1.0))))
            if value.losses:  # the final report (done) carries none: keep the last ones
                losses = ", ".join(f"{k} {float(v):.4g}" for k, v in sorted(value.losses.items()))
                self.loss_label.setText(f"step {value.iteration}: {losses}")
            for key in PLOTTED_LOSSES:
                if key in value.losses:
                    point = (int(value.iteration), float(value.losses[key]))
                    self.loss_history.setdefault(key, []).append(point)
            if not self._loss_timer.isActive():
                self._loss_timer.start()

    def _draw_losses(self) -> None:
        """Redraw the loss plot from ``loss_history`` (drawn when Qt is next idle)."""
        fig = self.loss_figure
        fig.clear()
        ax = fig.add_subplot(1, 1, 1)
        for key, points in self.loss_history.items():
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=PLOTTED_LOSSES[key], linewidth=1)
        if self.loss_history:
            ax.legend(fontsize=7, loc="best", framealpha=0.6)
        else:
            ax.text(
                0.5,
                0.5,
                "losses appear here while fine-tuning",
                ha="center",
                va="center",
                fontsize=8,
                transform=ax.transAxes,
            )
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        self.loss_canvas.draw_idle()

    def _on_finished(self) -> None:
        self.worker = None
        self._running.pop("worker", None)
        self._running.pop("job", None)
        self._job = None
        self.state.busy = False
        self._set_running(False)
        self._loss_timer.stop()
        self._draw_losses()  # the complete curves
        free_gpu_memory()  # the training copies, optimiser states and batches

    def _on_returned(self, outcome: _Outcome) -> None:
        job = self._job
        if outcome.error is not None:
            self._handle_error(outcome.error)
            return
        if job is None:  # pragma: no cover - defensive
            return
        layer = job.mask_layer
        if layer not in self.viewer.layers or job.image not in self.viewer.layers:
            self._warning("the study or its myocardium layer was removed; result discarded")
            return
        self._apply(job, outcome)

    def _apply(self, job: _Job, outcome: _Outcome) -> None:
        from napari_sdnet import api

        record, layer, seg = job.record, job.mask_layer, outcome.segmentation
        recon_layer = record.reconstruction.layer if record.reconstruction else None
        recon_ok = (
            recon_layer is not None
            and recon_layer in self.viewer.layers
            and record.reconstruction.untouched()
            and tuple(recon_layer.data.shape) == tuple(seg.mask.shape)
        )
        self._undo = _UndoStep(
            record=record,
            model=self.state.model,
            model_key=self.state.model_key,
            mask=np.array(layer.data, copy=True),
            mask_digests=record.mask.digests,
            reconstruction=np.array(recon_layer.data, copy=True) if recon_ok else None,
            reconstruction_digests=record.reconstruction.digests if recon_ok else None,
            segmentation=record.segmentation,
            frames=dict(record.frames),
            model_source=record.model_source,
            edited=list(self.edited),
        )
        new_labels = api.to_acdc_labels(seg.mask)
        data = new_labels.copy()
        current = np.asarray(layer.data)
        # slices painted while training ran are kept as well
        job.keep = sorted(set(job.keep) | set(self.edited))
        for key in job.keep:
            data[key] = current[key]
        layer.data = data
        # the digests of what the plugin itself wrote: frames without a kept correction count
        # as the plugin's, frames holding one as edited (the segmentation widget keeps them)
        record.mask.digests = data_digests(new_labels)
        if recon_ok:
            recon_layer.data = seg.reconstruction_intensity
            record.reconstruction.mark_written()
        record.segmentation = seg
        record.frames.clear()
        record.model_source = outcome.model.source
        self._baseline = np.array(data, copy=True)
        self.state.model = outcome.model
        self.state.model_key = (outcome.model.source, self.device_combo.currentText(), None)
        self.last_model = outcome.model
        last = outcome.last
        steps = 0 if last is None else last.iteration
        seconds = 0.0 if last is None else last.elapsed
        how = "stopped" if outcome.stopped else "done"
        self.progress.setValue(100)
        self.status.setText(
            f"fine-tuning {how}: {steps} step(s) in {seconds:.1f} s; the study was segmented "
            f"again, the {len(job.keep)} edited slice(s) were kept"
        )
        notifications.show_info(
            f"fine-tuned model in use ({steps} steps); {layer.name!r} updated except the "
            f"{len(job.keep)} edited slice(s). Undo restores the previous model and mask"
        )
        self.state.record_changed.emit(record)

    def _handle_error(self, exc: BaseException) -> None:
        self.last_error = exc
        if is_out_of_memory(exc):
            free_gpu_memory()
            self.device_combo.setCurrentText("cpu")
            message = (
                "out of memory while fine-tuning. GPU memory was freed and the device is now "
                "'cpu': press Fine-tune to retry (slower), or use a smaller time budget"
            )
        elif isinstance(exc, SDNetError):
            message = str(exc)
        else:
            message = f"fine-tuning failed: {type(exc).__name__}: {exc}"
        self._error(message)

    # -- undo and save -------------------------------------------------------------------------
    def undo(self) -> bool:
        """Restore the model and the mask from before the last fine-tuning."""
        step = self._undo
        if step is None or self.worker is not None:
            return False
        record = step.record
        layer = record.mask.layer if record.mask else None
        if layer is not None and layer in self.viewer.layers:
            layer.data = step.mask
            record.mask.digests = step.mask_digests
            self._baseline = np.array(step.mask, copy=True)
        recon = record.reconstruction.layer if record.reconstruction else None
        if step.reconstruction is not None and recon is not None:
            recon.data = step.reconstruction
            record.reconstruction.digests = step.reconstruction_digests
        record.segmentation = step.segmentation
        record.frames = step.frames
        record.model_source = step.model_source
        self.state.model = step.model
        self.state.model_key = step.model_key
        self._set_edited(step.edited)
        self._undo = None
        self.last_model = None
        self.undo_button.setEnabled(False)
        self.save_button.setEnabled(False)
        self.status.setText("undone: the previous model and mask are back")
        notifications.show_info("fine-tuning undone: the previous model and mask are back")
        return True

    def save_model(self, path: str | Path | None = None, *, overwrite: bool | None = None):
        """Write the fine-tuned model (``.safetensors``); returns the path or None."""
        model = self.last_model
        if model is None:
            self._error("nothing to save: fine-tune a model first")
            return None
        if path is None:
            path = self.ask_save_path(self, "finetuned.safetensors")
            if not path:
                return None
        target = Path(path)
        if target.suffix != ".safetensors":
            target = target.with_name(target.name + ".safetensors")
        if target.exists():
            if overwrite is None:
                overwrite = self.confirm_overwrite(self, target)
            if not overwrite:
                self.status.setText(f"not saved: {target.name} exists")
                return None
        try:
            model.save(target, overwrite=bool(overwrite))
        except (SDNetError, OSError) as exc:
            self._error(f"cannot save the model: {exc}")
            return None
        self.status.setText(f"saved the model to {target}")
        notifications.show_info(f"wrote {target}")
        return target
