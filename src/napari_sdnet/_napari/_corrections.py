"""The corrected-slices panel of the fine-tuning widget: the list, its buttons, the viewer mark.

The rules (which slices count as corrected) are :class:`napari_sdnet.edits.EditedSlices`; this
panel feeds it every kind of edit of the watched Labels layer:

* ``events.paint`` (brush, eraser, fill, polygon, ``data_setitem``): the painted slices are
  listed at once (napari sends the event before it writes the stroke) and checked against the
  model's mask shortly after, like every other edit;
* ``events.data`` (``layer.data = ...``) and ``events.set_data`` (a refresh, e.g. napari's
  undo, which writes the data and refreshes without a paint event): the whole layer is
  compared with the model's mask shortly after (:data:`EDIT_CHECK_MS`).

Clicking a listed slice shows it in the viewer; the viewer's text overlay says when the slice
shown is a corrected one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QLabel, QListWidget, QPushButton, QVBoxLayout, QWidget

from napari_sdnet._napari._dock import MYOCARDIUM
from napari_sdnet.edits import EditedSlices, SliceKey, painted_slices, slice_text
from napari_sdnet.io.slices import ACDC_LABELS

EDIT_CHECK_MS = 150  # after a data assignment or a refresh, compare the data again
MARK_PREFIX = "corrected slice"


def text_overlay(viewer: Any) -> Any:
    """The viewer's text overlay (napari 0.9: ``viewer.canvas.overlays``)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None:
        try:
            return overlays["text"]
        except (KeyError, TypeError):
            found = getattr(overlays, "text", None)
            if found is not None:
                return found
    return viewer.text_overlay


class CorrectionsPanel(QWidget):
    """The corrected slices of the watched layer (see the module docstring).

    ``dock`` is the fine-tuning widget (its viewer, session, messages and slice index);
    ``no_study`` gives the message shown when there is no layer to correct.
    """

    def __init__(self, dock: Any, no_study: Callable[[], str]) -> None:
        super().__init__()
        self.dock, self.viewer, self.no_study = dock, dock.viewer, no_study
        self.edits = EditedSlices()
        self.watched: Labels | None = None
        self._writing = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(EDIT_CHECK_MS)
        self._timer.timeout.connect(lambda: self.look_again())
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("corrected slices (click one to show it):"))
        self.slice_list = QListWidget()
        self.slice_list.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.slice_list.setMaximumHeight(90)
        self.slice_list.setToolTip(
            "slices that differ from the model's mask, or that you added: the labelled "
            "training slices. Click one to show it in the viewer"
        )
        self.slice_list.itemClicked.connect(lambda item: self.show_slice(self.slice_list.row(item)))
        layout.addWidget(self.slice_list)
        row = QHBoxLayout()
        self.add_button = QPushButton("Add current slice")
        self.add_button.setToolTip("list the slice shown in the viewer (e.g. one already right)")
        self.add_button.clicked.connect(lambda: self.add_current_slice())
        self.remove_button = QPushButton("Remove selected")
        self.remove_button.setToolTip("do not train on the selected slices")
        self.remove_button.clicked.connect(lambda: self.remove_selected())
        row.addWidget(self.add_button)
        row.addWidget(self.remove_button)
        layout.addLayout(row)
        self.viewer.dims.events.current_step.connect(self.show_mark)

    @property
    def keys(self) -> list[SliceKey]:
        return self.edits.keys

    @contextmanager
    def writing(self) -> Iterator[None]:
        """The plugin writes the layer: not an edit."""
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1

    def _baseline_of(self, layer: Labels | None) -> np.ndarray | None:
        for record in self.dock.state.records():
            if record.mask is not None and record.mask.layer is layer:
                return record.mask.baseline
        return None

    def watch(self, layer: Labels | None, keep: list[SliceKey] | None = None) -> None:
        """Follow the edits of ``layer`` (and of no other layer), compared with the model's
        mask; ``keep``: slices that stay listed (default: none for a new layer)."""
        old = self.watched
        if old is not None and layer is not old:
            for ev in (old.events.paint, old.events.data, old.events.set_data):
                ev.disconnect(self._on_event)
        if layer is not old and layer is not None:
            for ev in (layer.events.paint, layer.events.data, layer.events.set_data):
                ev.connect(self._on_event)
        if keep is None and layer is old:
            keep = self.keys  # the same layer, rewritten by the plugin: the list stays
        self.watched = layer
        self.edits.reset(self._baseline_of(layer))
        if layer is not None:
            if keep is None:
                self.edits.update(layer.data)
            else:
                self.edits.set_keys(keep, layer.data)
        self.refresh_list()

    def restore(self, keys: list[SliceKey]) -> None:
        """List exactly ``keys`` (Undo) against the layer's current baseline."""
        layer = self.watched
        self.edits.reset(self._baseline_of(layer))
        self.edits.set_keys(keys, None if layer is None else layer.data)
        self.refresh_list()

    def _on_event(self, event: Any) -> None:
        if self.watched is None or self._writing:
            return
        if event.type == "paint":
            self.on_paint(event)
        else:  # data assigned, or refreshed (napari's undo): look again shortly
            self._timer.start()

    def on_paint(self, event: Any) -> None:
        layer = self.watched
        if layer is None or self._writing:
            return
        parsed = painted_slices(getattr(event, "value", None) or (), layer.ndim)
        if parsed is None or not parsed[0]:
            self.look_again()
            return
        keys, values = parsed
        model = self.dock.state.model
        structures = model.config.structures if model is not None else ("myocardium",)
        counted = {ACDC_LABELS[s] for s in structures}
        other = sorted(v for v in values if v != 0 and v not in counted)
        if other:
            what = (
                "only label 2 (myocardium) counts"
                if counted == {MYOCARDIUM}
                else "only labels 1 (RV), 2 (myocardium) and 3 (LV) count"
            )
            self.dock._warning(
                f"painted with label {other[0]}: {what} for fine-tuning; choose one in the "
                "layer controls"
            )
        # napari sends the event before it writes the stroke: listed now, checked shortly after
        self.edits.touch(keys)
        self._timer.start()
        self.refresh_list()

    def look_again(self) -> None:
        """Compare the whole layer with the model's mask."""
        layer = self.watched
        if layer is not None and not self._writing:
            self.edits.update(layer.data)
            self.refresh_list()

    def refresh_list(self) -> None:
        self.slice_list.clear()
        self.slice_list.addItems([slice_text(k) for k in self.keys])
        self.show_mark()

    def show_mark(self, *_: Any) -> None:
        """Say in the viewer when the slice shown is a corrected one."""
        overlay = text_overlay(self.viewer)
        try:
            here = self.current_slice()
        except RuntimeError:  # the panel is gone (viewer closing)
            return
        if here is not None and here in self.keys:
            overlay.text = f"{MARK_PREFIX} {slice_text(here)} (used for fine-tuning)"
            overlay.position = "top_left"  # notifications pop up at the bottom right
            overlay.color = "#ffd23f"
            overlay.visible = True
        elif overlay.text.startswith(MARK_PREFIX):
            overlay.visible = False
            overlay.text = ""

    def show_slice(self, row: int) -> None:
        """Show the ``row``-th listed slice in the viewer."""
        layer, keys = self.watched, self.keys
        if layer is None or not 0 <= row < len(keys):
            return
        key = keys[row]
        world = layer.data_to_world([*key, 0, 0])
        point = list(self.viewer.dims.point)
        first = self.viewer.dims.ndim - layer.ndim
        for i in range(len(key)):
            point[first + i] = world[i]
        self.viewer.dims.point = point

    def current_slice(self) -> SliceKey | None:
        """The slice of the watched layer shown in the viewer."""
        layer = self.watched
        if layer is None or layer not in self.viewer.layers:
            return None
        return self.dock.slice_index(layer)

    def add_current_slice(self) -> SliceKey | None:
        key = self.current_slice()
        if key is None:
            self.dock._error(self.no_study())
            return None
        self.edits.add(key)
        self.refresh_list()
        return key

    def remove_selected(self) -> None:
        keys = self.keys
        for item in self.slice_list.selectedItems():
            self.edits.remove(keys[self.slice_list.row(item)])
        self.refresh_list()

    def remove_slice(self, key: SliceKey) -> None:
        self.edits.remove(tuple(key))
        self.refresh_list()
