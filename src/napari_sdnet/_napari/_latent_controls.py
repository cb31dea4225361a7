"""Controls of the latent mixer: the mix asked for, slice choosers, Z edits, preview canvas.

* :class:`MixChoice`: what the controls ask for, and :func:`mix_preview`, the image it gives
  (Qt-free, over :mod:`napari_sdnet.latent`);
* :class:`SliceChooser`: a frame combo (4D only) and a slice spin box;
* :class:`ZEdits`: sixteen sliders, one offset per component of Z;
* :class:`HeatMap`: Z across slices or phases, the Z slice outlined;
* :class:`PreviewCanvas`: the preview drawn beside the viewer (in the dock), in gray, with the
  study's contrast limits, so the study itself is never hidden behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSlider,
    QSpinBox,
    QWidget,
)

from napari_sdnet import latent
from napari_sdnet._napari._dock import PlotCanvas
from napari_sdnet.errors import SDNetError

#: a Z slider spans current value +- Z_RANGE, in steps of Z_RANGE / Z_STEPS (then clipped)
Z_RANGE = 0.5
Z_STEPS = 100


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


def slice_of(record: Any, where: tuple[int | None, int | None]) -> latent.LatentSlice:
    """The :class:`~napari_sdnet.latent.LatentSlice` at ``(frame, z)`` of a segmented image's
    record (frame None for 2D/3D)."""
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


def mix_preview(model: Any, record: Any, choice: MixChoice) -> tuple[np.ndarray, str, np.ndarray]:
    """``(image on the input grid in the image's units, description, Z used)`` for
    ``choice``. Raises SDNetError on a problem."""
    z_src = slice_of(record, choice.z_from)
    toward = slice_of(record, choice.toward) if choice.toward is not None else None
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
    mask_src = None if choice.null_mask else slice_of(record, choice.mask_from)
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


class SliceChooser(QWidget):
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
        self.slice.setToolTip("slice (z index)")
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


class ZEdits(QGroupBox):
    """One slider per component of Z: an offset from its value (see :data:`Z_RANGE`)."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        super().__init__(f"Z edits (each: current value +- {Z_RANGE}, clipped to [0, 1])")
        self.setToolTip("move a component of Z from its value; the label shows the value used")
        grid = QGridLayout(self)
        grid.setVerticalSpacing(1)
        self.sliders: list[QSlider] = []
        self.labels: list[QLabel] = []
        for k in range(16):
            slider = QSlider(Qt.Orientation.Horizontal)
            slider.setRange(-Z_STEPS, Z_STEPS)
            slider.setValue(0)
            slider.setToolTip(f"offset of Z[{k}] from its current value")
            slider.valueChanged.connect(lambda *_: on_change())
            label = QLabel("-")
            label.setMinimumWidth(34)
            label.setToolTip(f"the value of Z[{k}] used")
            r, c = k % 8, 3 * (k // 8)
            grid.addWidget(QLabel(str(k)), r, c)
            grid.addWidget(slider, r, c + 1)
            grid.addWidget(label, r, c + 2)
            self.sliders.append(slider)
            self.labels.append(label)

    def offsets(self) -> np.ndarray:
        return np.array([s.value() for s in self.sliders], np.float32) * (Z_RANGE / Z_STEPS)

    def set_offsets(self, offsets: dict[int, float]) -> None:
        for k, v in offsets.items():
            self.sliders[k].setValue(round(float(v) / Z_RANGE * Z_STEPS))

    def reset(self) -> None:
        for s in self.sliders:
            s.setValue(0)

    def show_values(self, z: np.ndarray) -> None:
        for k, label in enumerate(self.labels):
            label.setText(f"{z[k]:.2f}" if k < z.size else "-")


class PreviewCanvas(PlotCanvas):
    """The preview, drawn in the dock beside the viewer (redrawn shortly after a change)."""

    def __init__(self) -> None:
        super().__init__((3.0, 3.0), 220, 60)
        self.setToolTip("the preview g(M, Z), beside the study (the study is not covered)")
        self.axes = self.figure_.add_axes((0.0, 0.0, 1.0, 0.92))
        self.axes.set_axis_off()
        self._artist = None

    def show_image(self, image: np.ndarray, limits: tuple[float, float], title: str) -> None:
        if self._artist is None or self._artist.get_array().shape != image.shape:
            self.axes.clear()
            self.axes.set_axis_off()
            self._artist = self.axes.imshow(image, cmap="gray", vmin=limits[0], vmax=limits[1])
        else:
            self._artist.set_data(image)
            self._artist.set_clim(*limits)
        self.axes.set_title(title, fontsize=7)
        self.schedule()


class HeatMap(PlotCanvas):
    """Z of several slices as a heat map (rows), one row outlined; redrawn shortly after the
    last change (a matplotlib redraw costs tens of ms: the preview shows first and spinning
    through slices stays fluid)."""

    def __init__(self, delay_ms: int) -> None:
        super().__init__((3.6, 2.6), 200, delay_ms)
        self.setToolTip("Z of each slice (rows); the Z slice is outlined")
        # fixed margins: a constrained layout doubles the cost of each redraw
        self.figure_.subplots_adjust(left=0.16, right=0.9, bottom=0.17, top=0.9)
        self.axes = self.figure_.add_subplot()
        self._colorbar = None
        self._key: tuple | None = None
        self._values: np.ndarray | None = None

    def draw_rows(
        self,
        values: np.ndarray | None,
        labels: list[str] | None = None,
        current: int = 0,
        title: str = "",
        key: tuple | None = None,
    ) -> np.ndarray | None:
        """Draw ``values`` (None: nothing); only the outline moves while ``key`` and the
        values stay the same. Returns ``values``."""
        ax = self.axes
        if values is None:
            ax.clear()
            ax.set_axis_off()
            self._key = self._values = None
            self.schedule()
            return None
        ax.set_axis_on()
        if key == self._key and ax.patches and np.array_equal(values, self._values):
            ax.patches[0].set_y(current - 0.5)
        else:
            artist = latent.draw_z_heatmap(ax, values, labels, current=current, title=title)
            if self._colorbar is None:
                self._colorbar = self.figure_.colorbar(artist, ax=ax, fraction=0.05)
            else:
                self._colorbar.update_normal(artist)
            self._key = key
        self._values = values
        self.schedule()
        return values


class MixControls:
    """The mixing controls, added to ``form``: M from, null mask, Z from, zero Z, interpolate Z
    toward another slice (and t)."""

    def __init__(
        self,
        form: Any,
        changed: Callable[[], None],
        changed_z: Callable[[], None],
        on_t_changed: Callable[[int], None],
    ) -> None:
        rows = (
            ("mask_chooser", "M from", SliceChooser(changed),
             "the slice whose mask M (anatomy) is used"),
            ("null_mask", "", QCheckBox("null mask (M = 0)"),
             "decode with an empty mask: what Z alone holds"),
            ("z_chooser", "Z from", SliceChooser(changed_z),
             "the slice whose latent vector Z (the rest) is used"),
            ("zero_z", "", QCheckBox("zero Z"), "decode with Z = 0: what the mask alone holds"),
        )
        for attr, label, widget, tip in rows:
            widget.setToolTip(tip)
            if isinstance(widget, QCheckBox):
                widget.toggled.connect(lambda *_: changed())
            form.addRow(label, widget)
            setattr(self, attr, widget)
        self.interp = QCheckBox("interpolate Z toward")
        self.interp.setToolTip("mix the Z slice's Z with another slice's Z (t below)")
        self.interp.toggled.connect(lambda *_: changed())
        self.toward = SliceChooser(changed)
        self.toward.setToolTip("the other slice whose Z is mixed in")
        row = QHBoxLayout()
        row.addWidget(self.interp)
        row.addWidget(self.toward)
        form.addRow("", row)
        self.t_slider = QSlider(Qt.Orientation.Horizontal)
        self.t_slider.setRange(0, 100)
        self.t_slider.setToolTip("0: the Z slice's Z; 1: the other slice's Z")
        self.t_label = QLabel("t = 0.00")
        self.t_label.setToolTip("how far toward the other slice's Z")
        self.t_slider.valueChanged.connect(on_t_changed)
        row = QHBoxLayout()
        row.addWidget(self.t_slider)
        row.addWidget(self.t_label)
        form.addRow("", row)


def frames_of(record: Any) -> list[int] | None:
    """Frames of a segmented 4D study that can be mixed, else None."""
    if record is None:
        return None
    if record.segmentation is not None and record.segmentation.z.ndim == 3:
        return list(range(record.segmentation.z.shape[0]))
    return sorted(record.frames) or None


def n_slices_of(record: Any) -> int | None:
    """Slices per frame of a segmented study (None for a 2D image)."""
    results = [] if record is None else [record.segmentation, *record.frames.values()]
    seg = next((r for r in results if r is not None), None)
    return int(seg.z.shape[-2]) if seg is not None and seg.z.ndim >= 2 else None


def another_slice(
    where: tuple[int | None, int | None], frames: list[int] | None, n: int | None
) -> tuple[int | None, int | None]:
    """A slice other than ``where`` to interpolate toward: the next phase of a cine study,
    else the next slice (the previous one at the end)."""
    frame, z = where
    if frames and len(frames) > 1:
        i = frames.index(frame) if frame in frames else 0
        return frames[(i + 1) % len(frames)], z
    if z is not None and n and n > 1:
        return frame, z + 1 if z + 1 < n else z - 1
    return frame, z
