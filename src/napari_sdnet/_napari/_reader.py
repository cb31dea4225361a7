"""npe2 readers: NIfTI (``.nii`` / ``.nii.gz``) images and label maps, and DICOM cine series.

Images become ``image`` layers, label maps (see :func:`napari_sdnet.io.nifti.looks_like_labels`)
become ``labels`` layers. Both get the voxel spacing as ``scale`` (4D: the time step, in the
file's time unit, for the ``t`` axis), so an image and its label map overlay exactly. Each layer
carries its geometry in ``metadata["sdnet_geometry"]`` (see
:meth:`napari_sdnet.io.nifti.Geometry.to_metadata`) and its file in ``metadata["source_path"]``;
the writer uses that geometry to save masks that line up with the source file.

DICOM (:func:`get_dicom_reader`): a folder (File > Open Folder), one ``.dcm`` file (its series)
or several ``.dcm`` files; every image series in it that forms a regular stack opens as one
``(t, z, y, x)`` (or ``(z, y, x)``) image layer, see :mod:`napari_sdnet.io.dicom`; series that
are skipped (SR, SEG, secondary capture, inconsistent stacks) are named in a warning. The layer
metadata also holds ``metadata["sdnet_dicom"]`` (the source images, for DICOM SEG export).

nibabel, pydicom and NumPy are imported only when a file is actually read.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from napari_sdnet.io.nifti import NiftiVolume

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[str | Sequence[str]], list[LayerData]]

_SUFFIXES = (".nii.gz", ".nii")


def _is_nifti_file_name(path: Any) -> bool:
    if not isinstance(path, str | os.PathLike):
        return False
    name = Path(path).name.lower()
    return any(name.endswith(s) and len(name) > len(s) for s in _SUFFIXES)


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Return :func:`read_layers` when every path names a NIfTI file, else ``None``.

    Only the file names are checked here (never raises); a corrupt file is reported when the
    returned function reads it.
    """
    try:
        paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    except TypeError:
        return None
    if not paths:
        return None
    for p in paths:
        if not _is_nifti_file_name(p):
            return None
        try:
            if Path(p).is_dir():
                return None
        except OSError:
            return None
    return read_layers


def get_dicom_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Return :func:`read_dicom_layers` for a folder holding DICOM files, a DICOM file or a list
    of DICOM files, else ``None`` (never raises; only the DICM preamble is checked)."""
    try:
        from napari_sdnet.io.dicom import is_dicom_file, looks_like_dicom_folder

        paths = [path] if isinstance(path, str | os.PathLike) else list(path)
        if not paths or not all(isinstance(p, str | os.PathLike) for p in paths):
            return None
        if len(paths) == 1 and Path(paths[0]).is_dir():
            return read_dicom_layers if looks_like_dicom_folder(paths[0]) else None
        if all(Path(p).is_file() and is_dicom_file(p) for p in paths):
            return read_dicom_layers
    except Exception:
        return None
    return None


def read_dicom_layers(path: str | Sequence[str]) -> list[LayerData]:
    """One image layer per DICOM image series in a folder (or the series of a file / files).

    Skipped series are reported with a warning; raises
    :class:`napari_sdnet.errors.InputError` when nothing can be opened (nothing is added).
    """
    from napari_sdnet.io.dicom import DICOM_METADATA_KEY, read_dicom, read_dicom_all

    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if len(paths) == 1 and Path(paths[0]).is_dir():
        volumes, skipped = read_dicom_all(paths[0])
        for message in skipped:
            warnings.warn(message, UserWarning, stacklevel=2)
    elif len(paths) == 1:
        volumes = [read_dicom(paths[0])]
    else:
        volumes = [read_dicom(paths)]
    layers = []
    for volume in volumes:
        data, kwargs, kind = _layer_data(volume)
        info = volume.dicom
        if info is not None:
            folder = Path(info.folder)
            base = folder.name if folder.is_dir() else folder.parent.name
            kwargs["name"] = base or kwargs["name"]
            if len(volumes) > 1 or info.series_description:
                what = info.series_description or f"series {info.series_number}"
                kwargs["name"] = " ".join(x for x in (base, what) if x)
            kwargs["metadata"][DICOM_METADATA_KEY] = info.to_metadata()
        layers.append((data, kwargs, kind))
    return layers


def read_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Read one or more NIfTI files into napari LayerData tuples (label maps listed last).

    Raises :class:`napari_sdnet.errors.InputError` naming the file for an unreadable file.
    """
    from napari_sdnet.io.nifti import read_nifti

    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    images: list[LayerData] = []
    labels: list[LayerData] = []
    for p in paths:
        volume = read_nifti(p)
        layer = _layer_data(volume)
        (labels if layer[2] == "labels" else images).append(layer)
    return images + labels


_AXIS_LABELS = {2: ("y", "x"), 3: ("z", "y", "x"), 4: ("t", "z", "y", "x")}
_TIME_UNITS = {"msec": "millisecond", "sec": "second", "usec": "microsecond"}


def _axis_units(ndim: int, time_unit: str) -> tuple[str, ...]:
    """napari (pint) units per axis: mm in space, the file's time unit (if known) in time."""
    spatial = ("millimeter",) * min(ndim, 3)
    if ndim == 4:
        return (_TIME_UNITS.get(time_unit, "second"), *spatial)
    return spatial


def _layer_data(volume: NiftiVolume) -> LayerData:
    from napari_sdnet.io.nifti import nifti_stem

    path = Path(volume.path) if volume.path is not None else None
    scale = list(volume.geometry.spacing)
    if volume.is_labels and path is not None:
        sibling = _sibling_image_spacing(path, volume)
        if sibling is not None:
            scale = sibling
    if len(scale) == 4 and not scale[0] > 0:
        scale[0] = 1.0
    kwargs: dict[str, Any] = {
        "name": nifti_stem(path) if path is not None else "nifti",
        "scale": tuple(scale),
        "axis_labels": _AXIS_LABELS[volume.data.ndim],
        "units": _axis_units(volume.data.ndim, volume.geometry.time_unit),
        "metadata": {
            "sdnet_geometry": volume.geometry.to_metadata(),
            "source_path": str(path) if path is not None else None,
        },
    }
    if volume.is_labels:
        from napari_sdnet._napari._layers import structure_style

        kwargs.update(structure_style("expert"))
        return (volume.data, kwargs, "labels")
    kwargs["colormap"] = "gray"
    kwargs["contrast_limits"] = robust_contrast_limits(volume.data)
    return (volume.data, kwargs, "image")


def robust_contrast_limits(data: np.ndarray, low: float = 1.0, high: float = 99.0) -> list[float]:
    """The ``low``-``high`` percentile range of ``data`` (from a sample of about 1M voxels).

    Falls back to the full range when the percentiles coincide, and to ``[v, v + 1]`` for a
    constant array, so napari always gets a usable, increasing pair.
    """
    import numpy as np

    flat = np.asarray(data).reshape(-1)
    if flat.size == 0:
        return [0.0, 1.0]
    step = max(1, flat.size // 1_000_000)
    sample = flat[::step]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return [0.0, 1.0]
    lo, hi = (float(v) for v in np.percentile(sample, [low, high]))
    if not hi > lo:
        lo, hi = float(sample.min()), float(sample.max())
    if not hi > lo:
        hi = lo + 1.0
    return [lo, hi]


def _sibling_image_spacing(path: Path, volume: NiftiVolume) -> list[float] | None:
    """Layer scale of the 4D image a label map belongs to, when its header disagrees.

    A label file named ``<stem>_gt.nii.gz`` (or ``_seg``, ``_label``, ``_labels``, ``_mask``)
    whose image ``<stem>.nii.gz`` / ``<stem>.nii`` sits beside it with the same shape and voxel
    size (to 1e-4) but another time step (label tools often leave pixdim[4] at 0 or 1) is shown
    with the image's scale, so the two overlay frame by frame. The geometry kept in the metadata
    is the label file's own.
    """
    import nibabel as nib
    import numpy as np

    from napari_sdnet.io.nifti import LABEL_SUFFIXES, nifti_stem

    geometry = volume.geometry
    if geometry.ndim != 4 or geometry.file_shape is None:
        return None
    stem = nifti_stem(path)
    base = next((stem[: -len(s)] for s in LABEL_SUFFIXES if stem.lower().endswith(s)), None)
    if not base:
        return None
    for suffix in (".nii.gz", ".nii"):
        candidate = path.with_name(base + suffix)
        if not candidate.is_file() or candidate.resolve() == path.resolve():
            continue
        try:
            header = nib.load(str(candidate)).header  # header only; data stay on disk
            shape = tuple(int(s) for s in header.get_data_shape())
            zooms = [float(z) for z in header.get_zooms()]
        except Exception:
            return None
        while len(shape) > 4 and shape[-1] == 1:
            shape = shape[:-1]
        if shape != geometry.file_shape or len(zooms) < 4:
            return None
        image_spacing = [abs(z) for z in reversed(zooms[:4])]
        own = list(geometry.spacing)
        if not np.allclose(image_spacing[1:], own[1:], rtol=1e-4):
            return None
        step = image_spacing[0]
        if not (np.isfinite(step) and step > 0):
            return None
        if image_spacing == own:
            return None
        if not np.isclose(step, own[0]):
            warnings.warn(
                f"{path.name}: time step {own[0]:g} in its header differs from its image "
                f"{candidate.name} ({step:g}); showing it with the image's time step",
                UserWarning,
                stacklevel=2,
            )
        return image_spacing
    return None
