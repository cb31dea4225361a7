"""Exporting a mask lined up with its source image, as NIfTI or DICOM SEG (no Qt here).

The segmentation widget's "Export mask..." button and ``napari-sdnet demo --headless`` use
these; the dialogs stay in the widget. A file name ending in ``.dcm`` writes a DICOM
Segmentation (:func:`napari_sdnet.io.seg.write_dicom_seg`) referencing the DICOM series the
image was opened from (``metadata["sdnet_dicom"]``); anything else writes NIfTI.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

GEOMETRY_KEY = "sdnet_geometry"


def source_geometry(image: Any, shape: tuple[int, ...]):
    """``(Geometry, warning or None)`` of an image layer, for a mask of ``shape``.

    The geometry the reader stored in ``metadata["sdnet_geometry"]``; without it, a diagonal
    affine from the layer's ``scale`` (taken as mm) and a warning saying so.
    """
    from napari_sdnet.io.nifti import Geometry

    meta = (getattr(image, "metadata", None) or {}).get(GEOMETRY_KEY)
    if meta is not None:
        return Geometry.from_metadata(meta), None
    scale = [abs(float(s)) for s in image.scale]
    geometry = Geometry.from_scale(scale, shape=shape)
    warning = (
        f"layer {image.name!r} was not opened from a NIfTI file: the mask is written with a "
        f"plain diagonal affine from its scale {tuple(round(s, 4) for s in scale)} (taken as "
        "mm), not in scanner coordinates"
    )
    return geometry, warning


def mask_values(labels: Any, binary: bool) -> np.ndarray:
    """The array to write: the labels as they are (ACDC values, myocardium = 2), or
    ``labels == 2`` as 0/1 when ``binary``."""
    from napari_sdnet.api import MYOCARDIUM

    arr = np.asarray(labels)
    if binary:
        return (arr == MYOCARDIUM).astype(np.uint8)
    return arr


DICOM_SEG_SUFFIX = ".dcm"


def is_dicom_seg_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends in ``.dcm`` (any case): export as DICOM SEG."""
    return Path(path).name.lower().endswith(DICOM_SEG_SUFFIX)


def with_nifti_suffix(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``.nii.gz`` added unless it already ends in ``.nii`` / ``.nii.gz`` (or in
    ``.dcm``, a DICOM SEG name, which is kept)."""
    from napari_sdnet.io.nifti import is_nifti_path

    p = Path(path)
    return p if is_nifti_path(p) or is_dicom_seg_path(p) else p.with_name(p.name + ".nii.gz")


def dicom_source(image: Any):
    """The :class:`~napari_sdnet.io.dicom.DicomSeriesInfo` of a layer opened from DICOM, or
    ``None``."""
    from napari_sdnet.io.dicom import DICOM_METADATA_KEY, DicomSeriesInfo

    meta = (getattr(image, "metadata", None) or {}).get(DICOM_METADATA_KEY)
    return None if meta is None else DicomSeriesInfo.from_metadata(meta)


def default_mask_name(image: Any) -> str:
    """``<source file stem>_myocardium.nii.gz`` (or the layer name, made file-safe)."""
    from napari_sdnet.io.nifti import nifti_stem

    source = (getattr(image, "metadata", None) or {}).get("source_path")
    stem = nifti_stem(source) if source else re.sub(r"[^\w.-]+", "_", image.name).strip("_")
    return f"{stem or 'image'}_myocardium.nii.gz"


def export_mask(
    path: str | os.PathLike[str],
    labels: Any,
    image: Any,
    *,
    binary: bool = False,
    overwrite: bool = False,
) -> tuple[Path, list[str]]:
    """Write ``labels`` (a mask on ``image``'s grid) to ``path`` with ``image``'s geometry.

    ``path`` ending in ``.dcm``: a DICOM Segmentation referencing the image's DICOM series (one
    segment per ACDC structure present; ``binary`` keeps the myocardium only); the image must
    have been opened from DICOM. Otherwise NIfTI (``.nii.gz`` added when missing).

    Atomic; an existing file is refused unless ``overwrite``. Returns the written path and the
    warnings to show. Raises :class:`~napari_sdnet.errors.InputError` when the mask does not
    fit the image's grid.
    """
    from napari_sdnet.errors import InputError
    from napari_sdnet.io.nifti import write_nifti

    data = mask_values(labels, binary)
    if tuple(data.shape) != tuple(np.shape(image.data)):
        raise InputError(
            f"the mask has shape {tuple(data.shape)} but {image.name!r} has "
            f"{tuple(np.shape(image.data))}; it would not line up"
        )
    if data.dtype.kind == "f":
        data = np.rint(data)
    if is_dicom_seg_path(path):
        return _export_dicom_seg(Path(path), data, image, binary=binary, overwrite=overwrite)
    geometry, warning = source_geometry(image, tuple(data.shape))
    target = with_nifti_suffix(path)
    written = write_nifti(target, data.astype(np.int64, copy=False), geometry, overwrite=overwrite)
    return written, [warning] if warning else []


def _export_dicom_seg(
    path: Path, data: np.ndarray, image: Any, *, binary: bool, overwrite: bool
) -> tuple[Path, list[str]]:
    import warnings

    from napari_sdnet.api import MYOCARDIUM
    from napari_sdnet.errors import InputError
    from napari_sdnet.io.seg import write_dicom_seg

    info = dicom_source(image)
    if info is None:
        raise InputError(
            f"{path.name}: {image.name!r} was not opened from a DICOM series; a DICOM SEG must "
            "reference its source images (export as .nii.gz instead)"
        )
    values = np.where(data == 1, MYOCARDIUM, 0) if binary else data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = write_dicom_seg(
            path,
            values.astype(np.int64, copy=False),
            info,
            overwrite=overwrite,
            algorithm_type="SEMIAUTOMATIC",
        )
    return written, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
