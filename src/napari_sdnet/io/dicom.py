"""Reading short-axis cine MR DICOM series into napari axis order, keeping the scanner geometry.

pydicom + NumPy + nibabel only: this module never imports napari or Qt.

What is read
------------
A folder (searched recursively), a list of DICOM files, or one DICOM file (then: the series it
belongs to, among the files of its folder). Files without the DICM preamble and DICOM files
pydicom cannot parse are skipped with one warning that counts them and names the first few.
Files are grouped by SeriesInstanceUID. Only
single-frame cross-sectional image series (MR, CT, ...) are volumes; structured reports,
segmentations, presentation states, secondary captures, ... are skipped and named.

Within a series

* slices are ordered by ImagePositionPatient projected on the slice normal (the cross product
  of the two ImageOrientationPatient vectors), ascending; never by file name or InstanceNumber;
* phases (images at the same position) are ordered by TriggerTime (then InstanceNumber);
* the array is ``(t, z, y, x)`` for a cine series (several phases), ``(z, y, x)`` otherwise,
  ``y`` = DICOM rows, ``x`` = columns; values have RescaleSlope/Intercept applied (float32);
* spacing: PixelSpacing (row, column) in mm, the slice spacing along the slice normal measured
  from the positions (mm; the plane spacing, not the distance between slice origins), the
  frame interval (ms) = the median over slice positions of their mean TriggerTime step.

Geometry
--------
:class:`~napari_sdnet.io.nifti.Geometry` with the NIfTI (RAS) voxel-to-world affine of the
array, exactly what a standard DICOM to NIfTI conversion gives: NIfTI voxel ``(i, j, k)`` is
DICOM column ``i``, row ``j`` of slice ``k``; columns of the affine are the row direction times
the column spacing, the column direction times the row spacing, and the slice step vector,
with ImagePositionPatient of the first slice as origin, converted from DICOM's LPS to RAS
(first two world axes negated). A NIfTI header (qform and sform code "scanner", units mm and
ms, the frame interval in pixdim[4]) is built too, so ``write_nifti`` writes masks that lie at
the same scanner positions as the DICOM pixels. Slice origins may lie at most 1 degree off the
slice normal (rounding in real headers); the sform keeps that slight shear exactly, the qform
(which cannot hold a shear) has the slice step projected on the normal.

Refused (:class:`~napari_sdnet.errors.InputError`, one line, nothing half-opened): a folder
without DICOM, only non-image objects, mixed orientations, pixel spacings or image sizes,
uneven slice spacing or missing slices, a sheared stack (slice origins advancing more than 1
degree off the slice normal, e.g. gantry tilt), slice positions with different numbers of phases
(missing phases), two images at the same position and trigger time, multi-frame (enhanced)
objects, and compressed transfer syntaxes that no installed pydicom decoder handles (the
message names what to install).
"""

from __future__ import annotations

import datetime
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_sdnet.errors import InputError
from napari_sdnet.io.dicom_geometry import (
    _Header,
    _int_or_none,
    _Layout,
    _layout,
    _Series,
    _series_name,
)
from napari_sdnet.io.nifti import Geometry, NiftiVolume

__all__ = [
    "DICOM_METADATA_KEY",
    "DicomSeriesInfo",
    "DicomVolume",
    "dicom_files_in",
    "is_dicom_file",
    "looks_like_dicom_folder",
    "read_dicom",
    "read_dicom_all",
]

#: napari layer metadata key holding :meth:`DicomSeriesInfo.to_metadata`.
DICOM_METADATA_KEY = "sdnet_dicom"
#: At most this many files are looked at in a folder (a guard against opening a whole archive).
MAX_FILES = 20000


# SOP classes of objects that are not cross-sectional images, by the start of their UID
_NON_IMAGE_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.88.": "structured report",
    "1.2.840.10008.5.1.4.1.1.66": "segmentation/registration/raw data",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
    "1.2.840.10008.5.1.4.1.1.481.": "radiotherapy object",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.9.": "waveform",
    "1.2.840.10008.1.3.10": "media directory (DICOMDIR)",
}
# what to install for a compressed transfer syntax, by pydicom plugin name
_PLUGIN_INSTALL = {
    "pylibjpeg": "pylibjpeg with pylibjpeg-libjpeg (JPEG), pylibjpeg-openjpeg (JPEG 2000) or "
    "pylibjpeg-rle",
    "gdcm": "python-gdcm",
    "pillow": "pillow",
    "pyjpegls": "pyjpegls",
}


# --------------------------------------------------------------------------------------------
# data classes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DicomSeriesInfo:
    """Where a volume came from: the series and, per array position, its source image.

    ``files`` and ``sop_instance_uids`` are nested ``[t][z]`` (a 3D volume has one phase).
    """

    folder: str
    series_instance_uid: str
    study_instance_uid: str
    series_number: int | None
    series_description: str
    modality: str
    files: tuple[tuple[str, ...], ...]
    sop_instance_uids: tuple[tuple[str, ...], ...]
    trigger_times: tuple[tuple[float, ...], ...] | None = None

    @property
    def n_phases(self) -> int:
        return len(self.files)

    @property
    def n_slices(self) -> int:
        return len(self.files[0]) if self.files else 0

    def label(self) -> str:
        return _series_name(self.series_number, self.series_description, self.modality)

    def to_metadata(self) -> dict[str, Any]:
        """A JSON-friendly dict for napari layer metadata."""
        return {
            "folder": self.folder,
            "series_instance_uid": self.series_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "series_number": self.series_number,
            "series_description": self.series_description,
            "modality": self.modality,
            "files": [list(row) for row in self.files],
            "sop_instance_uids": [list(row) for row in self.sop_instance_uids],
            "trigger_times": None
            if self.trigger_times is None
            else [list(row) for row in self.trigger_times],
        }

    @classmethod
    def from_metadata(cls, d: Mapping[str, Any]) -> DicomSeriesInfo:
        """Inverse of :meth:`to_metadata`; raises :class:`InputError` for a malformed dict."""
        try:
            times = d.get("trigger_times")
            return cls(
                folder=str(d["folder"]),
                series_instance_uid=str(d["series_instance_uid"]),
                study_instance_uid=str(d.get("study_instance_uid", "")),
                series_number=d.get("series_number"),
                series_description=str(d.get("series_description", "")),
                modality=str(d.get("modality", "")),
                files=tuple(tuple(str(f) for f in row) for row in d["files"]),
                sop_instance_uids=tuple(
                    tuple(str(u) for u in row) for row in d["sop_instance_uids"]
                ),
                trigger_times=None
                if times is None
                else tuple(tuple(float(v) for v in row) for row in times),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed DICOM source metadata: {exc!r}") from exc


@dataclass
class DicomVolume(NiftiVolume):
    """A :class:`~napari_sdnet.io.nifti.NiftiVolume` read from a DICOM series.

    ``path`` is the folder (or the file given); ``dicom`` says which images it came from
    (needed to write a DICOM Segmentation that references them).
    """

    dicom: DicomSeriesInfo | None = None


# --------------------------------------------------------------------------------------------
# finding files
# --------------------------------------------------------------------------------------------
def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with the DICOM preamble (``DICM`` at byte 128). Never raises."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _walk_files(folder: Path, limit: int) -> Iterable[Path]:
    count = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            count += 1
            if count > limit:
                return
            yield Path(root) / name


def looks_like_dicom_folder(path: str | os.PathLike[str], probe: int = 64) -> bool:
    """Whether a folder holds DICOM files (checks the first ``probe`` files). Never raises."""
    try:
        p = Path(path)
        if not p.is_dir():
            return False
        return any(is_dicom_file(f) for f in _walk_files(p, probe))
    except OSError:
        return False


def dicom_files_in(folder: str | os.PathLike[str]) -> list[Path]:
    """The DICOM files (by preamble) under ``folder``, recursively, in a stable order."""
    return _sort_files(folder)[0]


def _sort_files(folder: str | os.PathLike[str]) -> tuple[list[Path], list[Path]]:
    """``(DICOM files, other files)`` under ``folder`` (hidden files are neither)."""
    folder = Path(folder)
    files: list[Path] = []
    others: list[Path] = []
    for f in _walk_files(folder, MAX_FILES + 1):
        (files if is_dicom_file(f) else others).append(f)
    if len(files) > MAX_FILES:
        raise InputError(
            f"{folder}: more than {MAX_FILES} DICOM files; open one series' folder instead"
        )
    return files, others


def _names(paths: Sequence[Path], root: Path, first: int = 3) -> str:
    """``"a.txt, sub/b, c.json, ..."``: the first few paths relative to ``root``."""
    shown = []
    for p in paths[:first]:
        try:
            shown.append(str(p.relative_to(root)))
        except ValueError:
            shown.append(p.name)
    return ", ".join(shown) + (", ..." if len(paths) > first else "")


def _warn_skipped_files(
    where: Path, no_preamble: Sequence[Path], unreadable: Sequence[tuple[Path, str]]
) -> None:
    """One warning line naming the files that were not read (count + the first few names)."""
    parts = []
    if no_preamble:
        parts.append(
            f"{len(no_preamble)} file(s) without the DICM preamble (not DICOM files): "
            f"{_names(no_preamble, where)}"
        )
    if unreadable:
        why = unreadable[0][1]
        parts.append(
            f"{len(unreadable)} DICOM file(s) that cannot be parsed: "
            f"{_names([p for p, _ in unreadable], where)} ({why})"
        )
    if parts:
        warnings.warn(f"{where}: skipped {'; '.join(parts)}", UserWarning, stacklevel=5)


# --------------------------------------------------------------------------------------------
# scanning headers
# --------------------------------------------------------------------------------------------
class _quiet_pydicom:
    """Silence pydicom's warnings about invalid values (e.g. UIDs with leading zeros, which
    real archives contain) while reading."""

    def __enter__(self) -> None:
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.filterwarnings("ignore", message=r"Invalid value for VR")
        warnings.filterwarnings("ignore", message=r".*(does not|doesn't) conform", module="pydicom")
        warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
        warnings.filterwarnings("ignore", message=r"The string .* intended person name")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def _read_headers(
    files: Sequence[Path], failed: list[tuple[Path, str]] | None = None
) -> list[_Header]:
    """The headers of ``files``; those that do not parse are left out (and added to ``failed``
    as ``(path, reason)`` when given)."""
    import pydicom

    out = []
    with _quiet_pydicom():
        for f in files:
            try:
                ds = pydicom.dcmread(str(f), stop_before_pixels=True)
            except Exception as exc:  # InvalidDicomError, OSError, NotImplementedError (VR), ...
                if failed is not None:
                    text = str(exc).splitlines()[0] if str(exc) else ""
                    failed.append((f, f"{type(exc).__name__}: {text}"[:120].rstrip(": ")))
                continue
            out.append(_Header(f, ds))
    return out


def _group_series(headers: Sequence[_Header]) -> list[_Series]:
    groups: dict[str, _Series] = {}
    seen_sop: set[str] = set()
    for h in headers:
        sop = str(h.ds.get("SOPInstanceUID", "") or "")
        if sop and sop in seen_sop:
            continue  # the same instance twice (a copy): keep the first
        seen_sop.add(sop)
        uid = str(h.ds.get("SeriesInstanceUID", "") or "(no series UID)")
        groups.setdefault(uid, _Series(uid)).headers.append(h)
    return list(groups.values())


def _non_image_reason(series: _Series) -> str | None:
    """Why a series is not a volume this reader opens, or None when it is an image series."""
    import pydicom.uid

    ds = series.first
    sop = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    for prefix, what in _NON_IMAGE_PREFIXES.items():
        if sop.startswith(prefix):
            name = pydicom.uid.UID(sop).name if sop else what
            return f"{name} ({what}, not an image series)"
    modality = str(ds.get("Modality", "") or "")
    if modality in ("SR", "SEG", "PR", "KO", "REG", "RTSTRUCT", "DOC"):
        return f"modality {modality} (not an image series)"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return "colour images (not a greyscale MR series)"
    if _int_or_none(ds.get("NumberOfFrames")) not in (None, 1):
        return "multi-frame (enhanced) objects, which this reader does not open yet"
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient") if k not in ds]
    if "Rows" not in ds or "Columns" not in ds:
        return "no image data (not an image series)"
    if missing:
        return f"no {' or '.join(missing)} (images without scanner geometry)"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return "localizer (scout) images"
    return None


# --------------------------------------------------------------------------------------------
# pixel data
# --------------------------------------------------------------------------------------------
def _check_decodable(series: _Series, where: Path) -> None:
    """Refuse a compressed transfer syntax no installed decoder handles, naming what to install."""
    from pydicom.pixels import get_decoder

    syntaxes = {}
    for h in series.headers:
        meta = getattr(h.ds, "file_meta", None)
        uid = meta.get("TransferSyntaxUID") if meta is not None else None
        if uid is not None:
            syntaxes.setdefault(str(uid), h.path)
    for uid_text in syntaxes:
        from pydicom.uid import UID

        uid = UID(uid_text)
        if not uid.is_compressed:
            continue
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            raise InputError(
                f"{where}: {series.name()} is compressed as {uid.name or uid} ({uid}), which "
                "pydicom cannot decode at all; convert it (e.g. with dcmdjpeg or gdcmconv --raw)"
            ) from None
        if decoder.is_available:
            continue
        plugins = [str(m).split(" - ")[0].strip() for m in decoder.missing_dependencies]
        install = " or ".join(dict.fromkeys(_PLUGIN_INSTALL.get(p, p) for p in plugins))
        raise InputError(
            f"{where}: {series.name()} is compressed as {uid.name} ({uid}) and no installed "
            f"decoder reads it; install {install or 'a pydicom pixel data plugin'} "
            "(pip install ...)"
        )


def _pixels(layout: _Layout, where: Path) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_rescale

    n_t, n_z = len(layout.grid), len(layout.grid[0])
    out = np.empty((n_t, n_z, layout.rows, layout.columns), dtype=np.float32)
    with _quiet_pydicom():
        for t in range(n_t):
            for z in range(n_z):
                h = layout.grid[t][z]
                try:
                    ds = pydicom.dcmread(str(h.path))
                    arr = ds.pixel_array
                    arr = apply_rescale(arr, ds)
                except Exception as exc:  # decoding errors come in many types
                    raise InputError(
                        f"{where}: cannot read the pixels of {h.path.name} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                    ) from exc
                if arr.shape != (layout.rows, layout.columns):
                    raise InputError(
                        f"{where}: {h.path.name} holds pixels of shape {arr.shape}, expected "
                        f"{(layout.rows, layout.columns)}"
                    )
                out[t, z] = arr
    return out


def _nifti_header(affine: np.ndarray, file_shape: tuple[int, ...], dt: float | None) -> bytes:
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(file_shape)
    hdr.set_data_dtype(np.float32)
    # the sform keeps the affine as it is (slice origins exactly where DICOM puts them, even
    # with the slight shear _layout accepts); the qform cannot hold a shear, so it gets the
    # slice step projected on the slice normal instead of nibabel's silent approximation
    qform = affine.copy()
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    normal /= np.linalg.norm(normal)
    qform[:3, 2] = normal * float(affine[:3, 2] @ normal)
    hdr.set_qform(qform, code="scanner")
    hdr.set_sform(affine, code="scanner")
    zooms = [float(np.linalg.norm(qform[:3, k])) for k in range(3)]
    if dt is not None:
        zooms.append(float(dt))
    hdr.set_zooms(zooms[: len(file_shape)])
    hdr.set_xyzt_units("mm", "msec" if dt is not None else "unknown")
    hdr["descrip"] = b"napari-sdnet from DICOM"
    return hdr.binaryblock


def _volume(layout: _Layout, where: Path, source: Path) -> DicomVolume:
    _check_decodable(layout.series, where)
    data = _pixels(layout, where)
    n_t = data.shape[0]
    dt = layout.spacing[0] if n_t > 1 else None
    if n_t == 1:
        data = data[0]
    file_shape = tuple(reversed(data.shape))
    geometry = Geometry(
        affine=layout.affine,
        spacing=layout.spacing,
        file_shape=file_shape,
        time_unit="msec" if n_t > 1 else "unknown",
        spatial_unit="mm",
        header=_nifti_header(layout.affine, file_shape, dt),
    )
    first = layout.series.first
    info = DicomSeriesInfo(
        folder=str(source),
        series_instance_uid=layout.series.uid,
        study_instance_uid=str(first.get("StudyInstanceUID", "") or ""),
        series_number=_int_or_none(first.get("SeriesNumber")),
        series_description=str(first.get("SeriesDescription", "") or ""),
        modality=str(first.get("Modality", "") or ""),
        files=tuple(tuple(str(h.path) for h in row) for row in layout.grid),
        sop_instance_uids=tuple(
            tuple(str(h.ds.SOPInstanceUID) for h in row) for row in layout.grid
        ),
        trigger_times=None
        if layout.trigger_times is None
        else tuple(tuple(float(v) for v in row) for row in layout.trigger_times),
    )
    return DicomVolume(data=data, geometry=geometry, path=source, is_labels=False, dicom=info)


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------
def _scan(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]):
    """``(where, files, series list, wanted series UID or None)`` for a folder, file or list."""
    wanted = None
    others: list[Path] = []
    folder = None
    if isinstance(path, str | os.PathLike):
        where = Path(path)
        if not where.exists():
            raise InputError(f"{where}: not found")
        if where.is_dir():
            folder = where
            files, others = _sort_files(where)
            if not files:
                raise InputError(f"{where}: no DICOM files in this folder")
        else:
            if not is_dicom_file(where):
                raise InputError(f"{where}: not a DICOM file (no DICM preamble)")
            head = _read_headers([where])
            if not head:
                raise InputError(f"{where}: not a readable DICOM file")
            wanted = str(head[0].ds.get("SeriesInstanceUID", "") or "(no series UID)")
            folder = where.parent
            files, others = _sort_files(folder)
    else:
        files = [Path(p) for p in path]
        if not files:
            raise InputError("no DICOM files given")
        where = files[0].parent
        missing = [f for f in files if not is_dicom_file(f)]
        if missing:
            raise InputError(f"{missing[0]}: not a DICOM file (no DICM preamble)")
    failed: list[tuple[Path, str]] = []
    headers = _read_headers(files, failed)
    if not headers:
        example = f" (e.g. {failed[0][0].name}: {failed[0][1]})" if failed else ""
        raise InputError(f"{where}: no readable DICOM files{example}")
    _warn_skipped_files(folder or where, others, failed)
    return where, _group_series(headers), wanted


def _describe_skipped(skipped: Sequence[tuple[_Series, str]]) -> str:
    return "; ".join(f"{s.name()}: {why}" for s, why in skipped)


def read_dicom(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    series_uid: str | None = None,
) -> DicomVolume:
    """Read the cine (or single-phase) image series in a folder, a DICOM file's series, or the
    series formed by a list of files; see the module docstring.

    In a folder with several series, the one image series with several phases is read (else
    the one image series); the others are named in a warning. Several candidates is an error
    (give one of the wanted series' files, or ``series_uid``).
    """
    with _quiet_pydicom():
        return _read_dicom(path, series_uid)


def _read_dicom(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    series_uid: str | None,
) -> DicomVolume:
    where, series, wanted = _scan(path)
    wanted = series_uid or wanted
    if wanted is not None:
        chosen = [s for s in series if s.uid == wanted]
        if not chosen:
            raise InputError(f"{where}: no series with SeriesInstanceUID {wanted}")
        reason = _non_image_reason(chosen[0])
        if reason is not None:
            raise InputError(f"{where}: {chosen[0].name()} is {reason}")
        skipped = [(s, "another series") for s in series if s.uid != wanted]
        layout = _layout(chosen[0], where)
    else:
        images, skipped = [], []
        for s in series:
            reason = _non_image_reason(s)
            (skipped.append((s, reason)) if reason else images.append(s))
        if not images:
            raise InputError(f"{where}: no image series to open, only {_describe_skipped(skipped)}")
        if len(images) == 1:
            layout = _layout(images[0], where)
        else:
            layouts: list[_Layout] = []
            errors: list[tuple[_Series, str]] = []
            for s in images:
                try:
                    layouts.append(_layout(s, where))
                except InputError as exc:
                    errors.append((s, str(exc).split(": ", 1)[-1]))
            cine = [lay for lay in layouts if len(lay.grid) > 1] or layouts
            if len(cine) != 1:
                if not cine:
                    raise InputError(
                        f"{where}: none of its {len(images)} image series can be opened: "
                        f"{_describe_skipped(errors)}"
                    )
                names = ", ".join(lay.series.name() for lay in cine)
                raise InputError(
                    f"{where}: {len(cine)} image series ({names}); open one of them by giving "
                    "one of its files, or put each series in its own folder"
                )
            layout = cine[0]
            skipped += errors + [
                (lay.series, "not the cine series") for lay in layouts if lay is not layout
            ]
    if skipped and wanted is None:
        warnings.warn(
            f"{where}: opened {layout.series.name()}; skipped {_describe_skipped(skipped)}",
            UserWarning,
            stacklevel=2,
        )
    source = Path(path) if isinstance(path, str | os.PathLike) else where
    return _volume(layout, where, source)


def read_dicom_all(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> tuple[list[DicomVolume], list[str]]:
    """Every image series in a folder (or list of files) that forms a volume, and one message
    per series skipped (non-image objects, inconsistent series). Raises :class:`InputError`
    when nothing can be opened."""
    with _quiet_pydicom():
        return _read_dicom_all(path)


def _read_dicom_all(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> tuple[list[DicomVolume], list[str]]:
    where, series, _ = _scan(path)
    layouts: list[_Layout] = []
    skipped: list[tuple[_Series, str]] = []
    for s in series:
        reason = _non_image_reason(s)
        if reason is not None:
            skipped.append((s, reason))
            continue
        try:
            layouts.append(_layout(s, where))
        except InputError as exc:
            if len(series) == 1:
                raise
            skipped.append((s, str(exc).split(": ", 2)[-1]))
    if not layouts:
        raise InputError(f"{where}: no image series to open: {_describe_skipped(skipped)}")
    source = Path(path) if isinstance(path, str | os.PathLike) else where
    volumes = [_volume(lay, where, source) for lay in layouts]
    messages = [f"{where}: skipped {s.name()}: {why}" for s, why in skipped]
    return volumes, messages


# --------------------------------------------------------------------------------------------
# helpers for writers (DICOM SEG)
# --------------------------------------------------------------------------------------------
def valid_date(value: Any) -> bool:
    """Whether a DA value is a real calendar date (anonymisers leave ``00000000``)."""
    try:
        datetime.datetime.strptime(str(value), "%Y%m%d")
    except ValueError:
        return False
    return True


def source_headers(info: DicomSeriesInfo) -> list[list[Any]]:
    """The source images' headers (no pixel data), nested ``[t][z]`` as ``info.files``.

    Raises :class:`InputError` when a file has moved or no longer matches its UID.
    """
    import pydicom

    out: list[list[Any]] = []
    with _quiet_pydicom():
        for row_files, row_uids in zip(info.files, info.sop_instance_uids, strict=True):
            row = []
            for f, uid in zip(row_files, row_uids, strict=True):
                try:
                    ds = pydicom.dcmread(f, stop_before_pixels=True)
                except (OSError, ValueError) as exc:
                    raise InputError(
                        f"{f}: source DICOM file not readable any more ({exc}); re-open the series"
                    ) from exc
                if str(ds.SOPInstanceUID) != uid:
                    raise InputError(f"{f}: no longer the image the layer was read from")
                row.append(ds)
            out.append(row)
    return out


# --------------------------------------------------------------------------------------------
# evaluation records (a DICOM series with a DICOM SEG of its expert contours)
# --------------------------------------------------------------------------------------------
def find_seg_for(folder: str | os.PathLike[str], info: DicomSeriesInfo) -> Path | None:
    """A DICOM Segmentation under ``folder`` that references the series ``info`` describes."""
    seg_class = "1.2.840.10008.5.1.4.1.1.66.4"
    with _quiet_pydicom():
        for h in _read_headers(dicom_files_in(folder)):
            if str(h.ds.get("SOPClassUID", "")) != seg_class:
                continue
            refs = h.ds.get("ReferencedSeriesSequence") or []
            if any(str(r.get("SeriesInstanceUID", "")) == info.series_instance_uid for r in refs):
                return h.path
    return None


def iter_dicom_records(path: str | os.PathLike[str], config: Any = None):
    """:class:`~napari_sdnet.io.datasets.VolumeRecord` per phase of a DICOM cine series whose
    expert contours are a DICOM SEG in the same folder (as
    :func:`~napari_sdnet.io.datasets.iter_cine_nifti` does for NIfTI: a slice counts as
    labelled when it contains myocardium)."""
    from napari_sdnet.io.seg import read_dicom_seg
    from napari_sdnet.io.slices import MYOCARDIUM, VolumeRecord, _config, _model_masks
    from napari_sdnet.preprocess import preprocess_volume

    config = _config(config)
    vol = read_dicom(path)
    assert vol.dicom is not None
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    seg_path = find_seg_for(folder, vol.dicom)
    if seg_path is None:
        raise InputError(
            f"{path}: no DICOM SEG referencing {vol.dicom.label()} in the folder; nothing to "
            "evaluate against"
        )
    labels = read_dicom_seg(seg_path, vol.dicom)
    data4 = vol.data if vol.data.ndim == 4 else vol.data[None]
    labels4 = labels.reshape(data4.shape)
    labelled = np.any(labels4 == MYOCARDIUM, axis=(2, 3))
    spacing = tuple(float(s) for s in vol.geometry.spacing)
    slices, grid = preprocess_volume(data4, spacing[-2:], config)
    masks = _model_masks(labels4, grid)
    masks[~labelled] = 0
    stem = folder.name or "dicom"
    for t in range(data4.shape[0]):
        yield VolumeRecord(
            volume_id=f"{stem}_t{t:02d}" if vol.data.ndim == 4 else stem,
            image=data4[t],
            labels=labels4[t],
            spacing=spacing[-3:],  # type: ignore[arg-type]
            slices=slices[t],
            grid=grid,
            masks=masks[t],
            labelled=labelled[t],
            geometry=vol.geometry,
            frame=t if vol.data.ndim == 4 else None,
        )
