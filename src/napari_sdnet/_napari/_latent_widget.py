"""Dock widget "SDNet latent mixer": g(M of one slice, Z of another) on a segmented study.

Layout and wiring only: every computation is :mod:`napari_sdnet.latent` (the same functions a
script calls through :mod:`napari_sdnet.api`). The widget reads what the segmentation widget
stored in the viewer's :class:`~napari_sdnet._napari._state.SDNetState`: the model and, per
segmented image, the :class:`~napari_sdnet.api.Segmentation` (Z of every slice, model-grid
masks, the slice grid). For a 4D study segmented frame by frame ("current frame" mode), the
frames segmented so far can be mixed.

What it shows:

* ``latent preview``: one 2D Image layer on the input's in-plane grid (the input's in-plane
  scale and translate, the image's intensity units and contrast limits), so it overlays the
  study at any (t, z). It is recomputed synchronously on every change (decoding one slice on the
  CPU takes milliseconds; see docs/benchmarks.md). Only this layer is ever rewritten, and only
  while it is the plugin's: a user's layer of the same name is left alone.
* "Add as layer" copies the preview into a new layer, named after what it shows.
* a heat map of Z across the slices of a frame or the phases of a slice (matplotlib's Qt
  canvas), with the slice whose Z is used outlined.
* "Figure 3..." saves SDNet's Figure 3 for the M and Z slices as a PNG.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sdnet import latent
from napari_sdnet._napari._common import MessagesMixin, confirm_overwrite, free_layer_name
from napari_sdnet._napari._state import MadeLayer, SegmentationRecord, get_state, unwrap
from napari_sdnet.errors import SDNetError

PREVIEW_NAME = "latent preview"
#: a Z slider spans current value +- Z_RANGE, in steps of Z_RANGE / Z_STEPS (then clipped)
Z_RANGE = 0.5
Z_STEPS = 100
HEAT_SLICES = "slices of the Z frame"
HEAT_PHASES = "phases of the Z slice"
HEAT_DELAY_MS = 120
#: torch threads for decoding a preview (one slice): see latent.torch_threads
PREVIEW_THREADS = 1


def ask_figure_path(parent: QWidget | None, suggested: str) -> str | None:
    """Ask where to save the Figure 3 PNG; None when cancelled (replaceable in tests)."""
    path, _ = QFileDialog.getSaveFileName(parent, "Save Figure 3 as PNG", suggested, "PNG (*.png)")
    return path or None


@dataclass(frozen=True)
class MixChoice:
    """What the controls ask for: slices as ``(frame, z)`` (frame None for 2D/3D)."""

    mask_from: tuple[int | None, int | None]
    z_from: tuple[int | None, int | None]
    null_mask: bool = False
    zero_z: bool = False
    toward: tuple[int | None, int | None] | None = None
    t: float = 0.0
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(16, np.float32))


class _SliceChooser(QWidget):
    """A frame combo (4D only) and a slice spin box."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        super().__init__()
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.frame_label = QLabel("t")
        self.frame = QComboBox()
        self.frame.setToolTip("frame (phase) of the cine study")
        self.slice_label = QLabel("z")
        self.slice = QSpinBox()
        self.slice.setToolTip("slice")
        for w in (self.frame_label, self.frame, self.slice_label, self.slice):
            row.addWidget(w)
        row.addStretch(1)
        self.has_frames = self.has_slices = False
        self.frame.currentIndexChanged.connect(lambda *_: on_change())
        self.slice.valueChanged.connect(lambda *_: on_change())

    def configure(self, frames: list[int] | None, n_slices: int | None) -> None:
        for w in (self.frame, self.slice):
            w.blockSignals(True)
        self.has_frames, self.has_slices = bool(frames), n_slices is not None
        self.frame.clear()
        if frames:
            self.frame.addItems([str(f) for f in frames])
        self.frame.setVisible(self.has_frames)
        self.frame_label.setVisible(self.has_frames)
        self.slice.setRange(0, max((n_slices or 1) - 1, 0))
        self.slice.setVisible(self.has_slices)
        self.slice_label.setVisible(self.has_slices)
        for w in (self.frame, self.slice):
            w.blockSignals(False)

    def value(self) -> tuple[int | None, int | None]:
        frame = int(self.frame.currentText()) if self.has_frames and self.frame.count() else None
        z = self.slice.value() if self.has_slices else None
        return frame, z

    def set_value(self, frame: int | None, z: int | None) -> None:
        for w in (self.frame, self.slice):
            w.blockSignals(True)
        if frame is not None:
            i = self.frame.findText(str(frame))
            if i >= 0:
                self.frame.setCurrentIndex(i)
        if z is not None:
            self.slice.setValue(z)
        for w in (self.frame, self.slice):
            w.blockSignals(False)


class LatentWidget(MessagesMixin, QWidget):
    """Dock widget: mix the mask M and the latent vector Z of a segmented study's slices."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        self.state = get_state(self.viewer)
        # replaceable dialogs (tests, scripts)
        self.ask_figure_path: Callable[[QWidget | None, str], str | None] = ask_figure_path
        self.confirm_overwrite: Callable[[QWidget | None, Path], bool] = confirm_overwrite
        self._choices: list[Image] = []
        self._quiet = 0
        self._shown: Image | None = None  # the image the controls are set up for
        self.preview_layer: Image | None = None
        self.preview: np.ndarray | None = None  # the last preview, on the input grid
        self.preview_name = ""  # what it shows, e.g. "g(M z=3, Z z=8)"
        self.timings_ms: list[float] = []  # compute + layer update of each preview change
        self.z_values = np.zeros(16, np.float32)  # the Z of the last preview
        self._build()
        events = self.viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            getattr(events, name).connect(self._refresh_layers)
        events.inserted.connect(lambda event: event.value.events.name.connect(self._renamed))
        for layer in self.viewer.layers:
            layer.events.name.connect(self._renamed)
        self.state.record_changed.connect(self._on_record_changed)
        self.state.events.model.connect(self._on_model_changed)
        self.state.events.busy.connect(self._on_busy_changed)
        self._refresh_layers()
        if self._shown is None:
            self._on_layer_changed()

    # -- layout --------------------------------------------------------------------------------
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        layout.addLayout(form)
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("a study segmented with the SDNet segmentation widget")
        self.layer_combo.currentIndexChanged.connect(self._on_layer_changed)
        form.addRow("study", self.layer_combo)

        self.mask_chooser = _SliceChooser(self._changed)
        self.mask_chooser.setToolTip("the slice whose mask M (anatomy) is used")
        form.addRow("M from", self.mask_chooser)
        self.null_mask = QCheckBox("null mask (M = 0)")
        self.null_mask.toggled.connect(lambda *_: self._changed())
        form.addRow("", self.null_mask)
        self.z_chooser = _SliceChooser(lambda: self._changed(heat=True))
        self.z_chooser.setToolTip("the slice whose latent vector Z (the rest) is used")
        form.addRow("Z from", self.z_chooser)
        self.zero_z = QCheckBox("zero Z")
        self.zero_z.toggled.connect(lambda *_: self._changed())
        form.addRow("", self.zero_z)

        self.interp = QCheckBox("interpolate Z toward")
        self.interp.toggled.connect(lambda *_: self._changed())
        self.toward_chooser = _SliceChooser(self._changed)
        row = QHBoxLayout()
        row.addWidget(self.interp)
        row.addWidget(self.toward_chooser)
        form.addRow("", row)
        self.t_slider = QSlider(Qt.Orientation.Horizontal)
        self.t_slider.setRange(0, 100)
        self.t_slider.setToolTip("0: the Z slice's Z; 1: the other slice's Z")
        self.t_label = QLabel("t = 0.00")
        self.t_slider.valueChanged.connect(self._on_t_changed)
        row = QHBoxLayout()
        row.addWidget(self.t_slider)
        row.addWidget(self.t_label)
        form.addRow("", row)

        box = QGroupBox(f"Z edits (each: current value +- {Z_RANGE}, clipped to [0, 1])")
        grid = QGridLayout(box)
        grid.setVerticalSpacing(1)
        self.z_sliders: list[QSlider] = []
        self.z_labels: list[QLabel] = []
        for k in range(16):
            slider = QSlider(Qt.Orientation.Horizontal)
            slider.setRange(-Z_STEPS, Z_STEPS)
            slider.setValue(0)
            slider.setToolTip(f"offset of Z[{k}] from its current value")
            slider.valueChanged.connect(lambda *_: self._changed())
            label = QLabel("-")
            label.setMinimumWidth(34)
            r, c = k % 8, 3 * (k // 8)
            grid.addWidget(QLabel(str(k)), r, c)
            grid.addWidget(slider, r, c + 1)
            grid.addWidget(label, r, c + 2)
            self.z_sliders.append(slider)
            self.z_labels.append(label)
        layout.addWidget(box)

        buttons = QHBoxLayout()
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip(
            "Z from the M slice, no null mask / zero Z / interpolation / edits"
        )
        self.reset_button.clicked.connect(self.reset)
        self.add_button = QPushButton("Add as layer")
        self.add_button.setToolTip("keep the current preview as a new image layer")
        self.add_button.clicked.connect(lambda: self.add_as_layer())
        self.figure_button = QPushButton("Figure 3...")
        self.figure_button.setToolTip(
            "SDNet's Figure 3 for the M and Z slices: input, mask, reconstruction, swapped "
            "mask, null mask and zero Z, saved as PNG"
        )
        self.figure_button.clicked.connect(lambda: self.export_figure3())
        for b in (self.reset_button, self.add_button, self.figure_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)

        self.status = QLabel("ready")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

        heat_row = QHBoxLayout()
        heat_row.addWidget(QLabel("Z across"))
        self.heat_mode = QComboBox()
        self.heat_mode.addItems([HEAT_SLICES, HEAT_PHASES])
        self.heat_mode.currentIndexChanged.connect(lambda *_: self.draw_heatmap())
        heat_row.addWidget(self.heat_mode)
        heat_row.addStretch(1)
        layout.addLayout(heat_row)
        # fixed margins: a constrained layout doubles the cost of each redraw
        self.heat_figure = Figure(figsize=(3.6, 2.6))
        self.heat_figure.subplots_adjust(left=0.16, right=0.9, bottom=0.17, top=0.9)
        self.heat_canvas = FigureCanvasQTAgg(self.heat_figure)
        self.heat_canvas.setMinimumHeight(200)
        self.heat_axes = self.heat_figure.add_subplot()
        self._colorbar = None
        self._heat_key: tuple | None = None
        self.heat_values: np.ndarray | None = None
        # the canvas is redrawn HEAT_DELAY_MS after the last change (a matplotlib redraw costs
        # tens of ms): the preview layer shows first and spinning through slices stays fluid
        self._heat_timer = QTimer(self)
        self._heat_timer.setSingleShot(True)
        self._heat_timer.setInterval(HEAT_DELAY_MS)
        self._heat_timer.timeout.connect(self.heat_canvas.draw_idle)
        layout.addWidget(self.heat_canvas)
        layout.addStretch(1)
        self._set_enabled(False)

    def _set_enabled(self, enabled: bool) -> None:
        for w in (
            self.mask_chooser,
            self.null_mask,
            self.z_chooser,
            self.zero_z,
            self.interp,
            self.toward_chooser,
            self.t_slider,
            self.reset_button,
            self.add_button,
            self.figure_button,
            *self.z_sliders,
        ):
            w.setEnabled(enabled)

    # -- image layers --------------------------------------------------------------------------
    def _has_result(self, layer: Any) -> bool:
        if not isinstance(layer, Image):
            return False
        record = self.state.record_for(layer)
        return record is not None and (record.segmentation is not None or bool(record.frames))

    def _refresh_layers(self, *_: Any) -> None:
        current = self.chosen_image()
        choices = [layer for layer in self.viewer.layers if self._has_result(layer)]
        if current not in choices:
            current = choices[-1] if choices else None
        self._choices = choices
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems([layer.name for layer in choices])
        if current is not None:
            self.layer_combo.setCurrentIndex(choices.index(current))
        self.layer_combo.blockSignals(False)
        if current is not self._shown:
            self._on_layer_changed()

    def _renamed(self, *_: Any) -> None:
        for i, layer in enumerate(self._choices):
            self.layer_combo.setItemText(i, layer.name)

    def chosen_image(self) -> Image | None:
        """The segmented image whose slices are mixed."""
        i = self.layer_combo.currentIndex()
        return self._choices[i] if 0 <= i < len(self._choices) else None

    def select_image(self, image: Any) -> bool:
        """Choose a segmented image layer; False when it has no segmentation."""
        image = unwrap(image)
        self._refresh_layers()
        if image not in self._choices:
            return False
        self.layer_combo.setCurrentIndex(self._choices.index(image))
        return True

    def _record(self) -> SegmentationRecord | None:
        image = self.chosen_image()
        return self.state.record_for(image) if image is not None else None

    def _frames(self) -> list[int] | None:
        """Frames that can be mixed (a 4D study), else None."""
        record = self._record()
        if record is None:
            return None
        if record.segmentation is not None and record.segmentation.z.ndim == 3:
            return list(range(record.segmentation.z.shape[0]))
        return sorted(record.frames) or None

    def _n_slices(self) -> int | None:
        """Slices per frame of the segmented study (None for a 2D image)."""
        record = self._record()
        if record is None:
            return None
        seg = record.segmentation
        if seg is None and record.frames:
            seg = next(iter(record.frames.values()))
        if seg is None or seg.z.ndim < 2:
            return None
        return int(seg.z.shape[-2])

    def _on_layer_changed(self, *_: Any, keep: bool = False) -> None:
        """Set the controls up for the chosen image: at the viewer's position, or (``keep``,
        after new results for the same image) as they were where that still exists."""
        image = self.chosen_image()
        self._shown = image
        frames, n = self._frames(), self._n_slices()
        choosers = (self.mask_chooser, self.z_chooser, self.toward_chooser)
        before = [c.value() for c in choosers]
        self._quiet += 1
        try:
            for chooser in choosers:
                chooser.configure(frames, n)
            self.heat_mode.setEnabled(bool(frames))
            if image is not None:
                here = self.viewer_position()
                for chooser, old in zip(choosers, before, strict=True):
                    frame_ok = old[0] is None or old[0] in (frames or [])
                    chooser.set_value(*(old if keep and frame_ok else here))
                if not keep:
                    self._reset_modifiers()
        finally:
            self._quiet -= 1
        self._set_enabled(image is not None)
        if image is None:
            self.status.setText("no segmented image: segment one with 'SDNet segmentation'")
        self._changed(heat=True)

    def _on_record_changed(self, record: SegmentationRecord) -> None:
        shown = self._shown
        self._refresh_layers()
        image = self.chosen_image()
        if image is not None and image is shown and record.image is image:
            self._on_layer_changed(keep=True)  # new results for the shown image: new Z

    def _on_model_changed(self, *_: Any) -> None:
        self._changed()

    def _on_busy_changed(self, *_: Any) -> None:
        if not self.state.busy:
            self._changed(heat=True)

    def viewer_position(self) -> tuple[int | None, int | None]:
        """``(frame, z)`` of the chosen image shown in the viewer (clipped to what exists)."""
        image, n = self.chosen_image(), self._n_slices()
        if image is None or n is None:
            return None, None
        point = image.world_to_data(self.viewer.dims.point)
        z = int(min(max(round(float(point[-3])), 0), n - 1))
        frames = self._frames()
        if not frames:
            return None, z
        t = int(round(float(point[0])))
        return min(frames, key=lambda f: abs(f - t)), z

    # -- controls ------------------------------------------------------------------------------
    def _on_t_changed(self, value: int) -> None:
        self.t_label.setText(f"t = {value / 100:.2f}")
        if not self.interp.isChecked() and value:
            self._quiet += 1
            self.interp.setChecked(True)
            self._quiet -= 1
        self._changed()

    def _reset_modifiers(self) -> None:
        self.null_mask.setChecked(False)
        self.zero_z.setChecked(False)
        self.interp.setChecked(False)
        self.t_slider.setValue(0)
        for s in self.z_sliders:
            s.setValue(0)

    def reset(self) -> None:
        """Back to the M slice's own reconstruction: Z from the M slice, no null mask, zero Z,
        interpolation or Z edits."""
        self._quiet += 1
        try:
            self._reset_modifiers()
            self.z_chooser.set_value(*self.mask_chooser.value())
            self.toward_chooser.set_value(*self.mask_chooser.value())
        finally:
            self._quiet -= 1
        self._changed(heat=True)

    def choice(self) -> MixChoice:
        """What the controls ask for now."""
        offsets = np.array([s.value() for s in self.z_sliders], np.float32) * (Z_RANGE / Z_STEPS)
        return MixChoice(
            mask_from=self.mask_chooser.value(),
            z_from=self.z_chooser.value(),
            null_mask=self.null_mask.isChecked(),
            zero_z=self.zero_z.isChecked(),
            toward=self.toward_chooser.value() if self.interp.isChecked() else None,
            t=self.t_slider.value() / 100 if self.interp.isChecked() else 0.0,
            offsets=offsets,
        )

    def set_choice(
        self,
        mask_from: tuple[int | None, int | None] | None = None,
        z_from: tuple[int | None, int | None] | None = None,
        **modifiers: Any,
    ) -> None:
        """Set several controls at once with one preview update (scripts, tests):
        ``null_mask``, ``zero_z``, ``toward`` (a slice or None), ``t`` and ``offsets``
        (``{component: offset}``) as in :class:`MixChoice`."""
        self._quiet += 1
        try:
            if mask_from is not None:
                self.mask_chooser.set_value(*mask_from)
            if z_from is not None:
                self.z_chooser.set_value(*z_from)
            if "null_mask" in modifiers:
                self.null_mask.setChecked(bool(modifiers.pop("null_mask")))
            if "zero_z" in modifiers:
                self.zero_z.setChecked(bool(modifiers.pop("zero_z")))
            if "toward" in modifiers:
                toward = modifiers.pop("toward")
                self.interp.setChecked(toward is not None)
                if toward is not None:
                    self.toward_chooser.set_value(*toward)
            if "t" in modifiers:
                self.t_slider.setValue(round(float(modifiers.pop("t")) * 100))
            if "offsets" in modifiers:
                for k, v in dict(modifiers.pop("offsets")).items():
                    self.z_sliders[k].setValue(round(float(v) / Z_RANGE * Z_STEPS))
            if modifiers:
                raise TypeError(f"unknown settings: {', '.join(modifiers)}")
        finally:
            self._quiet -= 1
        self._changed(heat=True)

    # -- the preview ---------------------------------------------------------------------------
    def _slice(self, where: tuple[int | None, int | None]) -> latent.LatentSlice:
        """The :class:`~napari_sdnet.latent.LatentSlice` at ``(frame, z)`` of the image."""
        record = self._record()
        frame, z = where
        if frame is not None:
            found = record.result_for(frame)
            if found is None:
                raise SDNetError(f"frame {frame} has not been segmented")
            seg, lead = found
            return latent.latent_slice(seg, (*lead, z), label=f"t={frame}, z={z}")
        seg = record.segmentation
        if seg is None:
            raise SDNetError("the image has no segmentation")
        return latent.latent_slice(seg, () if z is None else (z,))

    def _problem(self) -> str | None:
        image, record = self.chosen_image(), self._record()
        if image is None or record is None:
            return "no segmented image: segment one with 'SDNet segmentation'"
        if self.state.busy:
            return "waiting: a segmentation or fine-tuning job is running on this viewer"
        model = self.state.model
        if model is None:
            return "no model is loaded: segment the image with 'SDNet segmentation' first"
        if record.model_source and model.source != record.model_source:
            return (
                f"{image.name!r} was segmented with {record.model_source}, but the loaded model "
                f"is {model.source}: segment it again to mix its slices"
            )
        return None

    def compute(self, choice: MixChoice | None = None) -> tuple[np.ndarray, str, np.ndarray]:
        """The preview for ``choice`` (default: the controls): ``(image on the input grid in
        the image's units, description, Z used)``. Raises SDNetError on a problem."""
        choice = choice or self.choice()
        model = self.state.model
        z_src = self._slice(choice.z_from)
        toward = self._slice(choice.toward) if choice.toward is not None else None
        # 16 sliders; a model with another Z length (a custom preset) uses the first ones
        offsets = np.zeros(z_src.z.size, np.float32)
        k = min(offsets.size, choice.offsets.size)
        offsets[:k] = choice.offsets[:k]
        z = latent.mix_z(
            z_src.z,
            toward=toward.z if toward is not None else None,
            t=choice.t,
            zero=choice.zero_z,
            offsets=offsets,
        )
        mask_src = None if choice.null_mask else self._slice(choice.mask_from)
        # no plugin job runs meanwhile (see _problem), so the thread setting is safe to change
        with latent.torch_threads(PREVIEW_THREADS):
            image = latent.mix(model, mask_src, z, grid=z_src.grid, denormalise=True)
        m_text = "0" if mask_src is None else f"M {mask_src.label}"
        if choice.zero_z:
            z_text = "Z 0"
        elif toward is not None and choice.t > 0:
            z_text = f"Z {z_src.label}->{toward.label} {choice.t:.2f}"
        else:
            z_text = f"Z {z_src.label}"
        if np.any(choice.offsets):
            z_text += " edited"
        return image, f"g({m_text}, {z_text})", z

    def _changed(self, heat: bool = False) -> None:
        if self._quiet:
            return
        if heat:
            self.draw_heatmap()
        self.update_preview()

    def update_preview(self) -> bool:
        """Recompute the preview from the controls and write the preview layer."""
        problem = self._problem()
        if problem:
            self.status.setText(problem)
            return False
        start = time.perf_counter()
        try:
            data, name, z = self.compute()
        except SDNetError as exc:
            self.status.setText(f"error: {exc}")
            return False
        self._write_preview(data)
        elapsed = (time.perf_counter() - start) * 1e3
        self.timings_ms.append(elapsed)
        self.preview, self.preview_name, self.z_values = data, name, z
        for k, label in enumerate(self.z_labels):
            label.setText(f"{z[k]:.2f}" if k < z.size else "-")
        note = ""
        if not self.state.model.has_trained_reconstructor:
            note = f"; a {self.state.model.model_type!r} model: its reconstructor is untrained"
        self.status.setText(f"{name}  ({elapsed:.0f} ms){note}")
        return True

    def _geometry(self, image: Image) -> dict[str, Any]:
        """Layer keyword arguments placing a 2D in-plane image on ``image``'s (y, x) grid."""
        kwargs: dict[str, Any] = {
            "scale": np.array(image.scale)[-2:],
            "translate": np.array(image.translate)[-2:],
        }
        rotate = np.asarray(image.rotate)
        if not np.allclose(rotate, np.eye(rotate.shape[0])):
            kwargs["rotate"] = rotate[-2:, -2:]
        affine = image.affine.affine_matrix
        if not np.allclose(affine, np.eye(affine.shape[0])):
            kwargs["affine"] = affine[-3:, -3:].copy()
        for attr in ("units", "axis_labels"):  # napari >= 0.6
            if hasattr(image, attr):
                kwargs[attr] = tuple(getattr(image, attr))[-2:]
        return kwargs

    def _write_preview(self, data: np.ndarray) -> None:
        image = self.chosen_image()
        layer = self.preview_layer
        geometry = self._geometry(image)
        self._quiet += 1
        try:
            if layer is None or layer not in self.viewer.layers:
                layer = self.viewer.add_image(
                    data,
                    name=free_layer_name(self.viewer, PREVIEW_NAME),
                    colormap="gray",
                    contrast_limits=list(image.contrast_limits),
                    metadata={"sdnet_latent_of": image.name},
                    **geometry,
                )
                self.preview_layer = layer
                self.state.add_made(MadeLayer.track(layer, "latent preview"))
                self.viewer.layers.selection.active = image
                return
            same_grid = layer.data.shape == data.shape and np.allclose(
                layer.scale, geometry["scale"]
            )
            layer.data = data
            if not same_grid or layer.metadata.get("sdnet_latent_of") != image.name:
                layer.scale = geometry["scale"]
                layer.translate = geometry["translate"]
                layer.contrast_limits = list(image.contrast_limits)
                layer.metadata["sdnet_latent_of"] = image.name
        finally:
            self._quiet -= 1

    def add_as_layer(self) -> Image | None:
        """Keep the current preview as a new image layer (never replaces a layer)."""
        if not self.update_preview() or self.preview is None:
            self._error(self.status.text().removeprefix("error: "))
            return None
        image = self.chosen_image()
        self._quiet += 1
        try:
            layer = self.viewer.add_image(
                self.preview.copy(),
                name=free_layer_name(self.viewer, f"{image.name} {self.preview_name}"),
                colormap="gray",
                contrast_limits=list(image.contrast_limits),
                metadata={
                    "sdnet_latent_of": image.name,
                    "sdnet_latent": self.preview_name,
                    "sdnet_z": [float(v) for v in self.z_values],
                    "sdnet_geometry": copy.deepcopy((image.metadata or {}).get("sdnet_geometry")),
                },
                **self._geometry(image),
            )
        finally:
            self._quiet -= 1
        self.state.add_made(MadeLayer.track(layer, "latent"))
        self.status.setText(f"added {layer.name!r}")
        return layer

    # -- heat map ------------------------------------------------------------------------------
    def draw_heatmap(self) -> None:
        """Z across the slices of the Z frame, or the phases of the Z slice (4D), with the Z
        slice outlined; the canvas is redrawn shortly after (see ``HEAT_DELAY_MS``)."""
        ax = self.heat_axes
        if self._problem() is not None:
            ax.clear()
            ax.set_axis_off()
            self._heat_key = None
            self.heat_values = None
            self._heat_timer.start()
            return
        ax.set_axis_on()
        frame, z = self.z_chooser.value()
        frames, n = self._frames(), self._n_slices()
        phases = bool(frames) and self.heat_mode.currentText() == HEAT_PHASES
        # the rows shown: only the outlined row moves while they stay the same
        key = (id(self.chosen_image()), id(self._record()), phases, z if phases else frame)
        try:
            if phases:
                rows = [self._slice((f, z)) for f in frames]
                labels = [f"t={f}" for f in frames]
                current, title = frames.index(frame), f"Z of slice z={z} across phases"
            elif n is not None:
                rows = [self._slice((frame, k)) for k in range(n)]
                labels = [f"z={k}" for k in range(n)]
                where = f" (t={frame})" if frame is not None else ""
                current, title = z, f"Z across slices{where}"
            else:
                rows, labels, current, title = [self._slice((None, None))], ["slice"], 0, "Z"
        except SDNetError as exc:
            self.status.setText(f"error: {exc}")
            return
        values = np.stack([r.z for r in rows])
        if key == self._heat_key and ax.patches and np.array_equal(values, self.heat_values):
            ax.patches[0].set_y(current - 0.5)
        else:
            artist = latent.draw_z_heatmap(ax, values, labels, current=current, title=title)
            if self._colorbar is None:
                self._colorbar = self.heat_figure.colorbar(artist, ax=ax, fraction=0.05)
            else:
                self._colorbar.update_normal(artist)
            self._heat_key = key
        self.heat_values = values
        self.heat_row = current
        self._heat_timer.start()

    # -- Figure 3 ------------------------------------------------------------------------------
    def export_figure3(
        self, path: str | Path | None = None, *, overwrite: bool | None = None
    ) -> Path | None:
        """Save SDNet's Figure 3 for the M slice and the Z slice as a PNG.

        ``path`` None asks with a file dialog; ``overwrite`` None asks before replacing a file.
        Returns the written path, or None (cancelled, or an error that was shown).
        """
        problem = self._problem()
        if problem:
            self._error(problem)
            return None
        choice = self.choice()
        if choice.mask_from == choice.z_from:
            self._error("Figure 3 needs two different slices: choose another Z slice")
            return None
        image = self.chosen_image()
        try:
            a, b = self._slice(choice.mask_from), self._slice(choice.z_from)
        except SDNetError as exc:
            self._error(str(exc))
            return None
        if path is None:
            stem = f"{image.name} figure3 {a.label} {b.label}".replace(", ", "_")
            suggested = "".join(c if c.isalnum() or c in "-_=." else "_" for c in stem)
            source = (image.metadata or {}).get("source_path")
            if source:
                suggested = str(Path(source).with_name(suggested))
            path = self.ask_figure_path(self, f"{suggested}.png")
            if not path:
                return None
        target = Path(path)
        if target.suffix.lower() != ".png":
            target = target.with_name(target.name + ".png")
        if target.exists():
            if overwrite is None:
                overwrite = self.confirm_overwrite(self, target)
            if not overwrite:
                self.status.setText(f"not saved: {target.name} exists")
                return None
        model = self.state.model
        try:
            panels = latent.figure3_slices(
                model, a, b, title=f"{image.name}: {a.label} and {b.label} ({model.source})"
            )
            written = latent.save_figure3(panels, target, overwrite=bool(overwrite))
        except SDNetError as exc:
            self._error(str(exc))
            return None
        self.status.setText(f"saved Figure 3 to {written}")
        self._info(f"wrote {written}")
        return written
