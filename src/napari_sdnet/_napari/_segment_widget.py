"""Dock widget "Segmentation": segment the heart (or the myocardium) of an image layer.

Layout and wiring only: the work is :func:`napari_sdnet.api.segment_iter` (run by the dock's
:class:`~napari_sdnet._napari._jobs.JobRunner`, so the window stays responsive and Cancel works
between batches), the export is :mod:`napari_sdnet._napari._export`, and what the plugin made is
remembered in the viewer's :class:`~napari_sdnet._napari._state.SDNetState`.

What it adds for an image layer ``<image>``:

* ``<image> segmentation``: Labels (uint8, ACDC values: 1 RV cavity, 2 myocardium, 3 LV
  cavity; ``<image> myocardium`` with 2 alone for a myocardium-only model) with the image's scale,
  translate, rotation, units and a copy of its metadata (``sdnet_geometry`` included, so File >
  Save Selected Layer(s) writes it lined up with the source file);
* ``<image> reconstruction``: Image (gray, hidden at first), SDNet's reconstruction of the image
  from (mask, Z), in the image's intensity units.

Running again updates those layers in place while they hold what the plugin wrote; once the
user has painted on one, a new ``<image> segmentation [2]`` is made instead. For a 4D study in
"current frame" mode only that frame of the 4D layers is written (frames painted by the user
elsewhere stay as they are). Layers the plugin did not make are never touched.

torch is imported only when a model is loaded or a device is described.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.viewer import Viewer
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QPushButton,
    QWidget,
)

from napari_sdnet._napari._dock import (
    PLUGIN,
    DockWidget,
    ask_save_file,
    default_folder,
    show_slice_position,
)
from napari_sdnet._napari._export import default_mask_name, export_mask, with_nifti_suffix
from napari_sdnet._napari._jobs import is_out_of_memory, segment_steps
from napari_sdnet._napari._layers import store_result
from napari_sdnet._napari._models import (
    SESSION_PREFIX,
    DeviceChooser,
    ModelChooser,
    model_key,
    on_device,
)
from napari_sdnet._napari._state import SegmentationRecord, unwrap
from napari_sdnet.errors import SDNetError

WIDGET_NAME = "Segmentation"
FRAMES_ALL = "all frames"
FRAMES_CURRENT = "current frame"
EXPORT_ACDC = "ACDC labels (1 RV, 2 myocardium, 3 LV)"
EXPORT_BINARY = "binary (myocardium = 1)"


# ---------------------------------------------------------------------------------- dialogs
# Module-level functions, also set as widget attributes, so tests (and scripts) replace them.
def ask_save_path(parent: QWidget | None, suggested: str) -> str | None:
    """Ask where to save a mask; None when cancelled."""
    return ask_save_file(
        parent,
        "Export mask (NIfTI, or DICOM SEG for a DICOM study)",
        suggested,
        "NIfTI (*.nii.gz *.nii);;DICOM Segmentation (*.dcm)",
    )


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
    batch_size: int | None = None  # None: the fastest for the device and precision
    loading: bool = False


@dataclass
class _Outcome:
    model: Any = None
    segmentation: Any = None
    labels: np.ndarray | None = None
    reconstruction: np.ndarray | None = None


def _run_job(job: _Job) -> Generator[tuple[str, Any], None, _Outcome]:
    """Worker body: load the model (unless cached), segment, prepare the layer data.

    Yields ``("status", text)``, ``("model", model)``, ``("progress", (done, total))``.
    """
    from napari_sdnet import api

    outcome = _Outcome(model=job.model)
    if outcome.model is None:
        job.loading = True
        yield ("status", f"loading the model ({job.model_source}) ...")
        outcome.model = api.load_model(job.model_source, job.device)
        job.loading = False
        yield ("model", outcome.model)
    seg = yield from segment_steps(outcome.model, job.data, job.spacing, job.batch_size)
    outcome.segmentation = seg
    outcome.labels = seg.labels()  # ACDC labels of every structure the model segments
    outcome.reconstruction = seg.reconstruction_intensity
    return outcome


# ------------------------------------------------------------------------------- the widget
class SegmentWidget(DockWidget):
    """Dock widget: choose an image layer, a model and a device; Segment; Export mask."""

    JOB_NAME = "segmentation"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        # slices per forward pass; None: api.segment_iter's choice for the device and precision
        self.batch_size: int | None = None
        # replaceable dialogs (tests, scripts)
        self.ask_save_path: Callable[[QWidget | None, str], str | None] = ask_save_path
        self._job: _Job | None = None
        self._build()
        self.layer_combo.refresh()
        self.devices.update_label()
        show_slice_position(self.viewer)

    # -- layout --------------------------------------------------------------------------------
    def _build(self) -> None:

        layout = self.body
        form, self.layer_combo = self.chooser_form(
            "image",
            self._usable,
            self._on_layer_changed,
            label=lambda layer: f"{layer.name}  ({layer.ndim}D)",
            tooltip="image layer to segment (2D, 3D or 4D)",
        )

        self.frames_combo = QComboBox()
        self.frames_combo.addItems([FRAMES_ALL, FRAMES_CURRENT])
        self.frames_combo.setToolTip(
            "4D studies: segment every frame, or only the frame shown in the viewer"
        )
        form.addRow("frames", self.frames_combo)

        self.models = ModelChooser(self.state, self)
        self.models.add_rows(form)
        self.model_combo, self.model_path = self.models.combo, self.models.path
        self.browse_button = self.models.browse_button
        self.devices = DeviceChooser(self.state)
        self.devices.add_rows(form)
        self.device_combo, self.device_label = self.devices.combo, self.devices.label

        buttons = QHBoxLayout()
        self.segment_button = QPushButton("Segment")
        self.segment_button.setToolTip(
            "segment with the chosen model: adds '<image> segmentation' (RV cavity, "
            "myocardium, LV cavity), or '<image> myocardium' for a myocardium-only model"
        )
        self.segment_button.clicked.connect(self._on_segment_clicked)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("stop after the current batch; no layer is changed")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.segment_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)

        self.progress = self.progress_bar(1, "no segmentation yet", "slices segmented so far")
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label())

        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        layout.addWidget(line)
        export_form = QFormLayout()
        self.export_values = QComboBox()
        self.export_values.addItems([EXPORT_ACDC, EXPORT_BINARY])
        self.export_values.setToolTip("the values written: ACDC labels, or 0/1 myocardium")
        export_form.addRow("values", self.export_values)
        layout.addLayout(export_form)
        self.export_button = QPushButton("Export mask...")
        self.export_button.setToolTip(
            "save the segmentation of the chosen image as NIfTI with the image's geometry"
        )
        self.export_button.clicked.connect(lambda: self.export_mask())
        layout.addWidget(self.export_button)
        layout.addStretch(1)

    def start_buttons(self) -> list[QWidget]:
        return [self.segment_button]

    # -- layer chooser -------------------------------------------------------------------------
    @staticmethod
    def _usable(layer: Any) -> bool:
        return (
            isinstance(layer, Image)
            and 2 <= layer.ndim <= 4
            and not layer.rgb
            and not getattr(layer, "multiscale", False)
        )

    def chosen_layer(self) -> Image | None:
        """The image layer the widget will segment."""
        return self.layer_combo.chosen()

    def select_layer(self, layer: Any) -> bool:
        """Choose ``layer``; shows an error and returns False when it cannot be segmented."""
        layer = unwrap(layer)
        problem = self._layer_problem(layer)
        if problem:
            self._error(problem)
            return False
        return self.layer_combo.select(layer)

    def _on_layer_changed(self, *_: Any) -> None:
        layer = self.chosen_layer()
        is_4d = layer is not None and layer.ndim == 4
        self.frames_combo.setEnabled(is_4d and not self.jobs.running)

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
    @property
    def ask_model_path(self) -> Callable[[QWidget | None, str], str | None]:
        """The "Browse..." dialog (replaceable: tests, scripts)."""
        return self.models.ask_model_path

    @ask_model_path.setter
    def ask_model_path(self, ask: Callable[[QWidget | None, str], str | None]) -> None:
        self.models.ask_model_path = ask

    def set_model(self, source: str | os.PathLike[str]) -> None:
        """Use ``"bundled"``, a model file, or a model fine-tuned in this viewer (by name)."""
        self.models.set(source)

    def model_source(self) -> str:
        """``"bundled"``, the model file path (may be empty) or ``"session:<name>"``."""
        return self.models.source()

    def set_device(self, device: str) -> None:
        """Choose ``auto``, ``cuda``, ``mps`` or ``cpu``."""
        self.devices.set(device)

    # -- segmentation --------------------------------------------------------------------------
    def _on_segment_clicked(self) -> None:
        self.segment()

    def segment(self, layer: Any = None) -> Any:
        """Start segmenting ``layer`` (default: the chosen one). Returns the worker, or None
        when nothing was started (the reason is shown as a notification)."""
        if self.jobs.running:
            self._error("a segmentation is already running; wait or press Cancel")
            return None
        if self.state.busy:
            self._error(self.state.busy_reason())
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
        return self._start(job)

    def _make_job(self, layer: Image, source: str) -> _Job:
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
        key = model_key(source, device)
        model = self.state.model if self.state.model_key == key else None
        entry = self.state.find_finetuned(source.removeprefix(SESSION_PREFIX))
        if source.startswith(SESSION_PREFIX) and entry is not None:
            key, model = entry.key, on_device(entry.model, device)
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
        return self.slice_index(layer, 1)[0]

    def _start(self, job: _Job) -> Any:
        n = int(np.prod(job.data.shape[:-2], dtype=np.int64)) if job.data.ndim > 2 else 1
        what = f"frame {job.frame} of " if job.frame is not None else ""
        worker = self.start_job(
            _run_job, job, on_abort=self._on_aborted, what=f"segmenting {what}{job.image.name}"
        )
        if worker is None:
            return None
        self.progress.setRange(0, max(n, 1))
        self.progress.setValue(0)
        self.progress.setFormat("%v / %m slices")
        self.status.setText(f"segmenting {what}{job.image.name!r} ...")
        return worker

    def cancel(self) -> None:
        """Ask the running segmentation to stop (after the current batch of slices)."""
        if self.jobs.running:
            self.jobs.cancel()
            self.cancel_button.setEnabled(False)
            self.status.setText("cancelling ...")

    def _set_running(self, running: bool) -> None:
        self.enable("segment_button layer_combo device_combo export_button", not running)
        self.models.set_enabled(not running)
        self.cancel_button.setEnabled(running)
        if not running:
            self._on_layer_changed()
        else:
            self.frames_combo.setEnabled(False)

    def _on_yielded(self, item: tuple[str, Any]) -> None:
        kind, value = item
        if kind == "status":
            self.status.setText(value)
        elif kind == "model":
            job = self._job
            self.state.use(value, job.model_key if job is not None else None)
        elif kind == "progress":
            done, total = value
            self.progress.setRange(0, max(int(total), 1))
            self.progress.setValue(int(done))
            self.status.setText(f"segmenting: {done} of {total} slices")
            self.jobs.report(done, total, f"{done} of {total} slices")

    def _on_aborted(self) -> None:
        self.status.setText("cancelled: no layer was added or changed")
        self._info("Segmentation cancelled; no layer was added or changed")

    def _on_finished(self) -> None:
        self._job = None
        self._set_running(False)

    def _on_done(self, outcome: _Outcome | None, error: BaseException | None) -> None:
        job = self._job
        if error is not None:
            self._handle_error(error, job)
            return
        if job is None or outcome is None:  # pragma: no cover - defensive
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
        if self.state.model is not outcome.model:  # a fine-tuned model of the session
            self.state.use(outcome.model, job.model_key)
        seg = outcome.segmentation
        flat = outcome.labels.reshape(-1, *outcome.labels.shape[-2:])
        found = int(flat.any(axis=(1, 2)).sum())
        mask_layer = record.mask.layer if record.mask else None
        where = f"frame {job.frame}: " if job.frame is not None else ""
        what = "myocardium" if seg.structures == ("myocardium",) else "RV / myocardium / LV"
        self.status.setText(
            f"{where}{what} found on {found} of {len(flat)} slices -> "
            f"'{mask_layer.name if mask_layer else ''}'"
        )
        for note in notes:
            self._info(note)
        self.state.record_changed.emit(record)

    def _handle_error(self, exc: BaseException, job: _Job | None) -> None:
        self.last_error = exc
        if is_out_of_memory(exc):
            if job is not None:
                job.model = None
            message = self.jobs.out_of_memory_message(
                "segmenting", "press Segment to retry on the CPU", forget_model=True
            )
        elif isinstance(exc, SDNetError):
            loading = job is not None and job.loading
            message = f"cannot load the model: {exc}" if loading else str(exc)
        else:
            message = f"segmentation failed: {type(exc).__name__}: {exc}"
        self._error(message)

    # -- layers ----------------------------------------------------------------------------------
    def _store(self, job: _Job, outcome: _Outcome) -> tuple[SegmentationRecord, list[str]]:
        """Add or update the plugin's layers for ``job.image`` and record the result."""
        seg = outcome.segmentation
        record, notes = store_result(
            self.viewer, self.state, job.image, outcome.labels, outcome.reconstruction,
            seg, job.frame,
        )
        record.model_source = outcome.model.source if outcome.model is not None else ""
        return record, notes

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
        return layer if self.layer_alive(layer) else None

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
            self._error(f"{image.name!r} has no segmentation yet: press Segment first")
            return None
        if binary is None:
            binary = self.export_values.currentText() == EXPORT_BINARY
        suggested = default_folder(image) / default_mask_name(image)
        found = self.save_target(
            path, self.ask_save_path, suggested, with_nifti_suffix, overwrite, "exported"
        )
        if found is None:
            return None
        target, overwrite = found
        try:
            written, warnings_ = export_mask(
                target, mask.data, image, binary=binary, overwrite=overwrite
            )
        except SDNetError as exc:
            self._error(str(exc))
            return None
        for text in warnings_:
            self._warning(text)
        values = np.unique(np.asarray(mask.data)) if not binary else ()
        if binary or set(int(v) for v in values) <= {0, 2}:
            meaning = f"myocardium = {'1' if binary else '2'}"
        else:
            meaning = "ACDC labels: 1 RV, 2 myocardium, 3 LV"
        self.status.setText(f"exported {mask.name!r} to {written} ({meaning})")
        self._info(f"wrote {written} ({meaning})")
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
