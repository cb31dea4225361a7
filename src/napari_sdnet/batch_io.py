"""The files of a batch (:mod:`napari_sdnet.batch`): which studies the inputs name, the mask
name of each, the journal that makes a batch resumable, its lock and ``measurements.csv``."""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from napari_sdnet.errors import CheckpointError, InputError

__all__ = [
    "COLUMNS",
    "CSV_NAME",
    "MASK_SUFFIX",
    "STATE_DIR",
    "expand_inputs",
    "mask_names",
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
