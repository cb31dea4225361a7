"""Dock widget "Cardiac function": volumes, EF and LV mass of a labels layer, with its curve.

Layout and wiring only: every number comes from :mod:`napari_sdnet.cardiac` (the code behind
``napari-sdnet measure``), computed in a napari thread worker on a copy of the layer's data.
Pick the segmentation (or a layer you corrected, or expert labels), optionally an ES layer for
an ED + ES pair of 3D volumes; the widget measures again shortly after every edit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QEventLoop, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_sdnet import cardiac
from napari_sdnet._napari._dock import (
    PLUGIN,
    DockWidget,
    PlotCanvas,
    ask_save_file,
    default_folder,
    file_safe,
)
from napari_sdnet._napari._state import unwrap
from napari_sdnet.errors import SDNetError

WIDGET_NAME = "Cardiac function"
NO_ES = "(none: a cine, or one phase)"
EDIT_DELAY_MS = 500  # measure again this long after the last edit


def ask_save_path(parent: QWidget | None, suggested: str, kind: str) -> str | None:
    """Ask where to save the CSV / JSON; None when cancelled."""
    return ask_save_file(parent, f"Export {kind}", suggested, f"{kind} (*.{kind.lower()})")


def _spacing_of(layer: Labels) -> tuple[tuple[float, ...], str | None, bool]:
    """``(spacing, time unit, from the file?)``: the NIfTI geometry if kept, else the scale."""
    from napari_sdnet.io.nifti import Geometry

    meta = (layer.metadata or {}).get("sdnet_geometry")
    if meta:
        try:
            geo = Geometry.from_metadata(meta)
            if len(geo.spacing) == layer.ndim:
                return tuple(geo.spacing), geo.time_unit, True
        except SDNetError:
            pass
    units = [str(u) for u in getattr(layer, "units", ())]
    unit = {"millisecond": "msec", "second": "sec"}.get(units[0] if units else "", None)
    return tuple(abs(float(s)) for s in layer.scale), unit, False


def _measure(job: dict) -> Any:
    """Worker body (the job runner hands its exceptions to the UI thread)."""
    if job["es_data"] is not None:
        return cardiac.measure_ed_es(
            job["data"], job["es_data"], job["spacing"][-3:], job["es_spacing"][-3:],
            convention=job["convention"], structures=job["structures"], source=job["source"],
        )
    return cardiac.measure_labels(
        job["data"], job["spacing"], ed=job["ed"], es=job["es"], convention=job["convention"],
        structures=job["structures"], source=job["source"], time_unit=job["time_unit"],
    )


class FunctionWidget(DockWidget):
    """Pick a labels layer; get EDV/ESV/SV/EF, LV mass and the volume-time curve; export."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.result: cardiac.CardiacFunction | None = None
        self._pending = False
        self._choices: list[Labels] = []
        self._watched: list[Labels] = []
        self.ask_save_path = ask_save_path
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(EDIT_DELAY_MS)
        self._timer.timeout.connect(lambda: self.auto_check.isChecked() and self.measure())
        self._build()
        events = self.viewer.layers.events
        for name in ("inserted", "removed", "reordered"):
            getattr(events, name).connect(self._refresh_layers)
        self.state.record_changed.connect(self._on_record_changed)
        self._refresh_layers()

    # -- layout --------------------------------------------------------------------------------
    JOB_NAME = "measurement"

    def _build(self) -> None:
        layout = self.body
        form = QFormLayout()
        layout.addLayout(form)
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("labels to measure: 4D cine, or one 3D phase (the ED volume)")
        self.es_combo = QComboBox()
        self.es_combo.setToolTip("with a 3D layer above: the ES volume (ED + ES pair)")
        self.convention_combo = QComboBox()
        for key, text in cardiac.CONVENTION_TEXT.items():
            self.convention_combo.addItem(text, key)
        self.ed_spin, self.es_spin = QSpinBox(), QSpinBox()
        for spin, what in ((self.ed_spin, "largest"), (self.es_spin, "smallest")):
            spin.setRange(-1, 0)
            spin.setSpecialValueText("auto")
            spin.setValue(-1)
            spin.setToolTip(f"auto: the frame of {what} LV cavity volume")
        form.addRow("labels", self.layer_combo)
        form.addRow("ES labels", self.es_combo)
        form.addRow("values", self.convention_combo)
        row = QHBoxLayout()
        for text, spin in (("ED", self.ed_spin), ("ES", self.es_spin)):
            row.addWidget(QLabel(text))
            row.addWidget(spin)
        form.addRow("frames", row)
        for w in (self.layer_combo, self.es_combo, self.convention_combo):
            w.currentIndexChanged.connect(self._on_choice_changed)
        self.user_chose = False  # a layer picked by hand is kept when a new segmentation comes
        self.layer_combo.activated.connect(lambda *_: setattr(self, "user_chose", True))
        for spin in (self.ed_spin, self.es_spin):
            spin.valueChanged.connect(lambda *_: self._timer.start())
        buttons = QHBoxLayout()
        self.measure_button = QPushButton("Measure")
        self.measure_button.setToolTip("measure volumes, EF and LV mass of the chosen labels")
        self.convention_combo.setToolTip("which label values mean which structure")
        self.measure_button.clicked.connect(lambda: self.measure())
        self.auto_check = QCheckBox("after edits")
        self.auto_check.setChecked(True)
        self.auto_check.setToolTip("measure again after painting on the labels")
        for spin in (self.ed_spin, self.es_spin):
            spin.setToolTip(spin.toolTip() + " (or choose the frame)")
        buttons.addWidget(self.measure_button)
        buttons.addWidget(self.auto_check)
        layout.addLayout(buttons)
        layout.addWidget(self.status_label("pick a labels layer"))
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["index", "value"])
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        header.sectionResized.connect(lambda *_: self.table.resizeRowsToContents())  # wrap text
        self.table.setMinimumHeight(290)
        self.table.setToolTip("the cardiac indices of the labels (hover a value for all of it)")
        layout.addWidget(self.table)
        self.canvas = PlotCanvas((3.6, 2.4), 220, 0)
        self.canvas.setToolTip("LV (and RV) volume over the cardiac cycle, ED and ES marked")
        self.figure = self.canvas.figure_
        self.figure.set_layout_engine("tight")
        layout.addWidget(self.canvas)
        self.messages_label = QLabel("")
        self.messages_label.setWordWrap(True)
        self.messages_label.setToolTip("notes and warnings about the measurement")
        layout.addWidget(self.messages_label)
        row = QHBoxLayout()
        self.csv_button = QPushButton("Export CSV...")
        self.csv_button.setToolTip("the volume of each frame as CSV")
        self.csv_button.clicked.connect(lambda: self.export("CSV"))
        self.json_button = QPushButton("Export JSON...")
        self.json_button.setToolTip("every result, with its conventions, as JSON")
        self.json_button.clicked.connect(lambda: self.export("JSON"))
        row.addWidget(self.csv_button)
        row.addWidget(self.json_button)
        layout.addLayout(row)
        self._draw()

    # -- layers --------------------------------------------------------------------------------
    def _refresh_layers(self, *_: Any) -> None:
        current, es = self.chosen_layer(), self.es_layer()
        choices = [x for x in self.viewer.layers if isinstance(x, Labels) and x.ndim in (3, 4)]
        if current not in choices:
            active = self.viewer.layers.selection.active
            current = active if active in choices else (choices[-1] if choices else None)
        self._choices = choices
        for combo in (self.layer_combo, self.es_combo):
            combo.blockSignals(True)
            combo.clear()
        self.layer_combo.addItems([f"{x.name}  ({x.ndim}D)" for x in choices])
        if current is not None:
            self.layer_combo.setCurrentIndex(choices.index(current))
        self.es_combo.addItems([NO_ES] + [x.name for x in choices if x.ndim == 3])
        if es is not None and es in choices and es.ndim == 3:
            self.es_combo.setCurrentText(es.name)
        for combo in (self.layer_combo, self.es_combo):
            combo.blockSignals(False)
        self._on_choice_changed(measure=False)

    def chosen_layer(self) -> Labels | None:
        i = self.layer_combo.currentIndex()
        return self._choices[i] if 0 <= i < len(self._choices) else None

    def es_layer(self) -> Labels | None:
        name = self.es_combo.currentText()
        return next((x for x in self._choices if x.name == name and x.ndim == 3), None)

    def select_layer(self, layer: Any, es_layer: Any = None) -> bool:
        """Measure ``layer`` (and ``es_layer`` as the ES volume); False if it is not usable."""
        layer = unwrap(layer)
        if not isinstance(layer, Labels) or layer.ndim not in (3, 4):
            self._error(f"{getattr(layer, 'name', layer)!r}: choose a 3D or 4D labels layer")
            return False
        self._refresh_layers()
        self.layer_combo.setCurrentIndex(self._choices.index(layer))
        self.es_combo.setCurrentText(unwrap(es_layer).name if es_layer is not None else NO_ES)
        return True

    def _on_choice_changed(self, *_: Any, measure: bool = True) -> None:
        layer, es = self.chosen_layer(), self.es_layer()
        pair = es is not None and layer is not None and layer.ndim == 3 and es is not layer
        n = layer.data.shape[0] if layer is not None and layer.ndim == 4 else 1
        for spin in (self.ed_spin, self.es_spin):
            spin.setMaximum(n - 1)
            spin.setEnabled(not pair)
        for old in self._watched:  # measure again after edits of the chosen layers
            for ev in (old.events.data, old.events.paint):
                ev.disconnect(self._on_edit)
        self._watched = [x for x in (layer, es if pair else None) if x is not None]
        for x in self._watched:
            x.events.data.connect(self._on_edit)
            x.events.paint.connect(self._on_edit)
        if measure and layer is not None:
            self._timer.start()

    def _on_edit(self, *_: Any) -> None:
        self._timer.start()  # restarted by every stroke: measured once the painting pauses

    def _on_record_changed(self, record: Any) -> None:
        """A new segmentation: follow it unless the user picked a layer of their own."""
        self._refresh_layers()
        mask = record.mask.layer if record.mask is not None else None
        current = self.chosen_layer()
        own = self.user_chose and current is not None and not self.state.is_made_by_plugin(current)
        if mask is not None and mask in self._choices and not own:
            if mask is not current:
                self.select_layer(mask)
            self.measure()

    def _model_structures(self, layer: Labels) -> tuple[Any, str | None]:
        """What made ``layer``: a model segmentation (its structures) or labels (None)."""
        if not self.state.is_made_by_plugin(layer):
            return None, None
        for record in self.state.records():
            if any(m.layer is layer for m in record.made):
                seg = record.segmentation or next(iter(record.frames.values()), None)
                if seg is not None:
                    return cardiac.segmented_structures(seg), "the model"
        return ("myocardium",), "the model"

    # -- measuring -----------------------------------------------------------------------------
    def measure(self) -> Any:
        """Measure the chosen layer(s) in a worker; returns it (None: nothing to measure)."""
        self._timer.stop()  # a measurement due after an edit is this one
        layer, es = self.chosen_layer(), self.es_layer()
        if layer is None:
            self._error("no 3D or 4D labels layer: segment an image or open labels first")
            return None
        if self.worker is not None:
            self._pending = True
            return self.worker
        spacing, unit, from_file = _spacing_of(layer)
        if not from_file:
            self._warning(f"{layer.name!r} has no NIfTI geometry: its scale is taken as mm")
        pair = es is not None and layer.ndim == 3 and es is not layer
        structures, source = self._model_structures(layer)
        job = {
            "data": np.array(layer.data), "spacing": spacing, "time_unit": unit,
            "es_data": np.array(es.data) if pair else None,
            "es_spacing": _spacing_of(es)[0] if pair else None,
            "ed": None if self.ed_spin.value() < 0 else self.ed_spin.value(),
            "es": None if self.es_spin.value() < 0 else self.es_spin.value(),
            "convention": self.convention_combo.currentData(),
            "structures": structures, "source": source,
        }
        self.status.setText(f"measuring {layer.name!r} ...")
        name = layer.name
        return self.jobs.start(
            _measure,
            job,
            on_done=lambda out, error: self._on_returned(error or out, name),
            on_finish=self._on_finished,
            exclusive=False,
        )

    def wait(self, timeout_ms: int = 60_000) -> None:
        """Run the Qt event loop until no measurement is running or due (tests, scripts)."""
        loop = QEventLoop()
        timer = QTimer()
        idle = lambda: self.worker is None and not self._pending and not self._timer.isActive()  # noqa: E731
        timer.timeout.connect(lambda: idle() and loop.quit())
        timer.start(20)
        QTimer.singleShot(timeout_ms, loop.quit)
        loop.exec()
        timer.stop()

    def _on_finished(self) -> None:
        if self._pending:
            self._pending = False
            self.measure()

    def _on_returned(self, out: Any, name: str) -> None:
        if isinstance(out, BaseException):
            self.last_error = out
            text = str(out) if isinstance(out, SDNetError) else f"{type(out).__name__}: {out}"
            self._error(f"cannot measure {name!r}: {text}")
            return
        self.last_error, self.result = None, out
        self.table.setRowCount(0)
        for name_, value in out.index_rows():
            row = self.table.rowCount()
            self.table.insertRow(row)
            self.table.setItem(row, 0, QTableWidgetItem(name_))
            self.table.setItem(row, 1, QTableWidgetItem(value))
            self.table.item(row, 1).setToolTip(value)
        self.table.resizeRowsToContents()
        lines = [f"note: {t}" for t in out.notes] + [f"warning: {t}" for t in out.warnings]
        self.messages_label.setText("\n".join(lines))
        self.status.setText(f"measured {name!r}: {len(out.phases)} phase(s), "
                            f"{len(out.warnings)} warning(s)")
        self._draw()

    def _draw(self) -> None:
        self.figure.clear()
        ax = self.figure.add_subplot(1, 1, 1)
        if self.result is None:
            ax.text(0.5, 0.5, "the volume curve appears here", ha="center", va="center",
                    fontsize=8, transform=ax.transAxes)
            ax.tick_params(labelsize=7)
        else:
            cardiac.plot_volume_curve(self.result, ax)
        self.canvas.draw_idle()

    # -- export --------------------------------------------------------------------------------
    def export(self, kind: str, path: str | os.PathLike[str] | None = None,
               overwrite: bool | None = None) -> Path | None:
        """Write the result as ``"CSV"`` (per-frame volumes) or ``"JSON"`` (everything);
        asks for the path and before replacing a file unless given. None: not written."""
        if self.result is None:
            self._error("nothing measured yet: press Measure first")
            return None
        layer = self.chosen_layer()
        suffix = "." + kind.lower()
        base = file_safe(layer.name if layer is not None else "labels")
        found = self.save_target(
            path,
            lambda parent, suggested: self.ask_save_path(parent, suggested, kind),
            default_folder(layer) / f"{base}_function{suffix}",
            suffix,
            overwrite,
            "exported",
        )
        if found is None:
            return None
        target, overwrite = found
        try:
            if kind == "CSV":
                cardiac.write_csv(self.result, target, overwrite=bool(overwrite))
            else:
                extra = {"labels_layer": layer.name if layer is not None else None}
                cardiac.write_json(self.result, target, overwrite=bool(overwrite), extra=extra)
        except SDNetError as exc:
            self._error(str(exc))
            return None
        return self.wrote(target, f"exported {target}")


def measure_selected_layer(viewer: Any) -> None:
    """Layers > Measure > "Cardiac function...": dock the widget on the selected labels."""
    viewer = unwrap(viewer)
    layer = viewer.layers.selection.active
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET_NAME)
    widget = unwrap(widget)
    if layer is not None and widget.select_layer(layer):
        widget.measure()
