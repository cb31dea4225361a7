"""Per-viewer state shared by the napari-sdnet dock widgets.

One :class:`SDNetState` per napari viewer (:func:`get_state`), never a module-level model or
result: two viewers never see each other's model or layers. It holds

* the loaded :class:`~napari_sdnet.api.Model`, with the source and device it was loaded from
  (so the widgets reuse it instead of loading the file again);
* per segmented image layer a :class:`SegmentationRecord`: the
  :class:`~napari_sdnet.api.Segmentation` (Z of every slice, model-grid masks and
  reconstructions, the :class:`~napari_sdnet.preprocess.SliceGrid`) and the layers the plugin
  made for it, each with digests of its data as the plugin last wrote it, so a user's edits
  (painting on the mask) are detected and never overwritten.

It is a psygnal evented dataclass: ``state.events.model.connect(...)``,
``state.events.busy.connect(...)``; ``state.record_changed`` is emitted with the record after
each segmentation. The fine-tuning and latent-mixing widgets read the same object.

Layers are held through weak references and records are keyed weakly by the image layer, so
deleting a layer from the viewer frees what the state kept for it. Nothing here imports Qt.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal, evented

if TYPE_CHECKING:
    from napari.layers import Layer

    from napari_sdnet.api import Segmentation

__all__ = [
    "MadeLayer",
    "SDNetState",
    "SegmentationRecord",
    "data_digests",
    "get_state",
    "unwrap",
]


def unwrap(obj: Any) -> Any:
    """The real object behind napari's ``PublicOnlyProxy`` (what widgets and commands get).

    A new proxy is made on each access, so proxies cannot key weak dictionaries: the state is
    always keyed by the real viewer and layers.
    """
    from wrapt import ObjectProxy

    while isinstance(obj, ObjectProxy):
        obj = obj.__wrapped__
    return obj


def _digest(array: np.ndarray) -> str:
    arr = np.ascontiguousarray(array)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def data_digests(data: Any) -> tuple[str, ...]:
    """Digests of a layer's data: one per frame (first axis) for 4D data, else one.

    Per-frame digests let the segmentation widget write one frame of a 4D mask in place while
    the user's edits in other frames stay as they are.
    """
    arr = np.asarray(data)
    if arr.ndim == 4:
        return tuple(_digest(frame) for frame in arr)
    return (_digest(arr),)


@dataclass(eq=False)
class MadeLayer:
    """A layer the plugin made, with digests of its data as the plugin last wrote it.

    Attributes:
        kind: ``"mask"`` or ``"reconstruction"``.
        name: the name it was given (the user may rename it; :attr:`layer` still finds it).
        digests: :func:`data_digests` of its data after the plugin's last write.
    """

    layer_ref: weakref.ref
    kind: str
    name: str
    digests: tuple[str, ...]

    @classmethod
    def track(cls, layer: Layer, kind: str) -> MadeLayer:
        layer = unwrap(layer)
        return cls(weakref.ref(layer), kind, layer.name, data_digests(layer.data))

    @property
    def layer(self) -> Layer | None:
        """The layer, or None once it has been deleted."""
        return self.layer_ref()

    def untouched(self, frame: int | None = None) -> bool:
        """Whether the data are still what the plugin wrote (in ``frame`` only, if given)."""
        layer = self.layer
        if layer is None:
            return False
        now = data_digests(layer.data)
        if len(now) != len(self.digests):
            return False
        if frame is None:
            return now == self.digests
        return 0 <= frame < len(now) and now[frame] == self.digests[frame]

    def mark_written(self) -> None:
        """Record the layer's current data as the plugin's (after the plugin wrote it)."""
        layer = self.layer
        if layer is not None:
            self.digests = data_digests(layer.data)


@dataclass(eq=False)
class SegmentationRecord:
    """What the plugin knows about one segmented image layer.

    Attributes:
        image_ref: weak reference to the image layer.
        image_name: its name when it was segmented.
        segmentation: the last whole-image result (``None`` if only single frames of a 4D
            study were segmented).
        frames: single-frame results of a 4D study (frame index -> 3D Segmentation), from the
            widget's "current frame" mode; a whole-image run clears them.
        model_source: the model that made the result (``Model.source``).
        mask, reconstruction: the plugin's current layers for this image.
        made: every layer the plugin made for this image (older ones included, e.g. a mask the
            user painted on, after which a new ``... [2]`` layer was made).
    """

    image_ref: weakref.ref
    image_name: str
    segmentation: Segmentation | None = None
    frames: dict[int, Segmentation] = field(default_factory=dict)
    model_source: str = ""
    mask: MadeLayer | None = None
    reconstruction: MadeLayer | None = None
    made: list[MadeLayer] = field(default_factory=list)

    @property
    def image(self) -> Layer | None:
        return self.image_ref()

    def result_for(self, frame: int | None = None) -> tuple[Segmentation, tuple[int, ...]] | None:
        """The result covering ``frame`` of a 4D study (or the whole image) and the index of
        that frame inside it: ``(seg, (frame,))`` for a whole-study result, ``(seg, ())`` for a
        single-frame one. A single-frame result wins (it is the most recent for that frame)."""
        if frame is not None and frame in self.frames:
            return self.frames[frame], ()
        if self.segmentation is None:
            return None
        if frame is None or self.segmentation.mask.ndim < 4:
            return self.segmentation, ()
        return self.segmentation, (frame,)


@evented
@dataclass(eq=False)
class SDNetState:
    """State of the napari-sdnet widgets in one viewer (see the module docstring).

    Evented fields: ``model`` (the loaded :class:`~napari_sdnet.api.Model` or None),
    ``model_key`` (what it was loaded from: ``(source, device choice, file mtime)``),
    ``busy`` (a widget is running a job on this viewer).
    """

    model: Any = None
    model_key: tuple | None = None
    busy: bool = False

    #: emitted with the :class:`SegmentationRecord` after a segmentation result is stored
    record_changed = Signal(object)

    def __post_init__(self) -> None:
        # not dataclass fields: no events, no repr
        self._records: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._made: weakref.WeakSet = weakref.WeakSet()

    def record_for(self, image: Layer) -> SegmentationRecord | None:
        """The record of an image layer, or None if it was never segmented."""
        return self._records.get(unwrap(image))

    def new_record(self, image: Layer) -> SegmentationRecord:
        """The record of ``image``, created if needed."""
        image = unwrap(image)
        record = self._records.get(image)
        if record is None:
            record = SegmentationRecord(weakref.ref(image), image.name)
            self._records[image] = record
        return record

    def records(self) -> Iterator[SegmentationRecord]:
        """Records of the image layers that still exist."""
        return iter(list(self._records.values()))

    def add_made(self, made: MadeLayer) -> None:
        """Remember a layer as made by the plugin."""
        layer = made.layer
        if layer is not None:
            self._made.add(layer)

    def is_made_by_plugin(self, layer: Layer) -> bool:
        """Whether the plugin made this layer (it never touches any other)."""
        return unwrap(layer) in self._made

    def forget_model(self) -> None:
        """Drop the loaded model (e.g. after running out of GPU memory)."""
        self.model = None
        self.model_key = None


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_state(viewer: Any) -> SDNetState:
    """The :class:`SDNetState` of a napari viewer (created on first use, freed with it)."""
    viewer = unwrap(viewer)
    state = _STATES.get(viewer)
    if state is None:
        state = SDNetState()
        _STATES[viewer] = state
    return state
