"""Running a widget's long work in a napari thread worker: the one job runner of the docks.

A :class:`JobRunner` belongs to one dock widget and runs one job at a time:

* **worker**: the job body is a generator function (``yield`` = progress, and the point where
  Cancel takes effect) or a plain function, run by :func:`napari.qt.threading.create_worker`;
  the UI thread only receives what it yields and returns.
* **outcome**: every exception of the body is caught in the worker and handed to ``on_done``
  as ``(None, exc)``; a result as ``(value, None)``. (napari's generator worker drops some
  exceptions, ``RuntimeError`` among them, e.g. CUDA running out of memory, without a signal.)
* **busy**: an exclusive job (the default) holds the viewer's session
  (:meth:`~napari_sdnet._napari._state.SDNetState.begin_job`), so no other widget starts one
  meanwhile; the session is released when the worker finishes, however it ends.
* **cancel / stop**: :meth:`cancel` asks the worker to quit at its next ``yield`` (the result
  is discarded: ``on_abort``); :meth:`stop` sets the job's ``threading.Event`` (the body ends
  early and still returns its result, e.g. the model trained so far).
* **wait**: :meth:`wait` runs the Qt event loop until the job has finished (scripts).
* **out of memory**: :meth:`out_of_memory_message` frees GPU memory (garbage collection and
  ``torch.cuda.empty_cache``), drops the session's model when asked, sets the widget's device
  chooser to ``cpu`` and returns the message to show; the user presses the button again to
  retry on the CPU.
* **napari's activity**: while an exclusive job runs, a :class:`napari.utils.progress` bar
  shows it in napari's activity dock and status bar (:meth:`report`).

The widget going away (e.g. the viewer closing) stops its job. torch is imported only to free
memory or to recognise an out-of-memory error.
"""

from __future__ import annotations

import gc
import inspect
import threading
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import create_worker
from qtpy.QtCore import QEventLoop, QTimer
from qtpy.QtWidgets import QComboBox, QWidget

__all__ = ["JobRunner", "free_gpu_memory", "is_out_of_memory"]


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is PyTorch running out of (GPU) memory."""
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_gpu_memory() -> None:
    """Collect garbage and give cached CUDA memory back (no-op without CUDA)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _guarded_generator(body: Callable, args: tuple) -> Generator[Any, None, tuple]:
    try:
        value = yield from body(*args)
    except Exception as exc:  # shown to the user on the UI thread
        return None, exc
    return value, None


def _guarded_function(body: Callable, args: tuple) -> tuple:
    try:
        return body(*args), None
    except Exception as exc:  # shown to the user on the UI thread
        return None, exc


class JobRunner:
    """One job at a time for a dock widget (see the module docstring).

    ``owner`` is the widget (its ``state`` is the viewer's session, its ``device_combo``, if
    any, is set to ``cpu`` after running out of memory); ``name`` names its jobs to the other
    widgets ("a segmentation is running").
    """

    def __init__(self, owner: QWidget, name: str) -> None:
        self.owner = owner
        self.name = name
        self.worker: Any = None
        self.stop_event: threading.Event | None = None
        self._progress: Any = None
        # the widget may be destroyed mid-job: this closure must not reference the widget
        running: dict[str, Any] = {}
        self._running = running

        def _stop(*_: Any) -> None:
            running["gone"] = True  # the widget's callbacks must not run any more
            event, worker = running.get("stop"), running.get("worker")
            if event is not None:
                event.set()
            if worker is not None:
                worker.quit()

        owner.destroyed.connect(_stop)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(
        self,
        body: Callable,
        *args: Any,
        on_yield: Callable[[Any], None] | None = None,
        on_done: Callable[[Any, BaseException | None], None],
        on_abort: Callable[[], None] | None = None,
        on_finish: Callable[[], None] | None = None,
        stop: threading.Event | None = None,
        exclusive: bool = True,
        what: str = "",
    ) -> Any:
        """Start ``body(*args)`` in a worker; returns it, or None when the viewer's session is
        busy with another widget's job (``on_done`` is then not called)."""
        if self.worker is not None:
            return None
        state = self.owner.state
        if exclusive and not state.begin_job(self.name):
            return None
        guarded = _guarded_generator if inspect.isgeneratorfunction(body) else _guarded_function
        worker = create_worker(guarded, body, args, _start_thread=False)
        running = self._running

        def alive() -> bool:
            return not running.get("gone")

        if on_yield is not None and hasattr(worker, "yielded"):
            worker.yielded.connect(lambda item: alive() and on_yield(item))
        worker.returned.connect(lambda out: alive() and on_done(*out))
        if on_abort is not None and hasattr(worker, "aborted"):
            worker.aborted.connect(lambda: alive() and on_abort())

        def finished() -> None:
            gone = not alive()
            self.worker = self.stop_event = None
            self._running.clear()
            self._running["gone"] = gone
            self._close_progress()
            if exclusive:
                state.end_job(self.name)
            if on_finish is not None and not gone:
                on_finish()

        worker.finished.connect(finished)
        self.worker, self.stop_event = worker, stop
        self._running.update(worker=worker, stop=stop)
        if exclusive:
            self._open_progress(what or self.name)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Quit the job at its next ``yield``; its result is discarded."""
        if self.worker is not None:
            self.worker.quit()

    def stop(self) -> None:
        """Ask the job to end early and return what it has (its stop event)."""
        if self.stop_event is not None:
            self.stop_event.set()

    def wait(self, timeout_ms: int | None = None) -> None:
        """Run the Qt event loop until the job has finished (scripts, tests)."""
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

    # -- napari's activity dock and status bar --------------------------------------------------
    def _open_progress(self, what: str) -> None:
        from napari.utils import progress

        self._progress = progress(total=0, desc=what)

    def report(self, done: float, total: float, text: str = "") -> None:
        """Show progress in napari's activity dock (and the viewer's status bar)."""
        bar = self._progress
        if bar is None:
            return
        total = max(int(total), 1)
        if bar.total != total:
            bar.total = total
        bar.n = int(min(max(done, 0), total))
        if text:
            bar.set_description(f"{self.name}: {text}")
        bar.refresh()
        viewer = getattr(self.owner, "viewer", None)
        if viewer is not None and text:
            viewer.status = f"napari-sdnet {self.name}: {text}"

    def _close_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
            viewer = getattr(self.owner, "viewer", None)
            if viewer is not None and str(viewer.status).startswith("napari-sdnet"):
                viewer.status = f"napari-sdnet {self.name}: finished"

    # -- out of memory ---------------------------------------------------------------------------
    def out_of_memory_message(self, doing: str, retry: str, forget_model: bool = False) -> str:
        """Free GPU memory, switch the widget to the CPU and say so (see the module docstring)."""
        if forget_model:
            self.owner.state.forget_model()
        free_gpu_memory()
        combo = getattr(self.owner, "device_combo", None)
        if isinstance(combo, QComboBox):
            combo.setCurrentText("cpu")
        return (
            f"the GPU ran out of memory while {doing}. GPU memory was freed and the device is "
            f"now set to 'cpu': {retry} (slower)"
        )


def segment_steps(
    model: Any, data: Any, spacing: Any, batch_size: int | None = None
) -> Generator[tuple[str, Any], None, Any]:
    """Worker body part: :func:`napari_sdnet.api.segment_iter` yielding
    ``("progress", (done, total))``; returns the :class:`~napari_sdnet.api.Segmentation`."""
    from napari_sdnet import api

    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    for item in api.segment_iter(model, data, spacing, **kwargs):
        if isinstance(item, api.Segmentation):
            return item
        yield ("progress", item)
    raise RuntimeError("segment_iter ended without a result")  # pragma: no cover
