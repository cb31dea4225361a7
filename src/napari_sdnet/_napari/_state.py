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
    "ModelEntry",
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
        baseline: for a mask, a copy of what the plugin wrote (the model's labels): the slices
            that differ from it are the user's corrections (:mod:`napari_sdnet.edits`).
    """

    layer_ref: weakref.ref
    kind: str
    name: str
    digests: tuple[str, ...]
    baseline: np.ndarray | None = None

    @classmethod
    def track(cls, layer: Layer, kind: str) -> MadeLayer:
        layer = unwrap(layer)
        made = cls(weakref.ref(layer), kind, layer.name, data_digests(layer.data))
        if kind == "mask":
            made.baseline = np.array(layer.data, copy=True)
        return made

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

    def mark_written(self, frame: int | None = None) -> None:
        """Record the layer's current data (of ``frame`` only, for the baseline) as the
        plugin's, after the plugin wrote it."""
        layer = self.layer
        if layer is None:
            return
        self.digests = data_digests(layer.data)
        if self.kind == "mask":
            if frame is None or self.baseline is None or self.baseline.shape != layer.data.shape:
                self.baseline = np.array(layer.data, copy=True)
            else:
                self.baseline[frame] = layer.data[frame]

    def set_written(self, values: np.ndarray) -> None:
        """What the plugin wrote is ``values`` (the layer may hold the user's slices too)."""
        self.digests = data_digests(values)
        if self.kind == "mask":
            self.baseline = np.array(values, copy=True)


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


@dataclass(eq=False)
class ModelEntry:
    """A model fine-tuned in this viewer, kept in the session's history.

    Attributes:
        name: unique in the session (``"fine-tuned 1"``); the widgets offer it by this name.
        model: the :class:`~napari_sdnet.api.Model`.
        detail: what it is (``"60 steps on 2 slices of 'SC-HF-I-1 cine', from bundled"``).
        base: the name of the model it was fine-tuned from.
        saved_to: the file it was last saved to ("" while unsaved).
    """

    name: str
    model: Any
    detail: str = ""
    base: str = ""
    saved_to: str = ""

    @property
    def key(self) -> tuple:
        return (f"session:{self.name}", None, None)

    @property
    def label(self) -> str:
        saved = f", saved as {self.saved_to.rsplit('/', 1)[-1]}" if self.saved_to else ""
        return f"{self.name}{saved}"


@evented
@dataclass(eq=False)
class SDNetState:
    """State of the napari-sdnet widgets in one viewer (see the module docstring).

    Evented fields: ``model`` (the loaded :class:`~napari_sdnet.api.Model` or None),
    ``model_key`` (what it was loaded from: ``(source, device choice, file mtime)``),
    ``busy`` (a widget is running a job on this viewer), ``job`` (what runs: "segmentation",
    "fine-tuning"; empty when idle). One job at a time per viewer: :meth:`begin_job`.
    """

    model: Any = None
    model_key: tuple | None = None
    busy: bool = False
    job: str = ""

    #: emitted with the :class:`SegmentationRecord` after a segmentation result is stored
    record_changed = Signal(object)
    #: emitted when a fine-tuned model is added to or removed from the session
    models_changed = Signal()

    def __post_init__(self) -> None:
        # not dataclass fields: no events, no repr
        self._records: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._made: weakref.WeakSet = weakref.WeakSet()
        self._finetuned: list[ModelEntry] = []
        self._counter = 0

    # -- the models of the session --------------------------------------------------------------
    def finetuned_models(self) -> list[ModelEntry]:
        """The models fine-tuned in this viewer, oldest first."""
        return list(self._finetuned)

    def entry_in_use(self) -> ModelEntry | None:
        """The fine-tuned model in use, or None (the bundled model or a file is, or none)."""
        key = self.model_key
        return next((e for e in self._finetuned if key and key[0] == e.key[0]), None)

    def model_name(self) -> str:
        """The name of the model in use, for messages ("bundled model", a file name, ...)."""
        entry = self.entry_in_use()
        if entry is not None:
            return entry.name
        if self.model is None:
            return "no model"
        source = str(self.model.source)
        return "bundled model" if source == "bundled" else source.rsplit("/", 1)[-1]

    def add_finetuned(self, model: Any, detail: str, base: str) -> ModelEntry:
        """Keep a fine-tuned model and put it in use."""
        self._counter += 1
        entry = ModelEntry(f"fine-tuned {self._counter}", model, detail, base)
        self._finetuned.append(entry)
        self.use(entry.model, entry.key)
        self.models_changed.emit()
        return entry

    def remove_finetuned(self, entry: ModelEntry) -> None:
        if entry in self._finetuned:
            self._finetuned.remove(entry)
            self.models_changed.emit()

    def find_finetuned(self, name: str) -> ModelEntry | None:
        return next((e for e in self._finetuned if e.name == name), None)

    def use(self, model: Any, key: tuple | None) -> None:
        """Put ``model`` (loaded from ``key``) in use; the model choosers follow."""
        self.model_key = key
        self.model = model
        self.models_changed.emit()

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

    def begin_job(self, name: str) -> bool:
        """Hold the viewer for a job; False when another job runs (nothing changes)."""
        if self.busy:
            return False
        self.job = name
        self.busy = True
        return True

    def end_job(self, name: str) -> None:
        """Release the viewer after the job ``name``."""
        if self.job == name:
            self.busy = False
            self.job = ""

    def busy_reason(self) -> str:
        """Why a widget cannot start a job now ("" when it can)."""
        if not self.busy:
            return ""
        return f"a {self.job or 'job'} is running on this viewer; wait for it or stop it"

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
