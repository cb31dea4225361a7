"""What every napari-sdnet dock widget shares: the base class and its small parts.

* :class:`DockWidget`: the viewer (the real one behind napari's proxy) and its session
  (:func:`~napari_sdnet._napari._state.get_state`), a :class:`~._jobs.JobRunner`, user
  messages (a ``status`` label and napari notifications), replaceable dialogs, the slice shown
  in the viewer (:meth:`DockWidget.slice_index`), a save target that never replaces a file
  without asking (:meth:`DockWidget.save_target`), default save folders and a scroll area, so
  the docks fit a laptop screen together (:func:`scrollable`);
* :class:`LayerChooser`: a combo box of the viewer's layers that pass a test, kept up to date
  (layers added, removed, moved, renamed);
* :class:`PlotCanvas`: a matplotlib canvas redrawn shortly after the last change (a redraw
  costs tens of milliseconds: painting and spinning through slices stay fluid).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.utils import notifications
from qtpy.QtCore import QSize, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFileDialog,
    QFormLayout,
    QFrame,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_sdnet._napari._jobs import JobRunner
from napari_sdnet._napari._layers import free_layer_name as free_layer_name
from napari_sdnet._napari._layers import geometry_kwargs as geometry_kwargs
from napari_sdnet._napari._state import get_state, unwrap
from napari_sdnet.device import DEVICE_CHOICES as DEVICES
from napari_sdnet.io.datasets import MYOCARDIUM as MYOCARDIUM  # ACDC value, re-exported

PLUGIN = "napari-sdnet"


def device_combo() -> QComboBox:
    """The device chooser of the widgets (auto/cuda/mps/cpu)."""
    combo = QComboBox()
    combo.addItems(list(DEVICES))
    combo.setToolTip("where the model runs; auto: CUDA, then MPS (Apple), then CPU")
    return combo


def confirm_overwrite(parent: QWidget | None, path: Path) -> bool:
    """Ask before replacing an existing file."""
    answer = QMessageBox.question(
        parent,
        "Replace file?",
        f"{path.name} already exists in {path.parent}.\nReplace it?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def ask_save_file(parent: QWidget | None, title: str, suggested: str, filters: str) -> str | None:
    """A save dialog; None when cancelled."""
    path, _ = QFileDialog.getSaveFileName(parent, title, suggested, filters)
    return path or None


def default_folder(layer: Any = None) -> Path:
    """Where files about ``layer`` are saved by default: beside its source file, unless that
    lies inside the installed package (the bundled sample), else the home folder."""
    import napari_sdnet

    source = (getattr(layer, "metadata", None) or {}).get("source_path") if layer else None
    if source:
        folder = Path(source).resolve().parent
        package = Path(napari_sdnet.__file__).resolve().parent
        if package not in (folder, *folder.parents):
            return folder
    return Path.home()


def file_safe(text: str) -> str:
    return re.sub(r"[^\w.=-]+", "_", text).strip("_") or "image"


def slice_position_text(dims: Any) -> str:
    """Where ``dims`` (a viewer's) stands on each axis it does not display: the world position
    with its unit (ms, mm: the layers' ``units``) and the slider's index as napari counts it
    (from 0), e.g. ``t = 675 ms (frame 18 of 0-19)`` and ``z = 60 mm (slice 6 of 0-11)``."""
    lines = []
    units = tuple(getattr(dims, "units", None) or ())
    for dim in dims.not_displayed:
        label = str(dims.axis_labels[dim])
        unit = units[dim] if dim < len(units) else None
        unit_text = "" if unit is None or str(unit) == "pixel" else f" {unit:~P}"
        what = {"t": "frame", "z": "slice"}.get(label, "index")
        lines.append(
            f"{label} = {float(dims.point[dim]):.5g}{unit_text} "
            f"({what} {int(dims.current_step[dim])} of 0-{int(dims.nsteps[dim]) - 1})"
        )
    return "\n".join(lines)


#: the canvas overlay that shows the slice position (its own: the viewer's text overlay marks
#: corrected slices, :mod:`napari_sdnet._napari._corrections`)
POSITION_OVERLAY = "sdnet_slice_position"


def show_slice_position(viewer: Any) -> None:
    """Show where the viewer is along t and z (:func:`slice_position_text`: world units and the
    sliders' indices) in the canvas's top right corner, kept up to date: an overlay of its own
    (napari's current-slice overlay shows neither units nor indices; before napari 0.9, whose
    viewer has no canvas overlays, nothing is shown). Once per viewer."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)  # napari >= 0.9
    if overlays is None or POSITION_OVERLAY in overlays:
        return
    from napari.components.overlays import TextOverlay

    overlay = TextOverlay(position="top_right", font_size=10)  # colour: the theme's

    def update(event: Any = None) -> None:
        overlay.text = slice_position_text(viewer.dims)
        overlay.visible = bool(overlay.text)

    overlays[POSITION_OVERLAY] = overlay
    viewer.dims.events.connect(update)
    update()


class _Scroll(QScrollArea):
    """A scroll area that asks for its content's width (a horizontal scroll bar only in a
    narrow window) and little height: many docks fit one window."""

    def _bar(self) -> int:
        return self.verticalScrollBar().sizeHint().width()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt)
        inner = self.widget().minimumSizeHint()
        return QSize(inner.width() + self._bar(), min(inner.height(), 120))

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt)
        inner = self.widget().sizeHint()
        return QSize(inner.width() + self._bar(), min(inner.height(), 700))


def scrollable(content: QWidget) -> QScrollArea:
    """``content`` in a frameless vertical scroll area (docks fit small screens together)."""
    area = _Scroll()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(content)
    return area


class PlotCanvas(FigureCanvasQTAgg):
    """A matplotlib canvas whose :meth:`schedule` redraws it ``delay_ms`` after the last call."""

    def __init__(self, figsize: tuple[float, float], min_height: int, delay_ms: int) -> None:
        self.figure_ = Figure(figsize=figsize)
        super().__init__(self.figure_)
        self.setMinimumHeight(min_height)
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(delay_ms)
        self.timer.timeout.connect(self.draw_idle)

    def schedule(self) -> None:
        self.timer.start()


class LayerChooser(QComboBox):
    """The viewer's layers that pass ``accept``, listed as ``label(layer)``.

    Kept up to date with the layer list; ``on_refresh`` is called after each refresh and on
    each choice of the user. When the chosen layer goes, ``fallback`` picks the new one
    (default: the selected layer if it is listed, else the last listed).
    """

    def __init__(
        self,
        viewer: Any,
        accept: Callable[[Any], bool],
        on_refresh: Callable[[], None],
        label: Callable[[Any], str] = lambda layer: layer.name,
        prefer_active: bool = True,
        tooltip: str = "",
    ) -> None:
        super().__init__()
        self.viewer, self.accept, self.label = viewer, accept, label
        self.prefer_active = prefer_active
        self.choices: list[Any] = []
        self._on_refresh = on_refresh
        self.setToolTip(tooltip)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        events = viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            getattr(events, name).connect(self.refresh)
        events.inserted.connect(lambda event: event.value.events.name.connect(self.refresh))
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.currentIndexChanged.connect(lambda *_: self._on_refresh())

    def chosen(self) -> Any:
        i = self.currentIndex()
        return self.choices[i] if 0 <= i < len(self.choices) else None

    def refresh(self, *_: Any) -> None:
        current = self.chosen()
        choices = [layer for layer in self.viewer.layers if self.accept(layer)]
        if current not in choices:
            active = self.viewer.layers.selection.active
            if self.prefer_active and active in choices:
                current = active
            else:
                current = choices[-1] if choices else None
        self.choices = choices
        self.blockSignals(True)
        self.clear()
        for layer in choices:
            self.addItem(self.label(layer))
            self.setItemData(self.count() - 1, layer.name, 3)  # 3: Qt.ToolTipRole (full name)
        if current is not None:
            self.setCurrentIndex(choices.index(current))
        self.blockSignals(False)
        self._on_refresh()

    def select(self, layer: Any) -> bool:
        self.refresh()
        layer = unwrap(layer)
        if layer not in self.choices:
            return False
        self.setCurrentIndex(self.choices.index(layer))
        return True


class DockWidget(QWidget):
    """Base of the dock widgets (see the module docstring). Subclasses build their controls
    into ``self.body`` (a layout inside a scroll area) and set ``self.status`` (a QLabel)."""

    JOB_NAME = "job"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # napari hands widgets a PublicOnlyProxy; the state is keyed by the real viewer
        self.viewer = unwrap(napari_viewer)
        self.state = get_state(self.viewer)
        self.last_error: BaseException | None = None
        self.jobs = JobRunner(self, self.JOB_NAME)
        self.confirm_overwrite: Callable[[QWidget | None, Path], bool] = confirm_overwrite
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        content = QWidget()
        self.body = QVBoxLayout(content)
        self.scroll = scrollable(content)
        outer.addWidget(self.scroll)
        self.status = QLabel("ready")
        self.state.events.busy.connect(self._on_session_busy)

    # -- one job at a time in the viewer -----------------------------------------------------------
    def start_buttons(self) -> list[QWidget]:
        """The buttons that start a job (disabled, with the reason, while another runs)."""
        return []

    def _on_session_busy(self, *_: Any) -> None:
        other = self.state.busy and not self.jobs.running
        try:
            for button in self.start_buttons():
                tip = button.property("sdnet_tip")
                if tip is None:
                    tip = button.toolTip()
                    button.setProperty("sdnet_tip", tip)
                if other:
                    button.setEnabled(False)
                    button.setToolTip(f"disabled: {self.state.busy_reason()}")
                else:
                    button.setToolTip(tip)
                    if not self.jobs.running:
                        button.setEnabled(True)
        except RuntimeError:  # the widget's Qt objects are gone (viewer closing)
            pass

    # -- docking: the plugin's docks as tabs of one dock ------------------------------------------
    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt)
        super().showEvent(event)
        if not getattr(self, "_tabified", False):
            self._tabified = True
            self.scroll.updateGeometry()  # the content is laid out now: ask for its width
            QTimer.singleShot(0, self.tabify_with_siblings)

    def _dock(self) -> QDockWidget | None:
        parent = self.parentWidget()
        while parent is not None and not isinstance(parent, QDockWidget):
            parent = parent.parentWidget()
        return parent

    def tabify_with_siblings(self) -> None:
        """Put this dock as a tab over the other napari-sdnet docks of the window (each gets
        the full height: the docks fit a 1600 x 1000 screen together) and show it."""
        try:
            mine = self._dock()
            window = mine.parentWidget() if mine is not None else None
            if not isinstance(window, QMainWindow) or window.dockWidgetArea(mine) == 0:
                return
            for other in window.findChildren(QDockWidget):
                inner = other.widget()
                if (
                    other is not mine
                    and other.isVisible()
                    and not other.isFloating()
                    and isinstance(inner, DockWidget)
                    and window.dockWidgetArea(other) == window.dockWidgetArea(mine)
                ):
                    window.tabifyDockWidget(other, mine)
                    mine.raise_()
                    return
        except RuntimeError:  # closed meanwhile
            pass

    def progress_bar(self, maximum: int, idle: str, tooltip: str) -> QProgressBar:
        """A progress bar reading ``idle`` until the first job (not "0 / 1")."""
        bar = QProgressBar()
        bar.setRange(0, maximum)
        bar.setValue(0)
        bar.setFormat(idle)
        bar.setToolTip(tooltip)
        return bar

    def status_label(self, text: str = "ready") -> QLabel:
        """The status line (word-wrapped, selectable, never drawn over)."""
        self.status.setText(text)
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.status.setToolTip("what the widget did last")
        return self.status

    def chooser_form(
        self, row: str, accept: Callable[[Any], bool], on_refresh: Callable[[], None], **kw: Any
    ) -> tuple[QFormLayout, LayerChooser]:
        """A form at the top of the dock whose first row (``row``) is a :class:`LayerChooser`
        (``kw``: its options)."""
        form = QFormLayout()
        self.body.addLayout(form)
        chooser = LayerChooser(self.viewer, accept, on_refresh, **kw)
        form.addRow(row, chooser)
        self._chooser = chooser
        return form, chooser

    def chosen_image(self) -> Any:
        """The layer chosen in the dock's layer chooser (None when there is none)."""
        return self._chooser.chosen()

    def select_image(self, image: Any) -> bool:
        """Choose ``image`` in the layer chooser; False when it is not offered."""
        return self._chooser.select(image)

    def study_form(
        self, accept: Callable[[Any], bool], on_refresh: Callable[[], None]
    ) -> tuple[QFormLayout, LayerChooser]:
        """:meth:`chooser_form` for a widget working on segmented studies."""
        return self.chooser_form(
            "study", accept, on_refresh, prefer_active=False,
            tooltip="a study segmented with the Segmentation widget",
        )

    def start_job(self, body: Callable, job: Any, **kw: Any) -> Any:
        """Start ``body(job)`` with the job runner (``on_yield``, ``on_done`` and ``on_finish``
        default to the widget's ``_on_yielded``, ``_on_done`` and ``_on_finished``); None (and
        the reason shown) when another job runs on the viewer. The widget's ``_job`` is set and
        ``_set_running(True)`` called."""
        for key, name in (
            ("on_yield", "_on_yielded"), ("on_done", "_on_done"), ("on_finish", "_on_finished")
        ):
            if key not in kw and hasattr(self, name):
                kw[key] = getattr(self, name)
        worker = self.jobs.start(body, job, **kw)
        if worker is None:
            self._error(self.state.busy_reason())
            return None
        self._job = job
        self._set_running(True)
        return worker

    def _set_running(self, running: bool) -> None:
        """Enable or disable the controls while the widget's job runs (subclasses)."""

    def enable(self, names: str, enabled: bool) -> None:
        """``setEnabled(enabled)`` on the widget's controls named in ``names`` (spaces)."""
        for name in names.split():
            getattr(self, name).setEnabled(enabled)

    def wrote(self, path: Path, text: str) -> Path:
        """Say that ``path`` was written (status line and a notification)."""
        self.status.setText(text)
        self._info(f"wrote {path}")
        return path

    @property
    def worker(self) -> Any:
        """The running job's worker (None when idle)."""
        return self.jobs.worker

    def wait(self, timeout_ms: int | None = None) -> None:
        """Run the Qt event loop until the running job has finished (scripts)."""
        self.jobs.wait(timeout_ms)

    # -- messages ------------------------------------------------------------------------------
    def _error(self, message: str) -> None:
        self.status.setText(f"error: {message}")
        notifications.show_error(message)

    @staticmethod
    def _warning(message: str) -> None:
        notifications.show_warning(message)

    @staticmethod
    def _info(message: str) -> None:
        notifications.show_info(message)

    # -- the viewer ----------------------------------------------------------------------------
    def slice_index(self, layer: Any, axes: int | None = None) -> tuple[int, ...]:
        """Indices of the slice of ``layer`` shown in the viewer along its first ``axes`` axes
        (default: all but the last two), clipped to the layer's shape."""
        n = layer.ndim - 2 if axes is None else axes
        point = layer.world_to_data(self.viewer.dims.point)
        shape = np.shape(layer.data)
        return tuple(int(min(max(round(float(point[i])), 0), shape[i] - 1)) for i in range(n))

    def save_target(
        self,
        path: str | os.PathLike[str] | None,
        ask: Callable[[QWidget | None, str], str | None],
        suggested: str | Path,
        suffix: str | Callable[[Path], Path],
        overwrite: bool | None,
        what: str = "saved",
    ) -> tuple[Path, bool] | None:
        """``(target, overwrite)`` for a save: ``path``, or asked for (starting at
        ``suggested``); ``suffix`` added when missing (or a function that fixes the name); an
        existing file is replaced only when
        ``overwrite`` or the user confirms. None: cancelled or refused (said in the status)."""
        if path is None:
            path = ask(self, str(suggested))
            if not path:
                return None
        target = Path(path)
        if callable(suffix):
            target = suffix(target)
        elif not target.name.lower().endswith(suffix.lower()):
            target = target.with_name(target.name + suffix)
        if target.exists():
            if overwrite is None:
                overwrite = self.confirm_overwrite(self, target)
            if not overwrite:
                self.status.setText(f"not {what}: {target.name} exists")
                return None
        return target, bool(overwrite)

    def layer_alive(self, layer: Any) -> bool:
        return layer is not None and layer in self.viewer.layers
