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
import csv
import glob
import hashlib
import io
import json
import math
import os
import sys
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

#: The measurements table inside OUTDIR.
CSV_NAME = "measurements.csv"
#: Hidden folder inside OUTDIR with the journal, the manifest and the lock.
STATE_DIR = ".sdnet-batch"
#: Suffix of every mask: ``<stem>_seg.nii.gz``.
MASK_SUFFIX = "_seg.nii.gz"
#: Columns of ``measurements.csv``, in order. The volume columns come from
#: :meth:`napari_sdnet.cardiac.CardiacFunction.indices` (same names as ``measure --json``);
#: ``lv_ml`` / ``rv_ml`` / ``myocardium_ml`` are the volumes of a single 3D phase.
COLUMNS: tuple[str, ...] = (
    "file",
    "mask",
    "status",
    "error",
    "shape",
    "frames",
    "ed_frame",
    "es_frame",
    "lv_edv_ml",
    "lv_esv_ml",
    "lv_sv_ml",
    "lv_ef_percent",
    "rv_edv_ml",
    "rv_esv_ml",
    "rv_sv_ml",
    "rv_ef_percent",
    "lv_mass_g",
    "myocardium_ed_ml",
    "myocardium_es_ml",
    "lv_ml",
    "rv_ml",
    "myocardium_ml",
    "seconds",
    "worker",
    "worker_peak_mb",
    "warnings",
)
#: Rewrite measurements.csv at most this often during a run (seconds); always at the end.
CSV_EVERY_S = 30.0
_GLOB_CHARS = set("*?[")


# --------------------------------------------------------------------------------------------
# inputs and names
# --------------------------------------------------------------------------------------------
def _is_label_name(path: Path) -> bool:
    from napari_sdnet.io.nifti import _has_label_name

    return _has_label_name(path)


def _nifti_images_under(folder: Path, exclude: Path | None) -> list[Path]:
    from napari_sdnet.io.nifti import is_nifti_path

    found = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (exclude is None or here / d != exclude)
        )
        for name in sorted(files):
            p = here / name
            if not name.startswith(".") and is_nifti_path(p) and not _is_label_name(p):
                found.append(p)
    return found


def _image_match(path: Path) -> bool:
    """A pattern's match worth taking: a folder, or a NIfTI (not a label map) / DICOM file."""
    from napari_sdnet.io.dicom import is_dicom_file
    from napari_sdnet.io.nifti import is_nifti_path

    if path.name.startswith("."):
        return False
    if path.is_dir():
        return True
    if is_nifti_path(path):
        return not _is_label_name(path)
    return is_dicom_file(path)


def _expand_one(path: Path, exclude: Path | None) -> list[Path]:
    from napari_sdnet.io.dicom import looks_like_dicom_folder

    if path.is_dir():
        images = _nifti_images_under(path, exclude)
        if images:
            return images
        if looks_like_dicom_folder(path):
            return [path]
        return []
    return [path]  # a file (read later; a bad one becomes an error row)


def expand_inputs(
    inputs: Iterable[str | os.PathLike[str]], outdir: str | os.PathLike[str] | None = None
) -> list[Path]:
    """The studies named by ``inputs`` (files, folders, glob patterns), absolute, in order.

    A file is taken as it is (an unreadable one becomes an error row later). A folder gives
    the NIfTI images under it (recursively, sorted; hidden names and label-map names such as
    ``*_gt``/``*_seg`` are skipped; the NIfTI files of a folder come before those of its
    subfolders), or, when it holds no NIfTI but DICOM files, itself as one DICOM series. A
    pattern with ``*``, ``?`` or ``[`` that is not an existing path is expanded (sorted; ``**``
    spans folders; label-map names skipped as in folders) and each match is treated as above.
    Duplicates are dropped; anything inside ``outdir`` is skipped.

    Raises :class:`InputError` for a pattern that matches no image, a folder named
    explicitly that holds none, or no input at all.
    """
    out = None if outdir is None else Path(outdir).absolute()
    seen: set[Path] = set()
    result: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        p = Path(text).expanduser()
        if not p.exists() and _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                raise InputError(f"no file or folder matches {text!r}")
            # like a folder scan, a pattern keeps images only: no label maps (*_gt, *_seg, ...),
            # hidden or other files, nor folders without images
            candidates = [Path(m) for m in matches if _image_match(Path(m))]
            pattern = True
        else:
            candidates = [p]
            pattern = False
        found_here = 0
        for c in candidates:
            found = _expand_one(c, out)
            if not found and c.is_dir() and not pattern:
                raise InputError(f"{c}: folder holds no NIfTI image and no DICOM file")
            found_here += len(found)
            for f in found:
                a = f.absolute()
                if a in seen or (out is not None and out in a.parents):
                    continue
                seen.add(a)
                result.append(a)
        if pattern and not found_here:
            raise InputError(f"{text!r} matches no NIfTI image and no DICOM folder")
    if not result:
        raise InputError("no input study found")
    return result


def _base_stem(path: Path) -> str:
    from napari_sdnet.io.nifti import is_nifti_path, nifti_stem

    if path.is_dir():
        return path.name or "study"
    if is_nifti_path(path):
        return nifti_stem(path)
    if path.suffix.lower() == ".dcm" or not path.suffix:
        return path.parent.name or path.stem  # a DICOM file stands for its series (folder)
    return path.stem


def _clean(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in name).strip(".") or "x"


def mask_names(inputs: Sequence[Path], taken: dict[Path, str] | None = None) -> list[str]:
    """The mask file name of each input: ``<stem>_seg.nii.gz``, with the parent folder names
    prepended (``<parent>_<stem>_seg.nii.gz``, then the grandparent, ...) where stems clash.

    ``taken`` maps inputs to names given earlier (by the journal of a previous run): they keep
    them, and new inputs avoid them, so a rerun with more inputs never renames a done mask.
    """
    taken = dict(taken or {})
    names: dict[Path, str] = {p: taken[p] for p in inputs if p in taken}
    used = {n.lower() for n in taken.values()}
    todo = [p for p in inputs if p not in names]
    depth = {p: 0 for p in todo}

    def candidate(p: Path) -> str:
        parents = [q.name for q in p.parents][: depth[p]]
        parts = [*reversed(parents), _base_stem(p)]
        return _clean("_".join(x for x in parts if x)) + MASK_SUFFIX

    while todo:
        groups: dict[str, list[Path]] = {}
        for p in todo:
            groups.setdefault(candidate(p).lower(), []).append(p)
        nxt = []
        for key, members in groups.items():
            if len(members) == 1 and key not in used:
                names[members[0]] = candidate(members[0])
                used.add(key)
                continue
            for p in members:
                if depth[p] < len(p.parents) - 1:
                    depth[p] += 1
                    nxt.append(p)
                else:  # no more folders to tell them apart: number them
                    k = 2
                    base = candidate(p)[: -len(MASK_SUFFIX)]
                    while f"{base}-{k}{MASK_SUFFIX}".lower() in used:
                        k += 1
                    names[p] = f"{base}-{k}{MASK_SUFFIX}"
                    used.add(names[p].lower())
        todo = nxt
    return [names[p] for p in inputs]


def _signature(path: Path) -> list[int] | None:
    """``[size, mtime_ns]`` of a file (a folder: its own ``[0, mtime_ns]``); None if missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [0 if path.is_dir() else int(st.st_size), int(st.st_mtime_ns)]


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
            labels = seg.mask if settings.get("binary") else api.to_acdc_labels(seg.mask)
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


def _model_identity(model: str) -> tuple[str, str]:
    """``(model argument for the workers, sha256 of the file)``; fails fast if missing."""
    from napari_sdnet.api import bundled_model_path

    if model.strip().lower() == "bundled":
        path = bundled_model_path()
        if not path.is_file():
            raise CheckpointError(
                "no bundled model is installed yet; pass a model file (.safetensors)"
            )
        arg = "bundled"
    else:
        path = Path(model).expanduser().absolute()
        if path.is_dir():
            raise CheckpointError(f"{path} is a folder; pass a .safetensors model file")
        if not path.is_file():
            raise CheckpointError(f"{path}: model file not found")
        arg = str(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return arg, digest.hexdigest()


class _Journal:
    """``OUTDIR/.sdnet-batch/journal.jsonl``: one JSON line per event, appended and fsync'ed.

    A line cut short (power loss) is ignored when read back. Only the driver writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}  # input -> last "done" record
        self.known: dict[str, str] = {}  # input -> mask name (any event)
        if path.is_file():
            with open(path, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if not isinstance(rec, dict) or "input" not in rec or "mask" not in rec:
                        continue
                    self.known[rec["input"]] = rec["mask"]
                    if rec.get("event") == "done":
                        self.records[rec["input"]] = rec
        self._fd: int | None = None

    def open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict[str, Any]) -> None:
        assert self._fd is not None
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def _locked(state: Path):
    import fcntl

    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(
                f"{state.parent}: another napari-sdnet batch is writing to this folder"
            ) from None
        yield
    finally:
        os.close(fd)


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in COLUMNS})
    return buf.getvalue()


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], rescue: bool) -> Path:
    from napari_sdnet.io.files import atomic_write_text, write_or_rescue

    text = _csv_text(rows)
    if not rescue:
        return atomic_write_text(path, text, overwrite=True)

    def write(tmp: Path) -> None:
        with open(tmp, "x", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    return write_or_rescue(path, write, overwrite=True)


def _remove_stale_temporaries(outdir: Path) -> None:
    """Temporary files of masks/CSVs whose writer was killed (we hold the lock)."""
    for p in outdir.glob(".*.sdnet-tmp-*"):
        with contextlib.suppress(OSError):
            p.unlink()


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
