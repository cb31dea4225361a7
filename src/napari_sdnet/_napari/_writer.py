"""npe2 writer: save a Labels layer as NIfTI that lines up with its source image.

The geometry comes from ``meta["metadata"]["sdnet_geometry"]``, which the reader puts on every
layer it opens (copy an image layer's metadata onto a mask made on it and the saved mask lines up
with the input file). A layer without geometry is still written, with a diagonal affine built
from the layer ``scale`` and a warning.

napari asks before overwriting (File > Save Selected Layer(s)), so this writer replaces an
existing file, atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import warnings
from typing import Any

GEOMETRY_KEY = "sdnet_geometry"


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer to ``path`` (``.nii.gz`` or ``.nii``); returns ``[path]``.

    A path without a NIfTI extension gets ``.nii.gz``. Raises
    :class:`napari_sdnet.errors.InputError` when the array does not fit its geometry (e.g. a
    mask drawn on a single frame saved with the geometry of a 4D study).
    """
    import numpy as np

    from napari_sdnet.errors import InputError
    from napari_sdnet.io.nifti import Geometry, is_nifti_path, write_nifti

    if not is_nifti_path(path):
        path = f"{path}.nii.gz"
    array = np.asarray(data[0] if isinstance(data, list | tuple) else data)  # multiscale: level 0
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise InputError(f"{path}: the labels hold NaN or infinite values")
        array = np.rint(array).astype(np.int64)  # labels are integers; stored in the smallest type
    metadata = (meta or {}).get("metadata") or {}
    geometry_meta = metadata.get(GEOMETRY_KEY)
    if geometry_meta is not None:
        geometry = Geometry.from_metadata(geometry_meta)
    else:
        scale = (meta or {}).get("scale")
        if scale is None or len(scale) != array.ndim:
            scale = [1.0] * array.ndim
        warnings.warn(
            f"layer {(meta or {}).get('name', '')!r} has no source geometry; writing {path} "
            f"with a diagonal affine from its scale {tuple(float(s) for s in scale)}",
            UserWarning,
            stacklevel=2,
        )
        geometry = Geometry.from_scale(scale, shape=array.shape)
    written = write_nifti(path, array, geometry, overwrite=True)
    return [str(written)]
