"""NIfTI reading and writing that keeps the file's geometry.

Plain nibabel + NumPy: this module never imports napari or Qt.

Axis order
----------
Arrays are returned in napari order, which is the NIfTI order reversed:

========  ==================  ==================
file      NIfTI array         returned array
========  ==================  ==================
2D        ``(x, y)``          ``(y, x)``
3D        ``(x, y, z)``       ``(z, y, x)``
4D cine   ``(x, y, z, t)``    ``(t, z, y, x)``
========  ==================  ==================

Trailing singleton dimensions beyond the fourth are dropped; a file with a real fifth dimension
(or a 1D file) is refused with :class:`~napari_sdnet.errors.InputError`.

Geometry
--------
:class:`Geometry` holds what is needed to write an array back so that it lines up with its
source: the 4x4 voxel-to-world affine, the spacing per array axis (mm, and the time step in the
file's time unit for ``t``), the NIfTI shape, the units and the original NIfTI header as its
binary block. :func:`write_nifti` reuses that header, so qform/sform (and their codes), pixdim,
units, ``descrip`` and the other fields survive a read -> write round trip and the written file
has exactly the source affine. NIfTI header extensions are not kept.

Label maps
----------
:func:`looks_like_labels` decides whether a file is a label map (segmentation) or an image:

* the file name stem ends in ``_gt``, ``_seg``, ``_label``, ``_labels`` or ``_mask``
  (case-insensitive; e.g. ``patient001_frame01_gt.nii.gz``) and the values are whole numbers, or
* the data type is an integer (or bool) type and the array holds at most 32 distinct values,
  none negative. Real int16 MR images hold hundreds of values, so they stay images.

Label maps keep their on-disk integer dtype (uint8, int16, ...). Images have the header's
``scl_slope``/``scl_inter`` applied (as nibabel does) and are returned as float32.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from napari_sdnet.errors import InputError
from napari_sdnet.io.files import atomic_write

__all__ = [
    "LABEL_SUFFIXES",
    "MAX_LABEL_VALUES",
    "NIFTI_SUFFIXES",
    "Geometry",
    "NiftiVolume",
    "is_nifti_path",
    "looks_like_labels",
    "nifti_stem",
    "read_nifti",
    "write_nifti",
]

#: File name endings (case-insensitive) that this module reads and writes.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
#: Stem endings (case-insensitive) that mark a label map.
LABEL_SUFFIXES: tuple[str, ...] = ("_gt", "_seg", "_label", "_labels", "_mask")
#: An unnamed integer file with at most this many distinct values (all >= 0) is a label map.
MAX_LABEL_VALUES = 32

_METADATA_VERSION = 1
_SPATIAL_UNITS = ("unknown", "meter", "mm", "micron")
_LABEL_NAME_RE = re.compile("(" + "|".join(re.escape(s) for s in LABEL_SUFFIXES) + ")$", re.I)


# --------------------------------------------------------------------------------------------
# paths
# --------------------------------------------------------------------------------------------
def is_nifti_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    name = Path(path).name.lower()
    return any(name.endswith(s) and len(name) > len(s) for s in NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike[str]) -> str:
    """File name without ``.nii.gz`` / ``.nii`` (``p001_gt.nii.gz`` -> ``p001_gt``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _nifti_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise InputError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------
def _readonly_affine(affine: Any) -> np.ndarray:
    arr = np.array(affine, dtype=np.float64)
    if arr.shape != (4, 4):
        raise InputError(f"an affine must be a 4x4 matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError("an affine must hold finite numbers, got NaN or infinity")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where an array sits in the world, and how to write it back as NIfTI.

    Attributes
    ----------
    affine
        4x4 voxel (NIfTI ``i, j, k``) to world (mm) matrix, as nibabel's ``img.affine``
        (read-only array).
    spacing
        Spacing per *array* axis in napari order, e.g. ``(dt, dz, dy, dx)`` for 4D: absolute
        voxel sizes in mm, the time step in ``time_unit``. Use it as a napari layer ``scale``.
    file_shape
        Shape of the NIfTI array, ``(x, y[, z[, t]])``; ``None`` when unknown (any shape with the
        right number of axes is accepted when writing).
    time_unit
        NIfTI time unit name (``"msec"``, ``"sec"``, ``"usec"``, ``"unknown"``, ...).
    spatial_unit
        NIfTI spatial unit name (``"mm"``, ``"unknown"``, ...).
    header
        The source file's NIfTI header as its binary block (348 bytes for NIfTI-1, 540 for
        NIfTI-2), or ``None`` when the array has no source file.
    """

    affine: np.ndarray
    spacing: tuple[float, ...]
    file_shape: tuple[int, ...] | None = None
    time_unit: str = "unknown"
    spatial_unit: str = "mm"
    header: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "affine", _readonly_affine(self.affine))
        spacing = tuple(float(s) for s in self.spacing)
        if not 2 <= len(spacing) <= 4:
            raise InputError(f"geometry needs 2 to 4 spacings, got {len(spacing)}")
        object.__setattr__(self, "spacing", spacing)
        if self.file_shape is not None:
            shape = tuple(int(s) for s in self.file_shape)
            if len(shape) != len(spacing):
                raise InputError(
                    f"geometry file shape {shape} and spacing {spacing} disagree in length"
                )
            object.__setattr__(self, "file_shape", shape)
        if self.header is not None:
            header = bytes(self.header)
            if len(header) not in (348, 540):
                raise InputError(f"a NIfTI header block has 348 or 540 bytes, got {len(header)}")
            object.__setattr__(self, "header", header)

    # -- derived ------------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of array axes (2, 3 or 4)."""
        return len(self.spacing)

    @property
    def array_shape(self) -> tuple[int, ...] | None:
        """Expected shape of the array in napari order (``file_shape`` reversed)."""
        return None if self.file_shape is None else tuple(reversed(self.file_shape))

    @property
    def time_step(self) -> float | None:
        """Time between frames in ``time_unit`` for 4D geometry, else ``None``."""
        return self.spacing[0] if self.ndim == 4 else None

    def nifti_header(self) -> nib.Nifti1Header | nib.Nifti2Header | None:
        """A fresh nibabel header parsed from :attr:`header` (``None`` without a source)."""
        if self.header is None:
            return None
        cls = nib.Nifti1Header if len(self.header) == 348 else nib.Nifti2Header
        return cls(binaryblock=self.header, check=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return (
            np.array_equal(self.affine, other.affine)
            and self.spacing == other.spacing
            and self.file_shape == other.file_shape
            and self.time_unit == other.time_unit
            and self.spatial_unit == other.spatial_unit
            and self.header == other.header
        )

    __hash__ = None  # type: ignore[assignment]

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_scale(
        cls,
        scale: Sequence[float],
        *,
        shape: Sequence[int] | None = None,
        time_unit: str = "unknown",
    ) -> Geometry:
        """Geometry for an array without a source file.

        ``scale`` is the napari layer scale (per array axis, napari order); the affine is
        diagonal with the spatial spacings (NIfTI ``x, y, z`` = the last three array axes
        reversed) and no translation. ``shape`` (array shape, napari order) is optional.
        Non-positive or non-finite scales become 1.0.
        """
        spacing = tuple(
            abs(float(s)) if math.isfinite(float(s)) and float(s) != 0 else 1.0 for s in scale
        )
        if not 2 <= len(spacing) <= 4:
            raise InputError(f"cannot write a {len(spacing)}D array as NIfTI (2D to 4D only)")
        spatial = list(reversed(spacing[-3:] if len(spacing) >= 3 else spacing))
        diag = spatial + [1.0] * (3 - len(spatial))
        affine = np.diag([*diag, 1.0])
        file_shape = None
        if shape is not None:
            if len(shape) != len(spacing):
                raise InputError(f"shape {tuple(shape)} and scale {tuple(scale)} disagree")
            file_shape = tuple(int(s) for s in reversed(tuple(shape)))
        return cls(affine=affine, spacing=spacing, file_shape=file_shape, time_unit=time_unit)

    def to_metadata(self) -> dict[str, Any]:
        """A JSON-friendly dict (plain lists, floats, ints, str) for napari layer metadata."""
        return {
            "version": _METADATA_VERSION,
            "affine": [[float(v) for v in row] for row in self.affine],
            "spacing": [float(s) for s in self.spacing],
            "file_shape": None if self.file_shape is None else [int(s) for s in self.file_shape],
            "time_unit": self.time_unit,
            "spatial_unit": self.spatial_unit,
            "header": None if self.header is None else base64.b64encode(self.header).decode(),
        }

    @classmethod
    def from_metadata(cls, d: Mapping[str, Any]) -> Geometry:
        """Inverse of :meth:`to_metadata`; raises :class:`InputError` for a malformed dict."""
        if not isinstance(d, Mapping):
            raise InputError(f"geometry metadata must be a dict, got {type(d).__name__}")
        try:
            header = d.get("header")
            raw = None if header is None else base64.b64decode(header, validate=True)
            file_shape = d.get("file_shape")
            return cls(
                affine=d["affine"],
                spacing=tuple(d["spacing"]),
                file_shape=None if file_shape is None else tuple(file_shape),
                time_unit=str(d.get("time_unit", "unknown")),
                spatial_unit=str(d.get("spatial_unit", "mm")),
                header=raw,
            )
        except InputError:
            raise
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise InputError(f"malformed sdnet geometry metadata: {exc!r}") from exc


@dataclass
class NiftiVolume:
    """An array read from a NIfTI file, in napari axis order, with its geometry."""

    data: np.ndarray
    geometry: Geometry
    path: Path | None = None
    is_labels: bool = False


# --------------------------------------------------------------------------------------------
# labels rule
# --------------------------------------------------------------------------------------------
def _has_label_name(path: str | os.PathLike[str] | None) -> bool:
    return path is not None and bool(_LABEL_NAME_RE.search(nifti_stem(path)))


def _count_distinct_upto(data: np.ndarray, limit: int) -> int:
    """Number of distinct values, or ``limit + 1`` as soon as there are more than ``limit``."""
    flat = data.reshape(-1)
    if flat.size == 0:
        return 0
    # Cheap rejection on a strided sample first (an image fails here in microseconds).
    step = max(1, flat.size // 65536)
    if np.unique(flat[::step]).size > limit:
        return limit + 1
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo <= 1 << 20:
        counts = np.bincount((flat - lo).astype(np.intp, copy=False), minlength=1)
        return int(np.count_nonzero(counts))
    return int(np.unique(flat).size)


def _is_whole_numbers(data: np.ndarray) -> bool:
    if data.dtype.kind in "biu":
        return True
    if data.dtype.kind == "f":
        return bool(np.all(np.isfinite(data)) and np.all(data == np.round(data)))
    return False


def looks_like_labels(path: str | os.PathLike[str] | None, data: np.ndarray) -> bool:
    """Whether ``data`` (read from ``path``) is a label map rather than an image.

    True when the file name stem ends in ``_gt``, ``_seg``, ``_label``, ``_labels`` or ``_mask``
    (case-insensitive) and all values are whole numbers, or when the dtype is integer/bool and
    there are at most :data:`MAX_LABEL_VALUES` (32) distinct values, none negative.
    """
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        return False
    if _has_label_name(path):
        return _is_whole_numbers(data)
    if data.dtype.kind == "b":
        return True
    if data.dtype.kind not in "iu" or data.size == 0:
        return False
    if data.dtype.kind == "i" and int(data.min()) < 0:
        return False
    return _count_distinct_upto(data, MAX_LABEL_VALUES) <= MAX_LABEL_VALUES


def _smallest_int_dtype(data: np.ndarray) -> np.dtype:
    if data.size == 0:
        return np.dtype(np.uint8)
    lo, hi = data.min(), data.max()
    for dt in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def _clean_spacing(zooms: Sequence[float], names: Sequence[str], path: Path) -> list[float]:
    out = []
    for z, name in zip(zooms, names, strict=True):
        z = float(z)
        if not math.isfinite(z) or z == 0.0:
            what = "time step" if name == "t" else f"voxel size along {name}"
            warnings.warn(
                f"{path.name}: {what} is {z} in the header; using 1.0 instead",
                UserWarning,
                stacklevel=3,
            )
            z = 1.0
        out.append(abs(z))
    return out


def read_nifti(path: str | os.PathLike[str]) -> NiftiVolume:
    """Read a 2D, 3D or 4D NIfTI file (``.nii`` or ``.nii.gz``) into napari axis order.

    Raises :class:`InputError` naming the file when it is missing, not NIfTI, corrupt or
    truncated, or has more than four (non-singleton) dimensions. See the module docstring for
    the axis order and the label rule.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a NIfTI file")
    try:
        img = nib.load(str(path), mmap=False)
    except PermissionError as exc:
        raise InputError(f"{path}: permission denied (the file cannot be read)") from exc
    except Exception as exc:
        raise InputError(f"{path}: not a readable NIfTI file ({_short(exc)})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{path}: not a NIfTI file ({type(img).__name__})")

    shape = tuple(int(s) for s in img.shape)
    kept = list(shape)
    while len(kept) > 4 and kept[-1] == 1:
        kept.pop()
    if len(kept) > 4:
        raise InputError(
            f"{path}: has shape {shape} ({len(shape)}D); only 2D, 3D and 4D (x, y, z, t) "
            "NIfTI files are supported"
        )
    if len(kept) < 2:
        raise InputError(f"{path}: has shape {shape}; a 1D file is not an image")

    header = img.header
    try:
        raw = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(
            f"{path}: cannot read the image data; truncated or corrupt? ({_short(exc)})"
        ) from exc
    if raw.dtype.kind not in "biuf" or raw.dtype.fields is not None:
        raise InputError(
            f"{path}: unsupported voxel type {header.get_data_dtype()} "
            "(RGB and complex data are not supported)"
        )
    raw = raw.reshape(kept, order="A")

    is_labels = looks_like_labels(path, raw)
    if is_labels:
        if raw.dtype.kind == "b":
            raw = raw.astype(np.uint8)
        elif raw.dtype.kind == "f":
            raw = raw.astype(_smallest_int_dtype(raw))
    else:
        if raw.dtype.kind == "f" and raw.dtype.itemsize > 4 and raw.size:
            finite = raw[np.isfinite(raw)]
            big = float(np.abs(finite).max()) if finite.size else 0.0
            if big > np.finfo(np.float32).max:
                raise InputError(
                    f"{path}: values up to {big:.3g} do not fit in float32 (largest "
                    f"{np.finfo(np.float32).max:.3g}); rescale the image"
                )
        raw = raw.astype(np.float32, copy=False)
    data = raw.T  # (x, y[, z[, t]]) -> napari order; F-ordered on disk, so C-contiguous here

    zooms = list(header.get_zooms())[: len(kept)]
    zooms += [1.0] * (len(kept) - len(zooms))
    names = ["x", "y", "z", "t"][: len(kept)]
    spacing = _clean_spacing(zooms, names, path)
    spatial_unit, time_unit = header.get_xyzt_units()

    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        warnings.warn(
            f"{path.name}: the header's voxel-to-world affine is not finite; "
            "using a diagonal one from the voxel sizes",
            UserWarning,
            stacklevel=2,
        )
        spatial = (spacing + [1.0, 1.0])[:3]
        affine = np.diag([*spatial, 1.0])
    geometry = Geometry(
        affine=affine,
        spacing=tuple(reversed(spacing)),
        file_shape=tuple(kept),
        time_unit=str(time_unit),
        spatial_unit=str(spatial_unit),
        header=header.binaryblock,
    )
    return NiftiVolume(data=data, geometry=geometry, path=path, is_labels=is_labels)


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    text = msg[0] if msg else ""
    return f"{type(exc).__name__}: {text}"[:200]


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _fresh_header(geometry: Geometry, file_shape: tuple[int, ...]) -> nib.Nifti1Header:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(file_shape)
    hdr.set_qform(geometry.affine, code="aligned")
    hdr.set_sform(geometry.affine, code="aligned")
    if geometry.ndim == 4:
        hdr["pixdim"][4] = geometry.spacing[0]
    unit = geometry.spatial_unit if geometry.spatial_unit in _SPATIAL_UNITS else "mm"
    try:
        hdr.set_xyzt_units(unit, geometry.time_unit)
    except Exception:
        hdr.set_xyzt_units(unit, "unknown")
    return hdr


def _output_dtype(data: np.ndarray, dtype: Any) -> np.dtype:
    if dtype is not None:
        out = np.dtype(dtype)
        if out.kind not in "iuf":
            raise InputError(f"cannot write NIfTI voxels of type {out}")
        return out
    if data.dtype.kind in "biu":
        return _smallest_int_dtype(data)
    if data.dtype.kind == "f":
        return np.dtype(np.float64) if data.dtype == np.float64 else np.dtype(np.float32)
    raise InputError(f"cannot write an array of type {data.dtype} as NIfTI")


def write_nifti(
    path: str | os.PathLike[str],
    data: np.ndarray,
    geometry: Geometry,
    *,
    dtype: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write ``data`` (napari axis order) to ``path`` (``.nii`` or ``.nii.gz``) with ``geometry``.

    The array is transposed back to NIfTI order. When ``geometry`` came from a file, that
    file's header is reused (affine, qform/sform and codes, pixdim including the time step,
    units, ``descrip``), so reading the result gives the source affine exactly. Values are
    stored unscaled (``scl_slope`` 1, ``scl_inter`` 0).

    ``dtype`` defaults to the smallest of uint8/int16/int32 that holds integer (label) data,
    and float32 (float64 stays float64) for floating-point data. Integers are never clipped:
    an explicit integer ``dtype`` too small for the values raises :class:`InputError`.

    The file is written to a temporary file in the same directory and moved into place with
    ``os.replace``, so readers never see a half-written file and nothing is left behind on
    failure. An existing file is refused unless ``overwrite=True``.

    Returns the written path. Raises :class:`InputError` for a wrong file name, a shape that
    does not match ``geometry``, an existing file, or an unwritable location.
    """
    path = Path(path)
    suffix = _nifti_suffix(path)
    data = np.asarray(data)
    expected = geometry.array_shape
    if data.ndim != geometry.ndim or (expected is not None and tuple(data.shape) != expected):
        raise InputError(
            f"{path}: array shape {tuple(data.shape)} does not match its geometry "
            f"({expected or f'{geometry.ndim} axes'}, napari order); it would not line up "
            "with its source image"
        )
    if path.exists() and not overwrite:
        raise InputError(f"{path}: file exists; refusing to overwrite (pass overwrite=True)")
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")

    out_dtype = _output_dtype(data, dtype)
    if out_dtype.kind in "iu" and data.size:
        if data.dtype.kind == "f" and not _is_whole_numbers(data):
            raise InputError(f"{path}: cannot store non-integer values as {out_dtype}")
        info = np.iinfo(out_dtype)
        if data.min() < info.min or data.max() > info.max:
            raise InputError(f"{path}: values {data.min()}..{data.max()} do not fit in {out_dtype}")
    arr = data.astype(out_dtype, copy=False).T  # napari order -> (x, y[, z[, t]])

    hdr = geometry.nifti_header()
    if hdr is None:
        hdr = _fresh_header(geometry, arr.shape)
    else:
        hdr.set_data_shape(arr.shape)
        if out_dtype != hdr.get_data_dtype():
            # the display window of the source image means nothing for other data (labels)
            hdr["cal_min"] = 0
            hdr["cal_max"] = 0
        if not np.allclose(hdr.get_best_affine(), geometry.affine, rtol=0, atol=1e-6):
            # geometry edited after reading: its affine wins, the codes are kept
            _, s_code = hdr.get_sform(coded=True)
            _, q_code = hdr.get_qform(coded=True)
            hdr.set_sform(geometry.affine, code=int(s_code) or "aligned")
            hdr.set_qform(geometry.affine, code=int(q_code) or "unknown")
    hdr.set_data_dtype(out_dtype)
    hdr.set_slope_inter(1.0, 0.0)
    hdr.set_data_offset(0)  # let nibabel place the data right after the header
    image_cls = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    # passing the header's own affine keeps qform/sform (and codes) exactly as they are
    img = image_cls(arr, hdr.get_best_affine(), header=hdr)
    img.set_data_dtype(out_dtype)

    try:
        with atomic_write(path, overwrite=overwrite) as tmp:
            # nibabel picks gzip from the name: the temporary name keeps the suffix
            named = tmp.with_name(tmp.name + suffix)
            try:
                nib.save(img, str(named))
                os.replace(named, tmp)
            finally:
                named.unlink(missing_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    return path
