"""Segment and measure whole cohorts: one mask and one CSV row per study (no Qt, no napari).

``napari-sdnet batch`` and :func:`run_batch` share this code::

    from napari_sdnet import batch

    summary = batch.run_batch(["cohort/*/sa.nii.gz"], "out", workers=2)
    summary = batch.run_batch(inputs, "out", scheduler="tcp://10.0.0.5:8786")  # Dask cluster

What it does (see ``docs/batch.md``):

* **inputs**: NIfTI files, DICOM series folders, folders (the NIfTI images in them, recursively;
  label maps such as ``*_gt`` / ``*_seg`` are skipped; a folder without NIfTI that holds DICOM
  files is one series) and glob patterns of them.
* **outputs**: ``OUTDIR/<stem>_seg.nii.gz`` per input (myocardium = 2, the input's shape, affine
  and header; ``<parent>_<stem>_seg.nii.gz`` when two inputs share a stem) and
  ``OUTDIR/measurements.csv``: one row per input with its status, the error if any, and the
  cardiac function of :func:`napari_sdnet.api.measure_segmentation` (volumes, ED/ES, EF, LV
  mass). Every file is written atomically (:mod:`napari_sdnet.io.files`).
* **resumable**: ``OUTDIR/.sdnet-batch/journal.jsonl`` records each finished input (appended
  and fsync'ed by the driver, one line per input); a rerun skips the inputs whose mask exists
  and whose record says ``ok`` for the same input file (size and modification time) and model.
  Failed inputs are tried again. A lock file stops two batches writing the same folder.
* **engines**: the same task (:func:`process_one`: read, segment, write the mask, measure)
  runs in this process (``workers=1``), in a local pool of worker processes
  (``concurrent.futures.ProcessPoolExecutor``, ``workers=N``), or on an existing Dask
  distributed cluster (``scheduler=ADDRESS``; ``pip install napari-sdnet[cluster]``). Every
  worker process loads the model once (:func:`worker_model`, a per-process cache keyed by model
  path and device), not once per study; workers read the inputs and write the masks
  themselves (shared storage on a cluster), and send back only the CSV row.

Why a process pool and not a Dask ``LocalCluster`` for local runs: the pool is the standard
library (no extra dependency for the default mode), starts in the time a worker takes to import
PyTorch, and has no scheduler or nanny processes competing for a laptop's cores; the task
function and the driver loop are the same for both, only ``submit`` differs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_sdnet.batch_io import (
    COLUMNS,
    CSV_NAME,
    STATE_DIR,
    _Journal,
    _locked,
    _model_identity,
    _remove_stale_temporaries,
    _signature,
    _write_csv,
    expand_inputs,
    mask_names,
)
from napari_sdnet.batch_io import (
    MASK_SUFFIX as MASK_SUFFIX,
)
from napari_sdnet.errors import CheckpointError, InputError, SDNetError

__all__ = [
    "CSV_NAME",
    "COLUMNS",
    "BatchSummary",
    "expand_inputs",
    "mask_names",
    "process_one",
    "run_batch",
    "worker_model",
]

#: Rewrite measurements.csv at most this often during a run (seconds); always at the end.
CSV_EVERY_S = 30.0


# --------------------------------------------------------------------------------------------
# the task: runs in a worker (this process, a pool process or a Dask worker)
# --------------------------------------------------------------------------------------------
_MODELS: dict[tuple[str, str, int], Any] = {}
_MODEL_LOCK = threading.Lock()
#: how many models this process has loaded (a worker loads one per model file and device)
_MODEL_LOADS = 0
_THREADS_SET = False


def _model_key_path(source: str) -> tuple[str, int]:
    if source.strip().lower() == "bundled":
        return "bundled", 0
    p = Path(source)
    try:
        return str(p.resolve()), int(p.stat().st_mtime_ns)
    except OSError:
        return str(p), 0


def worker_model(source: str, device: str = "auto") -> Any:
    """The model ``source`` on ``device``, loaded once per process (thread-safe).

    Keyed by the model path (and its modification time) and the device, so every task of a
    worker process reuses one network; the first task of each process pays for loading.
    """
    from napari_sdnet import api

    global _MODEL_LOADS
    path, mtime = _model_key_path(source)
    key = (path, str(device), mtime)
    with _MODEL_LOCK:
        model = _MODELS.get(key)
        if model is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a baseline model's warning, said by the driver
                model = api.load_model(source, device)
            _MODELS[key] = model
            _MODEL_LOADS += 1
        return model


def _undo_dask_malloc_trim() -> bool:
    """Give glibc's malloc back its defaults in a Dask worker whose nanny set
    ``MALLOC_TRIM_THRESHOLD_`` (Dask does, to make freed memory show in RSS at once).

    Setting that variable also switches off glibc's adaptive mmap threshold, so every large
    array of a study (images, probabilities: megabytes each) is a fresh ``mmap`` whose pages
    fault in again. Measured on the sample study (2 nanny-run Dask workers, 1 thread each, on
    the shared 2-core development machine): 8.6-9.0 s per study with the nanny's setting,
    2.4-3.1 s after this call, 4.0-4.5 s with the variable removed from the nanny's config.
    The thresholds are set where the adaptive rule would take them (32 MiB mmap, 64 MiB trim);
    freed memory still goes back to the system, in larger steps.
    Returns True when it changed something (Linux/glibc only)."""
    if not os.environ.get("MALLOC_TRIM_THRESHOLD_") or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1
        ok = libc.mallopt(m_trim_threshold, 64 << 20) == 1 and ok
        return ok
    except (OSError, AttributeError):
        return False


def _set_threads(threads: int | None) -> None:
    """torch intra-op threads for this process, once: ``threads``; else, in a Dask worker
    without ``OMP_NUM_THREADS`` (Dask's nanny sets it to 1), the cores per worker thread;
    else torch's default (which follows ``OMP_NUM_THREADS``)."""
    global _THREADS_SET
    if _THREADS_SET:
        return
    with _MODEL_LOCK:
        if _THREADS_SET:
            return
        n = threads
        worker = None
        distributed = sys.modules.get("distributed")  # imported in a Dask worker, else not
        if distributed is not None:
            with contextlib.suppress(Exception):
                worker = distributed.get_worker()
        if worker is not None:
            _undo_dask_malloc_trim()
            if n is None and not os.environ.get("OMP_NUM_THREADS"):
                with contextlib.suppress(Exception):
                    n = max(1, (os.cpu_count() or 1) // max(1, worker.state.nthreads))
        if n is not None:
            import torch

            torch.set_num_threads(int(n))
        _THREADS_SET = True


def _round(value: Any, digits: int = 3) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, digits)
    return value


def _peak_mb() -> float | None:
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    except Exception:  # pragma: no cover - not on every platform
        return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, SDNetError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def _measure_row(seg: Any, vol: Any) -> tuple[dict[str, Any], list[str]]:
    from napari_sdnet import api

    row: dict[str, Any] = {}
    data = vol.data
    if data.ndim < 3:
        return row, ["2D image: no volumes"]
    result = api.measure_segmentation(seg, vol.geometry.spacing, time_unit=vol.geometry.time_unit)
    if result.mode == "volume":
        for s in ("lv", "rv", "myocardium"):
            row[f"{s}_ml"] = _round(result.volumes[s][0])
    else:
        for key, value in result.indices().items():
            if key in COLUMNS:
                row[key] = _round(value)
    return row, list(result.warnings)


def process_one(task: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Read one study, segment it, write its mask atomically, measure it; return its CSV row.

    ``task``: ``input`` (path), ``mask`` (absolute output path), ``overwrite`` (may replace an
    existing mask). ``settings``: ``model``, ``device``, ``threads``, ``binary``.
    Anything wrong with the input becomes ``status="error"`` with a one-line ``error``; a model
    that cannot be loaded returns ``{"fatal": message}`` (it would fail every input).
    """
    import numpy as np

    start = time.perf_counter()
    row: dict[str, Any] = {"file": task["input"], "mask": Path(task["mask"]).name}
    caught: list[str] = []
    try:
        _set_threads(settings.get("threads"))
        try:
            model = worker_model(settings["model"], settings.get("device", "auto"))
        except SDNetError as exc:
            return {"fatal": _one_line(exc)}
        from napari_sdnet import api
        from napari_sdnet.io import read_image
        from napari_sdnet.io.nifti import write_nifti

        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            vol = read_image(task["input"])
            if vol.is_labels:
                raise InputError(
                    f"{task['input']}: looks like a label map, not an image (integers with few "
                    "values)"
                )
            seg = api.segment(model, vol.data, vol.geometry.spacing, latents=False)
            # ACDC labels of every structure the model segments (binary: the myocardium, 0/1)
            labels = seg.mask if settings.get("binary") else seg.labels()
            write_nifti(
                task["mask"],
                labels,
                vol.geometry,
                dtype=np.uint8,
                overwrite=bool(task.get("overwrite")),
            )
            measured, notes = _measure_row(seg, vol)
        caught = [" ".join(str(w.message).split()) for w in record]
        row.update(measured)
        row["status"] = "ok"
        row["shape"] = "x".join(str(int(s)) for s in vol.data.shape)
        row["frames"] = int(vol.data.shape[0]) if vol.data.ndim == 4 else 1
        caught += notes
    except Exception as exc:
        row["status"] = "error"
        row["error"] = _one_line(exc)
    row["seconds"] = round(time.perf_counter() - start, 3)
    row["worker"] = f"{os.uname().nodename}:{os.getpid()}"
    row["worker_peak_mb"] = _peak_mb()
    if caught:
        row["warnings"] = " | ".join(dict.fromkeys(caught))
    return row


# --------------------------------------------------------------------------------------------
# engines: where process_one runs
# --------------------------------------------------------------------------------------------
class _InProcess:
    """``workers=1``: run each task here, one at a time (no start-up of other processes)."""

    name = "1 worker (this process)"

    def __init__(self) -> None:
        import concurrent.futures as cf

        self._cf = cf

    def window(self) -> int:
        return 1

    def submit(self, task: dict, settings: dict) -> Any:
        fut = self._cf.Future()
        try:
            fut.set_result(process_one(task, settings))
        except BaseException as exc:  # noqa: BLE001 - a KeyboardInterrupt is re-raised below
            if not isinstance(exc, Exception):
                raise
            fut.set_exception(exc)
        return fut

    def wait(self, futures: set) -> set:
        return {f for f in futures if f.done()}

    def crashed(self, exc: BaseException) -> bool:
        return False

    def restart(self) -> None:
        pass

    def close(self, cancel: bool) -> None:
        pass


def _watch_parent(parent: int) -> None:  # pragma: no cover - runs in pool workers
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _pool_init(parent: int, threads: int) -> None:  # pragma: no cover - runs in pool workers
    """Pool worker set-up: one thread budget, Ctrl-C left to the driver, and exit when the
    driver is gone (killed) instead of lingering."""
    import signal

    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


class _LocalPool:
    """``workers=N``: N local worker processes (spawned), each loading the model once."""

    def __init__(self, workers: int, threads: int) -> None:
        import concurrent.futures as cf
        import multiprocessing as mp

        self._cf = cf
        self._ctx = mp.get_context("spawn")
        self.workers = workers
        self.threads = threads
        self.name = f"{workers} local worker processes, {threads} thread(s) each"
        self._pool = self._new()

    def _new(self) -> Any:
        return self._cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._ctx,
            initializer=_pool_init,
            initargs=(os.getpid(), self.threads),
        )

    def window(self) -> int:
        return 2 * self.workers

    def submit(self, task: dict, settings: dict) -> Any:
        return self._pool.submit(process_one, task, settings)

    def wait(self, futures: set) -> set:
        done, _ = self._cf.wait(futures, timeout=1.0, return_when=self._cf.FIRST_COMPLETED)
        return done

    def crashed(self, exc: BaseException) -> bool:
        from concurrent.futures.process import BrokenProcessPool

        return isinstance(exc, BrokenProcessPool)

    def restart(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new()

    def close(self, cancel: bool) -> None:
        if cancel:  # interrupted: stop the running studies too (their masks are not written)
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                with contextlib.suppress(Exception):
                    proc.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Dask:
    """``scheduler=ADDRESS``: the tasks go to an existing Dask distributed cluster."""

    def __init__(self, scheduler: Any) -> None:
        try:
            import distributed
        except ImportError:
            raise InputError(
                "--scheduler needs Dask distributed: pip install 'napari-sdnet[cluster]'"
            ) from None
        self._d = distributed
        self._own = False
        if isinstance(scheduler, distributed.Client):
            self.client = scheduler
        else:
            address = getattr(scheduler, "scheduler_address", scheduler)  # a cluster object
            kwargs: dict[str, Any] = {"timeout": "20s", "set_as_default": False}
            text = os.fspath(address) if isinstance(address, str | os.PathLike) else address
            if isinstance(text, str) and text.endswith(".json") and Path(text).is_file():
                kwargs["scheduler_file"] = text
                address = None
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.client = distributed.Client(address, **kwargs)
            except (OSError, TimeoutError, ValueError) as exc:
                raise InputError(
                    f"cannot reach the Dask scheduler at {text}: {_one_line(exc)}"
                ) from None
            self._own = True
        self._threads_at = 0.0
        self._threads = 0
        self.name = f"Dask cluster at {self.client.scheduler.address}"

    def total_threads(self) -> int:
        now = time.monotonic()
        if now - self._threads_at > 2.0:
            with contextlib.suppress(Exception):
                self._threads = sum(self.client.nthreads().values())
            self._threads_at = now
        return self._threads

    def window(self) -> int:
        return max(2, 2 * self.total_threads())

    def submit(self, task: dict, settings: dict) -> Any:
        key = f"sdnet-batch-{Path(task['mask']).name}-{uuid.uuid4().hex[:8]}"
        return self.client.submit(process_one, task, settings, key=key, pure=False)

    def wait(self, futures: set) -> set:
        # polled: distributed.wait needs a default client, and this one may not be it
        deadline = time.monotonic() + 1.0
        while True:
            done = {f for f in futures if f.done()}
            if done or time.monotonic() > deadline:
                return done
            time.sleep(0.02)

    def crashed(self, exc: BaseException) -> bool:
        return False  # Dask retries tasks whose worker died, then raises KilledWorker

    def restart(self) -> None:
        pass

    def close(self, cancel: bool) -> None:
        if self._own:
            with contextlib.suppress(Exception):
                self.client.close(timeout=5)


# --------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------
@dataclass
class BatchSummary:
    """What a batch did. ``rows`` are the CSV rows, in input order."""

    outdir: Path
    csv_path: Path
    engine: str
    total: int
    segmented: int
    skipped: int
    failed: int
    seconds: float
    rows: list[dict[str, Any]] = field(repr=False, default_factory=list)

    @property
    def errors(self) -> list[tuple[str, str]]:
        """``(file, error)`` of the inputs that failed."""
        return [(r["file"], r.get("error") or "") for r in self.rows if r["status"] == "error"]

    @property
    def studies_per_hour(self) -> float | None:
        """Inputs processed (segmented or failed) in this run per hour of wall time."""
        n = self.segmented + self.failed
        return None if not n or self.seconds <= 0 else 3600.0 * n / self.seconds

    def text(self) -> str:
        rate = self.studies_per_hour
        speed = "" if rate is None else f" in {self.seconds:.1f} s ({rate:.0f} studies/hour)"
        return (
            f"{self.total} input(s): {self.segmented} segmented{speed}, {self.skipped} skipped "
            f"(done before), {self.failed} failed; {self.engine}"
        )


def run_batch(
    inputs: Iterable[str | os.PathLike[str]],
    outdir: str | os.PathLike[str],
    *,
    model: str = "bundled",
    device: str = "auto",
    workers: int = 1,
    threads: int | None = None,
    scheduler: Any = None,
    binary: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> BatchSummary:
    """Segment and measure every input into ``outdir``; see the module docstring.

    Args:
        inputs: NIfTI files, DICOM series folders, folders and glob patterns
            (:func:`expand_inputs`).
        outdir: output folder (created if needed).
        model: ``"bundled"`` or a ``.safetensors`` path (on a cluster: a path the workers see).
        device: for each worker (``auto``, ``cpu``, ``cuda``, ...).
        workers: local worker processes (1: in this process). Ignored with ``scheduler``.
        threads: torch threads per worker (default: the cores shared out among the local
            workers; on a cluster, the worker's cores per Dask thread).
        scheduler: a Dask scheduler address (``tcp://host:8786``), a scheduler file
            (``*.json``), a ``distributed.Client`` or a cluster object (``LocalCluster``,
            ``dask_jobqueue.SLURMCluster``, ...).
        binary: masks with myocardium = 1 (default 2, ACDC).
        overwrite: redo every input, replacing existing masks (also: another model).
        progress: ``progress(done, total)`` in inputs (skipped ones count as done).
        on_row: called with each new row (segmented or failed) as it arrives.

    Returns:
        A :class:`BatchSummary`. Failed inputs are in it (and in the CSV), not raised.

    Raises:
        InputError: no inputs, an unwritable ``outdir``, another batch writing there, or a
            folder made with another model (pass ``overwrite``).
        CheckpointError: a model that cannot be loaded (it would fail every input).
    """
    from napari_sdnet.io.files import check_destination

    started = time.perf_counter()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise InputError(f"threads must be a positive integer, got {threads!r}")
    out = Path(outdir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file; the output must be a folder")
    if not out.parent.is_dir():
        raise InputError(f"{out}: folder {out.parent} does not exist")
    paths = expand_inputs(inputs, out)
    model_arg, model_sha = _model_identity(model)
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the folder ({exc.strerror or exc})") from None
    csv_path = out / CSV_NAME
    check_destination(csv_path, overwrite=True, what="CSV")
    state = out / STATE_DIR
    state.mkdir(exist_ok=True)

    with _locked(state):
        manifest_path = state / "batch.json"
        manifest = {
            "format": 1,
            "model": model_arg,
            "model_sha256": model_sha,
            "binary": bool(binary),
        }
        journal_path = state / "journal.jsonl"
        if manifest_path.is_file() and not overwrite:
            try:
                before = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                before = {}
            same = before.get("model_sha256") == model_sha and bool(before.get("binary")) == bool(
                binary
            )
            if before and not same:
                raise InputError(
                    f"{out}: holds masks made with another model or --binary setting "
                    f"({before.get('model')}); use another folder or pass --overwrite to redo all"
                )
        if overwrite and journal_path.exists():
            journal_path.unlink()
        from napari_sdnet.io.files import atomic_write_text

        atomic_write_text(manifest_path, json.dumps(manifest, indent=1) + "\n", overwrite=True)
        _remove_stale_temporaries(out)

        journal = _Journal(journal_path)
        keys = [str(p) for p in paths]
        # names given before stay with their inputs; new inputs avoid every name in use
        names = mask_names(paths, {Path(k): v for k, v in journal.known.items()})
        rows: list[dict[str, Any] | None] = [None] * len(paths)
        pending: deque[int] = deque()
        skipped = 0
        for i, (p, name) in enumerate(zip(paths, names, strict=True)):
            rec = journal.records.get(keys[i])
            mask = out / name
            if (
                rec is not None
                and not overwrite
                and rec.get("row", {}).get("status") == "ok"
                and rec.get("signature") == _signature(p)
                and rec.get("mask") == name
                and mask.is_file()
            ):
                rows[i] = dict(rec["row"])
                skipped += 1
                continue
            if mask.exists() and not overwrite and keys[i] not in journal.known:
                rows[i] = {
                    "file": keys[i],
                    "mask": name,
                    "status": "error",
                    "error": f"{mask}: exists and was not written by this batch; "
                    "refusing to overwrite (pass --overwrite)",
                }
                continue
            pending.append(i)
        settings = {
            "model": model_arg,
            "device": device,
            "binary": bool(binary),
            "threads": threads,
        }
        total = len(paths)
        done_count = total - len(pending)
        if progress is not None:
            progress(done_count, total)

        engine: Any
        if not pending:
            engine = None
            engine_name = "nothing to do"
        elif scheduler is not None:
            engine = _Dask(scheduler)
        elif workers == 1 or len(pending) == 1:
            if threads is not None:
                _set_threads(threads)
            engine = _InProcess()
        else:
            n = min(workers, len(pending))
            per = threads or max(1, (os.cpu_count() or 1) // n)
            settings["threads"] = per
            engine = _LocalPool(n, per)
        engine_name = engine.name if engine is not None else "nothing to do"

        segmented = failed = 0
        last_csv = time.monotonic()

        def current_rows() -> list[dict[str, Any]]:
            return [
                r if r is not None else {"file": keys[i], "mask": names[i], "status": "pending"}
                for i, r in enumerate(rows)
            ]

        journal.open()
        interrupted = True
        try:
            inflight: dict[Any, tuple[int, bool]] = {}  # future -> (input, submitted alone)
            suspects: deque[int] = deque()  # in flight when a local worker process died
            broken = False
            returned = 0  # results that came back from a worker
            signatures: dict[int, list[int] | None] = {}
            while pending or suspects or inflight:
                if broken and not inflight:
                    engine.restart()
                    broken = False
                # fill the window; suspects of a crash are retried one at a time
                while not broken and not any(a for _, a in inflight.values()):
                    if suspects:
                        if inflight:
                            break
                        i, alone = suspects.popleft(), True
                    elif pending and len(inflight) < engine.window():
                        i, alone = pending.popleft(), False
                    else:
                        break
                    journal.append(
                        {
                            "event": "start",
                            "input": keys[i],
                            "mask": names[i],
                            "t": round(time.time(), 3),
                        }
                    )
                    journal.known[keys[i]] = names[i]
                    # a mask there now is this batch's own (foreign ones were refused above)
                    task = {"input": keys[i], "mask": str(out / names[i]), "overwrite": True}
                    signatures[i] = _signature(paths[i])  # as it was when it was read
                    inflight[engine.submit(task, settings)] = (i, alone)
                for fut in engine.wait(set(inflight)):
                    i, alone = inflight.pop(fut)
                    try:
                        row = fut.result()
                    except Exception as exc:  # the worker failed, not process_one
                        if engine.crashed(exc) and not alone:
                            broken = True
                            suspects.append(i)
                            continue
                        if engine.crashed(exc):
                            broken = True
                            if not returned:  # no worker process ever got a study done
                                raise InputError(
                                    "the local worker processes die before finishing any study "
                                    "(out of memory? A Python script that calls run_batch "
                                    "needs `if __name__ == '__main__':`)"
                                ) from None
                            message = (
                                "the worker process died while segmenting it (out of "
                                "memory, or a crash in a library)"
                            )
                        else:
                            message = _one_line(exc)
                        row = {
                            "file": keys[i],
                            "mask": names[i],
                            "status": "error",
                            "error": message,
                        }
                    returned += 1
                    if "fatal" in row:
                        raise CheckpointError(row["fatal"])
                    rows[i] = row
                    journal.append(
                        {
                            "event": "done",
                            "input": keys[i],
                            "mask": names[i],
                            "signature": signatures.get(i),
                            "row": row,
                        }
                    )
                    if row["status"] == "ok":
                        segmented += 1
                    else:
                        failed += 1
                    done_count += 1
                    if progress is not None:
                        progress(done_count, total)
                    if on_row is not None:
                        on_row(row)
                if time.monotonic() - last_csv > CSV_EVERY_S:
                    with contextlib.suppress(SDNetError):
                        _write_csv(csv_path, current_rows(), rescue=False)
                    last_csv = time.monotonic()
            interrupted = False
        finally:
            journal.close()
            if engine is not None:
                engine.close(cancel=interrupted)
            if interrupted:  # keep what was done
                with contextlib.suppress(Exception):
                    _write_csv(csv_path, current_rows(), rescue=False)
        final_rows = current_rows()
        written = _write_csv(csv_path, final_rows, rescue=True)
    return BatchSummary(
        outdir=out,
        csv_path=written,
        engine=engine_name,
        total=total,
        segmented=segmented,
        skipped=skipped,
        failed=sum(1 for r in final_rows if r["status"] == "error"),
        seconds=time.perf_counter() - started,
        rows=final_rows,
    )
