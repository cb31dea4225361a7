"""Dock widget "Fine-tuning": fine-tune the model on the slices the user corrected.

Layout and wiring only: the training is :func:`napari_sdnet.api.finetune` and the new
segmentation :func:`napari_sdnet.api.segment_iter`, both run by the dock's job runner; which
slices count as corrected is :class:`napari_sdnet.edits.EditedSlices`.

The user corrects ``<image> myocardium`` (the Labels layer the segmentation widget made) with
napari's brush, fill and eraser, label 2, or by assigning ``layer.data``. A slice is listed as
corrected while it differs from what the model wrote (an undone stroke leaves the list), or
when the user adds the slice shown in the viewer by hand; clicking a listed slice shows it in
the viewer, and the viewer says when the slice shown is a corrected one. The listed slices are
the labelled training slices (only their label-2 pixels count), every other slice of the study
is the unlabelled pool.

When training ends (budget used, or Stop: the model so far is kept) the new model joins the
viewer's session as ``fine-tuned N`` and is put in use (the segmentation widget then segments
with it), and the study is segmented again; the new mask is written into the myocardium layer
everywhere except on the listed slices, which keep the user's corrections. Undo restores the
model that was in use and that layer's data from before (slices edited since are kept), and
says which; "Save model..." writes the model as a ``.safetensors`` file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)

from napari_sdnet._napari._corrections import CorrectionsPanel
from napari_sdnet._napari._dock import (
    DockWidget,
    ask_save_file,
    default_folder,
    file_safe,
)
from napari_sdnet._napari._finetune_job import FinetuneUndo, _Job, _run_job
from napari_sdnet._napari._jobs import free_gpu_memory, is_out_of_memory
from napari_sdnet._napari._lossplot import LossPlot, loss_text
from napari_sdnet._napari._models import DeviceChooser
from napari_sdnet._napari._state import SegmentationRecord
from napari_sdnet.api import FINETUNE_LR, FINETUNE_STEPS
from napari_sdnet.edits import SliceKey, painted_slices, training_labels
from napari_sdnet.errors import SDNetError
from napari_sdnet.io.slices import ACDC_LABELS

WIDGET_NAME = "Fine-tuning"
BUDGET_SECONDS = "seconds"
BUDGET_STEPS = "steps"
UPDATE_ALL = "whole model"
UPDATE_DECOMPOSER = "decomposer only"
NO_EDIT_MESSAGE = (
    "no edited slice: paint a correction (2 myocardium; 1 RV or 3 LV cavity with a "
    "three-structure model) on at least one slice of the segmentation layer, or add the "
    "current slice to the list"
)
_painted_slices = painted_slices  # kept for scripts written against the earlier name


def ask_model_save_path(parent: QWidget | None, suggested: str) -> str | None:
    """Ask where to save the fine-tuned model; None when cancelled."""
    return ask_save_file(
        parent, "Save the fine-tuned model", suggested, "napari-sdnet models (*.safetensors)"
    )


# ------------------------------------------------------------------------------- the widget
class FinetuneWidget(DockWidget):
    """Dock widget: the edited slices, the training settings, Fine-tune/Stop, Undo, Save."""

    JOB_NAME = "fine-tuning"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.last_model: Any = None  # the latest fine-tuned model
        self.batch_size = 4
        self.ask_save_path: Callable[[QWidget | None, str], str | None] = ask_model_save_path
        self._job: _Job | None = None
        self._undo: FinetuneUndo | None = None
        self._build()
        self.state.record_changed.connect(self._on_record_changed)
        self.image_combo.refresh()

    @property
    def edited(self) -> list[SliceKey]:
        """The listed (corrected) slices."""
        return self.corrections.keys

    # -- layout --------------------------------------------------------------------------------
    def _build(self) -> None:
        layout = self.body
        form, self.image_combo = self.study_form(self._segmented, self._on_image_changed)
        self.mask_label = QLabel("-")
        self.mask_label.setWordWrap(True)
        self.mask_label.setToolTip("the Labels layer whose corrected slices are used")
        form.addRow("corrections in", self.mask_label)

        self.corrections = CorrectionsPanel(self, self._no_study_message)
        self.slice_list = self.corrections.slice_list
        self.add_button = self.corrections.add_button
        self.remove_button = self.corrections.remove_button
        layout.addWidget(self.corrections)

        settings = QFormLayout()
        layout.addLayout(settings)
        budget = QHBoxLayout()
        self.budget_value = QSpinBox()
        self.budget_value.setRange(1, 1_000_000)
        self.budget_value.setValue(FINETUNE_STEPS)
        self.budget_kind = QComboBox()
        self.budget_kind.addItems([BUDGET_STEPS, BUDGET_SECONDS])
        tip = (
            f"{FINETUNE_STEPS} steps take about a minute on 2 CPU cores, seconds on a GPU; "
            "more steps can over-fit the painted slices"
        )
        for w in (self.budget_value, self.budget_kind):
            w.setToolTip(tip)
            budget.addWidget(w)
        settings.addRow("budget", budget)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(1e-6, 1.0)
        self.lr_spin.setSingleStep(1e-5)
        self.lr_spin.setValue(FINETUNE_LR)
        self.lr_spin.setToolTip("Adam learning rate at the start (it decays to 0 at the end)")
        settings.addRow("learning rate", self.lr_spin)
        self.update_combo = QComboBox()
        self.update_combo.addItems([UPDATE_ALL, UPDATE_DECOMPOSER])
        self.update_combo.setToolTip(
            "decomposer only: the reconstructor (and so latent mixing) stays as it was"
        )
        settings.addRow("update", self.update_combo)
        self.devices = DeviceChooser(self.state)
        self.devices.add_rows(settings)
        self.device_combo = self.devices.combo
        self.devices.update_label()

        self.run_button = QPushButton("Fine-tune")
        self.run_button.setToolTip(
            "train the model in use on the corrected slices, then segment the study again "
            "(the corrected slices are kept); becomes Stop while training"
        )
        self.run_button.clicked.connect(self._on_run_clicked)
        layout.addWidget(self.run_button)
        self.progress = self.progress_bar(100, "no fine-tuning yet", "share of the budget used")
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label())
        self.loss_label = QLabel("losses: -")
        self.loss_label.setWordWrap(True)
        self.loss_label.setToolTip("the latest losses of the training step")
        layout.addWidget(self.loss_label)
        self.loss_plot = LossPlot()
        self.loss_canvas, self.loss_figure = self.loss_plot, self.loss_plot.figure_
        layout.addWidget(self.loss_plot)
        row = QHBoxLayout()
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("put back the model and the mask from before fine-tuning")
        self.undo_button.setEnabled(False)
        self.undo_button.clicked.connect(lambda: self.undo())
        self.save_button = QPushButton("Save model...")
        self.save_button.setToolTip("write the fine-tuned model as a .safetensors file")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(lambda: self.save_model())
        row.addWidget(self.undo_button)
        row.addWidget(self.save_button)
        layout.addLayout(row)
        layout.addStretch(1)

    def start_buttons(self) -> list[QWidget]:
        return [self.run_button, self.undo_button] if not self.jobs.running else []

    def _on_session_busy(self, *_: Any) -> None:
        super()._on_session_busy()
        if not self.state.busy and not self.jobs.running:
            self.undo_button.setEnabled(self._undo is not None)

    @property
    def loss_history(self) -> dict[str, list[tuple[int, float]]]:
        return self.loss_plot.history

    # -- the study and its mask ----------------------------------------------------------------
    def _segmented(self, layer: Any) -> bool:
        if not isinstance(layer, Image):
            return False
        record = self.state.record_for(layer)
        return record is not None and self._mask_of(record) is not None

    def _mask_of(self, record: SegmentationRecord) -> Labels | None:
        layer = record.mask.layer if record.mask is not None else None
        return layer if self.layer_alive(layer) else None

    def _on_record_changed(self, record: SegmentationRecord) -> None:
        self.image_combo.refresh()
        if record.image is self.chosen_image():
            self._watch(self._mask_of(record), force=True)

    def mask_layer(self) -> Labels | None:
        """The myocardium layer of the chosen study (where the user paints)."""
        image = self.chosen_image()
        record = self.state.record_for(image) if image is not None else None
        return self._mask_of(record) if record is not None else None

    def _on_image_changed(self, *_: Any) -> None:
        self._watch(self.mask_layer())

    def _watch(self, layer: Labels | None, force: bool = False) -> None:
        """Follow the edits of ``layer`` (and of no other layer)."""
        if layer is self.corrections.watched and not force:
            return
        self.corrections.watch(layer)
        self.mask_label.setText(repr(layer.name) if layer is not None else "-")

    def _on_paint(self, event: Any) -> None:
        self.corrections.on_paint(event)

    def current_slice(self) -> SliceKey | None:
        """The slice of the myocardium layer shown in the viewer."""
        return self.corrections.current_slice()

    def add_current_slice(self) -> SliceKey | None:
        return self.corrections.add_current_slice()

    def remove_selected(self) -> None:
        self.corrections.remove_selected()

    def remove_slice(self, key: SliceKey) -> None:
        self.corrections.remove_slice(key)

    def _no_study_message(self) -> str:
        return (
            "no segmented study: segment the study with the Segmentation widget first, "
            "then correct its '<image> segmentation' (or '<image> myocardium') layer"
        )

    # -- fine-tuning ---------------------------------------------------------------------------
    def _on_run_clicked(self) -> None:
        if self.jobs.running:
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
        if self.jobs.running or self.state.busy:
            self._error(self.state.busy_reason() or "fine-tuning is already running")
            return None
        self.last_error = None
        image, layer = self.chosen_image(), self.mask_layer()
        record = self.state.record_for(image) if image is not None else None
        if image is None or layer is None or record is None:
            self._error(self._no_study_message())
            return None
        if self.state.model is None:
            self._error("no model is loaded: segment the study with the Segmentation widget")
            return None
        data, mask = np.asarray(image.data), np.asarray(layer.data)
        if mask.shape != data.shape:
            self._error(f"{layer.name!r} does not have the shape of {image.name!r}")
            return None
        if not self.edited:
            self._error(NO_EDIT_MESSAGE)
            return None
        structures = self.state.model.config.structures
        found = training_labels(mask, self.edited, [ACDC_LABELS[s] for s in structures])
        for text in found.warnings():
            self._warning(text)
        if found.problem():
            self._error(found.problem())
            return None
        by_steps = self.budget_kind.currentText() == BUDGET_STEPS
        budget = self.budget_value.value()
        decomposer = self.update_combo.currentText() == UPDATE_DECOMPOSER
        job = _Job(
            record=record,
            image=image,
            mask_layer=layer,
            data=data.copy(),
            labels=found.labels,
            spacing=tuple(abs(float(s)) for s in image.scale),
            model=self.state.model,
            keep=list(self.edited),
            seconds=None if by_steps else float(budget),
            steps=int(budget) if by_steps else None,
            lr=float(self.lr_spin.value()),
            freeze=("reconstructor",) if decomposer else (),
            device=self.device_combo.currentText(),
            batch_size=self.batch_size,
        )
        worker = self.start_job(_run_job, job, stop=job.stop, what=f"fine-tuning on {image.name}")
        if worker is None:
            return None
        self.progress.setFormat("%p% of the budget")
        self.progress.setValue(0)
        self.loss_label.setText("losses: -")
        self.loss_plot.clear()
        self.status.setText(
            f"fine-tuning {self.state.model_name()} on {len(job.keep)} edited slice(s) of "
            f"{image.name!r} ..."
        )
        return worker

    def stop(self) -> None:
        """Stop training after the current step; the model so far is kept."""
        if self._job is not None:
            self.jobs.stop()
            self.run_button.setEnabled(False)
            self.status.setText("stopping (the model so far is kept) ...")

    def _set_running(self, running: bool) -> None:
        self.enable(
            "image_combo budget_value budget_kind lr_spin update_combo device_combo add_button "
            "remove_button save_button undo_button",
            not running,
        )
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
            self.jobs.report(1, 1, "segmenting the study again")
        elif kind == "progress" and isinstance(value, tuple):  # segmenting again
            self.jobs.report(*value, f"segmenting again: {value[0]} of {value[1]} slices")
        elif kind == "progress" and job is not None:
            if job.steps:
                fraction = value.iteration / job.steps
            else:
                fraction = value.elapsed / job.seconds if job.seconds else 0.0
            fraction = min(max(fraction, 0.0), 1.0)
            self.progress.setValue(int(round(100 * fraction)))
            self.jobs.report(round(1000 * fraction), 1000, f"step {value.iteration}")
            if value.losses:  # the final report (done) carries none: keep the last ones
                self.loss_label.setText(f"step {value.iteration}: {loss_text(value.losses)}")
            self.loss_plot.add(value.iteration, value.losses)

    def _on_finished(self) -> None:
        self._job = None
        self._set_running(False)
        self.loss_plot.draw_now()  # the complete curves
        free_gpu_memory()  # the training copies, optimiser states and batches

    def _on_done(self, out: tuple[Any, Any] | None, error: BaseException | None) -> None:
        job = self._job
        if error is not None:
            self._handle_error(error)
            return
        if job is None or out is None:  # pragma: no cover - defensive
            return
        if not self.layer_alive(job.mask_layer) or not self.layer_alive(job.image):
            self._warning("the study or its myocardium layer was removed; result discarded")
            return
        self._apply(job, *out)

    def _apply(self, job: _Job, model: Any, seg: Any) -> None:

        record, layer = job.record, job.mask_layer
        made = record.mask
        recon_layer = record.reconstruction.layer if record.reconstruction else None
        recon_ok = (
            self.layer_alive(recon_layer)
            and record.reconstruction.untouched()
            and tuple(recon_layer.data.shape) == tuple(seg.mask.shape)
        )
        new_labels = seg.labels()
        data = new_labels.copy()
        current = np.asarray(layer.data)
        # slices painted while training ran are kept as well
        job.keep = sorted(set(job.keep) | set(self.edited))
        for key in job.keep:
            data[key] = current[key]
        last = job.last
        steps = 0 if last is None else last.iteration
        seconds = 0.0 if last is None else last.elapsed
        undo = FinetuneUndo.capture(
            self.state, record, layer, data, self.edited, recon_layer if recon_ok else None
        )
        base_name = undo.model_name
        with self.corrections.writing():
            layer.data = data
            # what the plugin itself wrote: slices without a kept correction count as the
            # plugin's, slices holding one as edited (the segmentation widget keeps them)
            made.set_written(new_labels)
            if recon_ok:
                recon_layer.data = seg.reconstruction_intensity
                record.reconstruction.mark_written()
        record.segmentation = seg
        record.frames.clear()
        record.model_source = model.source
        detail = (
            f"{steps} steps on {len(job.keep)} corrected slice(s) of {job.image.name!r}, "
            f"from {base_name}"
        )
        undo.entry = self.state.add_finetuned(model, detail, base_name)
        self._undo = undo
        self.last_model = model
        how = "stopped" if job.stop.is_set() else "done"
        self.progress.setValue(100)
        self.status.setText(
            f"fine-tuning {how}: {steps} step(s) in {seconds:.1f} s; '{undo.entry.name}' is in "
            f"use, the study was segmented again, the {len(job.keep)} edited slice(s) were kept"
        )
        self._info(
            f"'{undo.entry.name}' in use ({steps} steps); {layer.name!r} updated except the "
            f"{len(job.keep)} edited slice(s). Undo puts back {base_name} and the mask"
        )
        if layer is self.corrections.watched:
            self.corrections.watch(layer, keep=job.keep)
        self.state.record_changed.emit(record)

    def _handle_error(self, exc: BaseException) -> None:
        self.last_error = exc
        if is_out_of_memory(exc):
            message = self.jobs.out_of_memory_message(
                "fine-tuning", "press Fine-tune to retry, or use a smaller time budget"
            )
        elif isinstance(exc, SDNetError):
            message = str(exc)
        else:
            message = f"fine-tuning failed: {type(exc).__name__}: {exc}"
        self._error(message)

    # -- undo and save -------------------------------------------------------------------------
    def undo(self) -> bool:
        """Put back the model in use and the mask from before the last fine-tuning."""
        step = self._undo
        if step is None or self.jobs.running or self.state.busy:
            if step is not None:
                self._error(f"cannot undo now: {self.state.busy_reason()}")
            return False
        layer = step.layer
        text, kept = step.restore(self.state, self.layer_alive, self.corrections.writing)
        if layer is self.corrections.watched:
            self.corrections.restore(sorted(set(step.edited) | set(kept)))
        self._undo = None
        self.last_model = None
        self.undo_button.setEnabled(False)
        self.save_button.setEnabled(False)
        self.status.setText(f"undone: {text}")
        self._info(f"fine-tuning undone: {text}")
        self.state.record_changed.emit(step.record)
        return True

    def save_model(self, path: str | Path | None = None, *, overwrite: bool | None = None):
        """Write the fine-tuned model (``.safetensors``); returns the path or None."""
        model = self.last_model
        if model is None:
            self._error("nothing to save: fine-tune a model first")
            return None
        image = self.chosen_image()
        name = f"{file_safe(image.name) if image is not None else 'sdnet'}_finetuned.safetensors"
        found = self.save_target(
            path, self.ask_save_path, default_folder(image) / name, ".safetensors", overwrite
        )
        if found is None:
            return None
        target, overwrite = found
        try:
            model.save(target, overwrite=overwrite)
        except (SDNetError, OSError) as exc:
            self._error(f"cannot save the model: {exc}")
            return None
        entry = next((e for e in self.state.finetuned_models() if e.model is model), None)
        if entry is not None:
            entry.saved_to = str(target)
            self.state.models_changed.emit()
        return self.wrote(target, f"saved the model to {target}")
