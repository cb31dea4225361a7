"""Reading and writing images with their geometry (no napari or Qt here).

:func:`read_image` is the one entry point for an image given by the user: a NIfTI file
(:func:`napari_sdnet.io.nifti.read_nifti`) or a DICOM series (a folder, one of its files, or a
list of its files: :func:`napari_sdnet.io.dicom.read_dicom`). Both return a
:class:`~napari_sdnet.io.nifti.NiftiVolume` (``data`` in napari axis order, ``geometry`` with
the NIfTI/RAS affine); a DICOM volume is a :class:`~napari_sdnet.io.dicom.DicomVolume`, which
also says which DICOM images it came from.

Submodules are imported lazily, so ``import napari_sdnet.io`` stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from napari_sdnet.io.nifti import NiftiVolume

__all__ = ["is_image_source", "read_image"]


def is_image_source(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names something :func:`read_image` reads (by name/preamble only):
    a ``.nii``/``.nii.gz`` file, a DICOM file, or a folder holding DICOM files. Never raises."""
    from napari_sdnet.io.dicom import is_dicom_file, looks_like_dicom_folder
    from napari_sdnet.io.nifti import is_nifti_path

    try:
        p = Path(path)
        if p.is_dir():
            return looks_like_dicom_folder(p)
        return is_nifti_path(p) or is_dicom_file(p)
    except (OSError, TypeError, ValueError):
        return False


def read_image(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> NiftiVolume:
    """Read an image from a NIfTI file or a DICOM series, into napari axis order.

    * ``*.nii`` / ``*.nii.gz``: :func:`~napari_sdnet.io.nifti.read_nifti` (2D, 3D, 4D);
    * a folder: the cine (or single-phase) DICOM series in it, searched recursively
      (:func:`~napari_sdnet.io.dicom.read_dicom`; other series are skipped with a warning);
    * a DICOM file: the series it belongs to (among the files of its folder);
    * a list of DICOM files: the series they form.

    4D results are ``(t, z, y, x)``; the geometry's affine maps NIfTI voxel indices (the
    array axes reversed) to RAS world millimetres for both routes, so masks written with
    :func:`~napari_sdnet.io.nifti.write_nifti` line up with the source in any viewer.
    Raises :class:`~napari_sdnet.errors.InputError` with a one-line message for anything
    unreadable.
    """
    from napari_sdnet.errors import InputError
    from napari_sdnet.io.dicom import is_dicom_file, read_dicom
    from napari_sdnet.io.nifti import is_nifti_path, read_nifti

    if not isinstance(path, str | os.PathLike):
        return read_dicom(list(path))
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: not found")
    if p.is_dir():
        return read_dicom(p)
    if is_nifti_path(p):
        return read_nifti(p)
    if is_dicom_file(p):
        return read_dicom(p)
    raise InputError(
        f"{p}: neither a NIfTI file (.nii, .nii.gz) nor a DICOM file or folder of DICOM files"
    )
