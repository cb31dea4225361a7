"""Cardiac function measured on a model's segmentation (:func:`measure`); the numbers come from
the Qt- and torch-free :mod:`napari_sdnet.cardiac`. Re-exported by :mod:`napari_sdnet.api`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_sdnet.cardiac import CardiacFunction, measure_segmentation
from napari_sdnet.errors import InputError
from napari_sdnet.models import Model
from napari_sdnet.segmentation import ProgressCallback, segment


def measure(
    model: Model,
    image: Any,
    spacing: Sequence[float],
    es_image: Any = None,
    es_spacing: Sequence[float] | None = None,
    *,
    ed: int | None = None,
    es: int | None = None,
    time_unit: str | None = None,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
) -> CardiacFunction:
    """Segment a cine (or an ED and an ES volume) with ``model`` and measure cardiac function.

    ``image`` is a 4D cine ``(t, z, y, x)`` (ED/ES from the LV volume curve, or ``ed``/``es``),
    or, with ``es_image``, the 3D ED volume. ``spacing`` per axis in mm (``Geometry.spacing``).
    Structures the model does not segment (today's models: the LV and RV cavities) are reported
    as absent for that reason; see :func:`napari_sdnet.cardiac.measure_segmentation`.
    """
    images = [image] if es_image is None else [image, es_image]
    spacings = [spacing] if es_image is None else [spacing, es_spacing or spacing]
    for arr, what in zip(images, ("image", "ES image"), strict=False):
        if np.ndim(arr) != (4 if es_image is None else 3):
            want = "a 4D (t, z, y, x) cine" if es_image is None else "a 3D (z, y, x) volume"
            raise InputError(f"{what} must be {want}; got shape {np.shape(arr)}")
    totals = [int(np.prod(np.shape(a)[:-2])) for a in images]
    segs = []
    for k, (arr, sp) in enumerate(zip(images, spacings, strict=True)):
        offset = sum(totals[:k])

        def report(done: int, total: int | None, _o: int = offset) -> None:
            if progress is not None:
                progress(_o + done, sum(totals))

        segs.append(segment(model, arr, sp, batch_size=batch_size, progress=report))
    if es_image is None:
        return measure_segmentation(segs[0], spacing, ed=ed, es=es, time_unit=time_unit)
    return measure_segmentation(segs[0], spacings[0], segs[1], spacings[1])
