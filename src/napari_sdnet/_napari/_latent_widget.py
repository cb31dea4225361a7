"""Dock widget "Latent mixer": g(M of one slice, Z of another) on a segmented study.

Layout and wiring only: every computation is :mod:`napari_sdnet.latent` (the same functions a
script calls through :mod:`napari_sdnet.api`). The widget reads what the segmentation widget
stored in the viewer's :class:`~napari_sdnet._napari._state.SDNetState`: the model and, per
segmented image, the :class:`~napari_sdnet.api.Segmentation` (Z of every slice, model-grid
masks, the slice grid). For a 4D study segmented frame by frame ("current frame" mode), the
frames segmented so far can be mixed.

What it shows:

* the preview, drawn in the dock beside the viewer (:class:`~._latent_controls.PreviewCanvas`),
  so the study and its mask are never hidden. It is recomputed synchronously on every change
  (decoding one slice on the CPU takes milliseconds; see docs/benchmarks.md). With "follow the
  viewer" on, the M slice (and the Z slice, while it is the M slice) follows the viewer's t/z
  sliders.
* "show in viewer": the preview also as one 2D Image layer, ``latent preview``, on the input's
  in-plane grid (the input's in-plane scale and translate, the image's intensity units and
  contrast limits), so it overlays the study at any (t, z). Only this layer is ever rewritten,
  and only while it is the plugin's: a user's layer of the same name is left alone.
* "Add as layer" copies the preview into a new layer, named after what it shows.
* a heat map of Z across the slices of a frame or the phases of a slice (matplotlib's Qt
  canvas), with the slice whose Z is used outlined.
* "Figure 3..." saves SDNet's Figure 3 for the M and Z slices as a PNG.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QWidget,
)

from napari_sdnet import latent
from napari_sdnet._napari._dock import (
    DockWidget,
    ask_save_file,
    default_folder,
    file_safe,
    geometry_kwargs,
)
from napari_sdnet._napari._latent_controls import (
    Z_RANGE,
    Z_STEPS,
    HeatMap,
    MixChoice,
    MixControls,
    PreviewCanvas,
    ZEdits,
    another_slice,
    frames_of,
    mix_preview,
    n_slices_of,
    slice_of,
)
from napari_sdnet._napari._layers import add_latent_layer, write_preview
from napari_sdnet._napari._state import MadeLayer, SegmentationRecord
from napari_sdnet.errors import SDNetError

__all__ = ["PREVIEW_NAME", "Z_RANGE", "Z_STEPS", "LatentWidget", "MixChoice"]

PREVIEW_NAME = "latent preview"
HEAT_SLICES = "slices of the Z frame"
HEAT_PHASES = "phases of the Z slice"
HEAT_DELAY_MS = 120
#: torch threads for decoding a preview (one slice): see latent.torch_threads
PREVIEW_THREADS = 1


def ask_figure_path(parent: QWidget | None, suggested: str) -> str | None:
    """Ask where to save the Figure 3 PNG; None when cancelled (replaceable in tests)."""
    return ask_save_file(parent, "Save Figure 3 as PNG", suggested, "PNG (*.png)")


class LatentWidget(DockWidget):
    """Dock widget: mix the mask M and the latent vector Z of a segmented study's slices."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        # replaceable dialogs (tests, scripts)
        self.ask_figure_path: Callable[[QWidget | None, str], str | None] = ask_figure_path
        self._quiet = 0
        self._shown: Image | None = None  # the image the controls are set up for
        self.preview_layer: Image | None = None
        self.preview: np.ndarray | None = None  # the last preview, on the input grid
        self.preview_name = ""  # what it shows, e.g. "g(M z=3, Z z=8)"
        self.timings_ms: list[float] = []  # compute + layer update of each preview change
        self.z_values = np.zeros(16, np.float32)  # the Z of the last preview
        self._build()
        self.state.record_changed.connect(self._on_record_changed)
        self.state.events.model.connect(self._on_model_changed)
        self.state.events.busy.connect(self._on_busy_changed)
        self.viewer.dims.events.current_step.connect(self._on_viewer_moved)
        self._refresh_layers()
        if self._shown is None:
            self._on_layer_changed()

    # -- layout --------------------------------------------------------------------------------
    def _build(self) -> None:
        layout = self.body
        form, self.layer_combo = self.study_form(self._has_result, self._on_chooser)

        mix = MixControls(form, self._changed, lambda: self._changed(heat=True), self._on_t_changed)
        self.mask_chooser, self.null_mask = mix.mask_chooser, mix.null_mask
        self.z_chooser, self.zero_z, self.interp = mix.z_chooser, mix.zero_z, mix.interp
        self.toward_chooser, self.t_slider, self.t_label = mix.toward, mix.t_slider, mix.t_label

        self.z_edits = ZEdits(lambda: self._changed())
        self.z_sliders, self.z_labels = self.z_edits.sliders, self.z_edits.labels
        layout.addWidget(self.z_edits)

        row = QHBoxLayout()
        self.follow = QCheckBox("follow the viewer")
        self.follow.setChecked(True)
        self.follow.setToolTip("the M slice follows the viewer's t/z sliders")
        self.show_layer = QCheckBox("show in viewer")
        self.show_layer.setToolTip(
            f"also show the preview as the '{PREVIEW_NAME}' layer over the study"
        )
        self.show_layer.toggled.connect(lambda *_: self._changed())
        row.addWidget(self.follow)
        row.addWidget(self.show_layer)
        layout.addLayout(row)
        self.preview_canvas = PreviewCanvas()
        layout.addWidget(self.preview_canvas)

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
        layout.addWidget(self.status_label())

        heat_row = QHBoxLayout()
        heat_row.addWidget(QLabel("Z across"))
        self.heat_mode = QComboBox()
        self.heat_mode.addItems([HEAT_SLICES, HEAT_PHASES])
        self.heat_mode.setToolTip("the heat map's rows: the slices of a frame, or its phases")
        self.heat_mode.currentIndexChanged.connect(lambda *_: self.draw_heatmap())
        heat_row.addWidget(self.heat_mode)
        heat_row.addStretch(1)
        layout.addLayout(heat_row)
        self.heat_canvas = HeatMap(HEAT_DELAY_MS)
        self.heat_figure, self.heat_axes = self.heat_canvas.figure_, self.heat_canvas.axes
        self._heat_timer = self.heat_canvas.timer
        self.heat_values: np.ndarray | None = None
        layout.addWidget(self.heat_canvas)
        layout.addStretch(1)
        self._set_enabled(False)

    def _set_enabled(self, enabled: bool) -> None:
        self.enable(
            "mask_chooser null_mask z_chooser zero_z interp toward_chooser t_slider "
            "reset_button add_button figure_button",
            enabled,
        )
        for slider in self.z_sliders:
            slider.setEnabled(enabled)

    # -- image layers --------------------------------------------------------------------------
    def _has_result(self, layer: Any) -> bool:
        if not isinstance(layer, Image):
            return False
        record = self.state.record_for(layer)
        return record is not None and (record.segmentation is not None or bool(record.frames))

    def _refresh_layers(self, *_: Any) -> None:
        self.layer_combo.refresh()
    def _on_chooser(self) -> None:
        if self.chosen_image() is not self._shown:
            self._on_layer_changed()

    def _record(self) -> SegmentationRecord | None:
        image = self.chosen_image()
        return self.state.record_for(image) if image is not None else None

    def _frames(self) -> list[int] | None:
        """Frames that can be mixed (a 4D study), else None."""
        return frames_of(self._record())

    def _n_slices(self) -> int | None:
        """Slices per frame of the segmented study (None for a 2D image)."""
        return n_slices_of(self._record())

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
                    self.toward_chooser.set_value(*self._another_slice(here))
        finally:
            self._quiet -= 1
        self._set_enabled(image is not None)
        if image is None:
            self.status.setText("no segmented image: segment one with the Segmentation widget")
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
        lead = self.slice_index(image)
        z = min(lead[-1], n - 1)
        frames = self._frames()
        if not frames:
            return None, z
        return min(frames, key=lambda f: abs(f - lead[0])), z

    def _another_slice(self, where: tuple[int | None, int | None]) -> tuple[int | None, int | None]:
        return another_slice(where, self._frames(), self._n_slices())

    def _on_viewer_moved(self, *_: Any) -> None:
        """With "follow the viewer": the M slice (and the Z slice while it is the M slice)
        follows the viewer's t/z sliders."""
        if self._quiet or not self.follow.isChecked() or self.chosen_image() is None:
            return
        here = self.viewer_position()
        old = self.mask_chooser.value()
        if here == old or here == (None, None):
            return
        self._quiet += 1
        try:
            same = self.z_chooser.value() == old
            self.mask_chooser.set_value(*here)
            if same:
                self.z_chooser.set_value(*here)
        finally:
            self._quiet -= 1
        self._changed(heat=True)

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
        self.z_edits.reset()

    def reset(self) -> None:
        """Back to the M slice's own reconstruction: Z from the M slice, no null mask, zero Z,
        interpolation or Z edits."""
        self._quiet += 1
        try:
            self._reset_modifiers()
            self.z_chooser.set_value(*self.mask_chooser.value())
            self.toward_chooser.set_value(*self._another_slice(self.mask_chooser.value()))
        finally:
            self._quiet -= 1
        self._changed(heat=True)

    def choice(self) -> MixChoice:
        """What the controls ask for now."""
        offsets = self.z_edits.offsets()
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
                self.z_edits.set_offsets(dict(modifiers.pop("offsets")))
            if modifiers:
                raise TypeError(f"unknown settings: {', '.join(modifiers)}")
        finally:
            self._quiet -= 1
        self._changed(heat=True)

    # -- the preview ---------------------------------------------------------------------------
    def _slice(self, where: tuple[int | None, int | None]) -> latent.LatentSlice:
        """The :class:`~napari_sdnet.latent.LatentSlice` at ``(frame, z)`` of the image."""
        return slice_of(self._record(), where)

    def _problem(self) -> str | None:
        image, record = self.chosen_image(), self._record()
        if image is None or record is None:
            return "no segmented image: segment one with the Segmentation widget"
        if self.state.busy:
            return "waiting: a segmentation or fine-tuning job is running on this viewer"
        model = self.state.model
        if model is None:
            return "no model is loaded: segment the image with the Segmentation widget first"
        if record.model_source and model.source != record.model_source:
            return (
                f"{image.name!r} was segmented with {record.model_source}, but the loaded model "
                f"is {model.source}: segment it again to mix its slices"
            )
        return None

    def compute(self, choice: MixChoice | None = None) -> tuple[np.ndarray, str, np.ndarray]:
        """The preview for ``choice`` (default: the controls): ``(image on the input grid in
        the image's units, description, Z used)``. Raises SDNetError on a problem."""
        # no plugin job runs meanwhile (see _problem), so the thread setting is safe to change
        with latent.torch_threads(PREVIEW_THREADS):
            return mix_preview(self.state.model, self._record(), choice or self.choice())

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
        image = self.chosen_image()
        self.preview_canvas.show_image(data, tuple(image.contrast_limits), name)
        if self.show_layer.isChecked():
            self._write_preview(data)
        elapsed = (time.perf_counter() - start) * 1e3
        self.timings_ms.append(elapsed)
        self.preview, self.preview_name, self.z_values = data, name, z
        self.z_edits.show_values(z)
        note = ""
        if not self.state.model.has_trained_reconstructor:
            note = f"; a {self.state.model.model_type!r} model: its reconstructor is untrained"
        self.status.setText(f"{name}  ({elapsed:.0f} ms){note}")
        return True

    def _geometry(self, image: Image) -> dict[str, Any]:
        """Layer keyword arguments placing a 2D in-plane image on ``image``'s (y, x) grid."""
        return geometry_kwargs(image, last=2, metadata=False)

    def _write_preview(self, data: np.ndarray) -> None:
        self._quiet += 1
        try:
            image = self.chosen_image()
            layer, made = write_preview(
                self.viewer, self.preview_layer, data, image, PREVIEW_NAME, self._geometry(image)
            )
            if made:
                self.preview_layer = layer
                self.state.add_made(MadeLayer.track(layer, "latent preview"))
                if self.layer_alive(image):
                    self.viewer.layers.selection.active = image
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
            layer = add_latent_layer(
                self.viewer, self.preview, image, self.preview_name, self.z_values,
                self._geometry(image),
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
        if self._problem() is not None:
            self.heat_values = self.heat_canvas.draw_rows(None)
            return
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
        self.heat_values = self.heat_canvas.draw_rows(
            np.stack([r.z for r in rows]), labels, current, title, key
        )
        self.heat_row = current

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
        stem = file_safe(f"{image.name} figure3 {a.label} {b.label}".replace(", ", "_"))
        found = self.save_target(
            path, self.ask_figure_path, default_folder(image) / f"{stem}.png", ".png", overwrite
        )
        if found is None:
            return None
        target, overwrite = found
        model = self.state.model
        try:
            panels = latent.figure3_slices(
                model, a, b, title=f"{image.name}: {a.label} and {b.label} ({model.source})"
            )
            written = latent.save_figure3(panels, target, overwrite=overwrite)
        except SDNetError as exc:
            self._error(str(exc))
            return None
        return self.wrote(written, f"saved Figure 3 to {written}")
