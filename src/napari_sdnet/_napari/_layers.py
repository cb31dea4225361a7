"""The layers the plugin makes: results written without ever overwriting a user's edits.

:func:`store_result` adds or updates ``<image> myocardium`` (Labels) and
``<image> reconstruction`` (Image) for a segmentation and records them in the viewer's
:class:`~napari_sdnet._napari._state.SDNetState`:

* a layer the plugin made and nobody edited since (its data digests are the plugin's) is
  updated in place; for a 4D study segmented frame by frame only that frame is written and
  frames edited elsewhere stay as they are;
* once the user has painted on it, a new ``<image> myocardium [2]`` is made instead;
* a layer the plugin did not make is never touched (new names are free names:
  :func:`free_layer_name`).

:func:`geometry_kwargs` gives the keyword arguments that put a new layer on an image's grid.

No Qt here; napari is needed for the layers.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from napari_sdnet._napari._state import MadeLayer, SDNetState, SegmentationRecord

__all__ = ["STRUCTURES", "free_layer_name", "geometry_kwargs", "store_result", "structure_style"]

MYOCARDIUM = 2
#: ACDC label values (this project's convention) and their names
STRUCTURES = {1: "RV cavity", 2: "myocardium", 3: "LV cavity"}
#: one colour per structure and origin: a predicted and an expert layer side by side are told
#: apart at a glance (warm colours predicted, cool colours expert), also as contours
COLOURS = {
    "predicted": {1: "#ffd23f", 2: "#ff7f0e", 3: "#e8175d"},
    "expert": {1: "#4dabf7", 2: "#2ee6a8", 3: "#b197fc"},
}
OTHER_LABEL = "#9e9e9e"  # a value that is no ACDC structure


def structure_style(origin: str) -> dict[str, Any]:
    """Labels layer keyword arguments naming and colouring the ACDC structures: a direct
    colormap (``origin`` ``"predicted"`` or ``"expert"``) and a ``features`` table, so hovering
    shows e.g. ``2; structure: myocardium (predicted)``."""
    colours = COLOURS[origin]
    colormap: dict[Any, str] = {None: OTHER_LABEL, 0: "transparent", **colours}
    values = [0, *STRUCTURES]
    names = ["background"] + [f"{STRUCTURES[v]} ({origin})" for v in STRUCTURES]
    return {"colormap": colormap, "features": {"index": values, "structure": names}}


def free_layer_name(viewer: Any, base: str) -> str:
    """``base``, or ``base [2]``, ``base [3]``, ... : the first name no layer of ``viewer`` has
    (new layers never replace a user's layer)."""
    names = {layer.name for layer in viewer.layers}
    if base not in names:
        return base
    i = 2
    while f"{base} [{i}]" in names:
        i += 1
    return f"{base} [{i}]"


def geometry_kwargs(image: Any, last: int | None = None, metadata: bool = True) -> dict[str, Any]:
    """Keyword arguments placing a new layer on ``image``'s grid: all its axes, or (``last``)
    only its last axes (e.g. 2 for an in-plane image); the metadata is copied."""
    n = image.ndim if last is None else last
    kwargs: dict[str, Any] = {
        "scale": np.array(image.scale)[-n:],
        "translate": np.array(image.translate)[-n:],
    }
    if last is None:
        kwargs["rotate"] = np.array(image.rotate)
        kwargs["shear"] = np.array(image.shear)
        kwargs["affine"] = image.affine.affine_matrix.copy()
    else:
        rotate = np.asarray(image.rotate)
        if not np.allclose(rotate, np.eye(rotate.shape[0])):
            kwargs["rotate"] = rotate[-n:, -n:]
        affine = image.affine.affine_matrix
        if not np.allclose(affine, np.eye(affine.shape[0])):
            kwargs["affine"] = affine[-n - 1 :, -n - 1 :].copy()
    for attr in ("units", "axis_labels"):  # napari >= 0.6
        if hasattr(image, attr):
            kwargs[attr] = tuple(getattr(image, attr))[-n:]
    if metadata:
        kwargs["metadata"] = copy.deepcopy(dict(image.metadata))
    return kwargs


def store_result(
    viewer: Any,
    state: SDNetState,
    image: Any,
    labels: np.ndarray,
    reconstruction: np.ndarray,
    seg: Any,
    frame: int | None,
) -> tuple[SegmentationRecord, list[str]]:
    """Write a segmentation of ``image`` (of its ``frame`` only, if given) into the plugin's
    layers and record it; returns the record and the notes to show the user."""
    record = state.new_record(image)
    record.image_name = image.name
    notes: list[str] = []
    low = float(seg.grid.intensity_range[0]) if seg.grid.intensity_range else 0.0
    structures = tuple(seg.structures)
    for kind, values, fill in (("reconstruction", reconstruction, low), ("mask", labels, 0)):
        made, note = _write_layer(
            viewer, state, record, kind, image, values, frame, fill, mask_name(structures)
        )
        setattr(record, kind, made)
        if note:
            notes.append(note)
    if frame is None:
        record.segmentation = seg
        record.frames.clear()
    else:
        record.frames[frame] = seg
    return record, notes


def _write_layer(
    viewer: Any,
    state: SDNetState,
    record: SegmentationRecord,
    kind: str,
    image: Any,
    values: np.ndarray,
    frame: int | None,
    fill: float,
    what: str = "myocardium",
) -> tuple[MadeLayer, str | None]:
    made: MadeLayer | None = getattr(record, kind)
    layer = made.layer if made is not None else None
    full_shape = tuple(np.shape(image.data))
    present = layer is not None and layer in viewer.layers
    if present and tuple(layer.data.shape) == full_shape and made.untouched(frame):
        if frame is None:
            layer.data = values
        else:
            data = layer.data
            data[frame] = values
            layer.data = data
        made.mark_written(frame)
        return made, None
    if frame is None:
        data = values
    else:
        dtype = np.uint8 if kind == "mask" else np.float32
        data = np.full(full_shape, fill, dtype=dtype)
        data[frame] = values
    base = f"{image.name} {what if kind == 'mask' else 'reconstruction'}"
    new_layer = _add_layer(viewer, kind, image, data, free_layer_name(viewer, base))
    new = MadeLayer.track(new_layer, kind)
    record.made.append(new)
    state.add_made(new)
    note = None
    if present and kind == "mask":
        note = (
            f"{layer.name!r} was edited, so it was kept as it is; the new segmentation is "
            f"in {new_layer.name!r}"
        )
    return new, note


def mask_name(structures: tuple[str, ...]) -> str:
    """The mask layer's name after its image: ``myocardium`` for a myocardium-only model,
    ``segmentation`` for a model of several structures (RV cavity, myocardium, LV cavity)."""
    return "myocardium" if tuple(structures) == ("myocardium",) else "segmentation"


def _add_layer(viewer: Any, kind: str, image: Any, data: np.ndarray, name: str) -> Any:
    kwargs = geometry_kwargs(image)
    if kind == "mask":
        layer = viewer.add_labels(
            data, name=name, opacity=0.6, **structure_style("predicted"), **kwargs
        )
        layer.selected_label = MYOCARDIUM  # corrections are painted as myocardium
        return layer
    return viewer.add_image(
        data,
        name=name,
        colormap="gray",
        contrast_limits=list(image.contrast_limits),
        visible=False,
        **kwargs,
    )


def write_preview(
    viewer: Any, layer: Any, data: np.ndarray, image: Any, name: str, geometry: dict[str, Any]
) -> tuple[Any, bool]:
    """Write the latent preview into ``layer`` (the plugin's), or into a new layer named
    ``name`` (a free name) when it is gone. Returns ``(layer, made a new one)``."""
    if layer is None or layer not in viewer.layers:
        layer = viewer.add_image(
            data,
            name=free_layer_name(viewer, name),
            colormap="gray",
            contrast_limits=list(image.contrast_limits),
            metadata={"sdnet_latent_of": image.name},
            **geometry,
        )
        return layer, True
    same_grid = layer.data.shape == data.shape and np.allclose(layer.scale, geometry["scale"])
    layer.data = data
    if not same_grid or layer.metadata.get("sdnet_latent_of") != image.name:
        layer.scale = geometry["scale"]
        layer.translate = geometry["translate"]
        layer.contrast_limits = list(image.contrast_limits)
        layer.metadata["sdnet_latent_of"] = image.name
    return layer, False


def add_latent_layer(
    viewer: Any, data: np.ndarray, image: Any, what: str, z: np.ndarray, geometry: dict
) -> Any:
    """A new layer ``<image> <what>`` holding a latent mix (never replaces a layer)."""
    return viewer.add_image(
        data.copy(),
        name=free_layer_name(viewer, f"{image.name} {what}"),
        colormap="gray",
        contrast_limits=list(image.contrast_limits),
        metadata={
            "sdnet_latent_of": image.name,
            "sdnet_latent": what,
            "sdnet_z": [float(v) for v in z],
            "sdnet_geometry": copy.deepcopy((image.metadata or {}).get("sdnet_geometry")),
        },
        **geometry,
    )
