"""The fine-tuning job: its worker body, and its Undo (no widgets here).

:func:`_run_job` runs in the worker: :func:`napari_sdnet.api.finetune`, then the study is
segmented with the new model.

Undo of a fine-tuning does exactly what it says, in the layer it wrote.

:meth:`FinetuneUndo.capture` is taken just before fine-tuning writes its new mask: the model in
use (and its name), the data of the mask layer it writes, and the record of what the plugin
knew. :meth:`FinetuneUndo.restore` puts them back:

* the model in use before, and the fine-tuned model leaves the session's list;
* the data of *that* layer (the one fine-tuning wrote, whatever layers were made since), except
  on slices edited after fine-tuning, which stay as the user left them;
* the record (segmentation, model, digests) only while that layer is still the study's mask;
  a newer segmentation made since stays the study's result.

It returns the sentence to show, naming the model and the layer that were restored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sdnet._napari._jobs import segment_steps
from napari_sdnet._napari._state import SDNetState, SegmentationRecord
from napari_sdnet.edits import SliceKey


@dataclass
class _Job:
    record: SegmentationRecord
    image: Any
    mask_layer: Any
    data: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, ...]
    model: Any
    keep: list[SliceKey]
    seconds: float | None
    steps: int | None
    lr: float
    freeze: tuple[str, ...]
    device: str | None
    stop: threading.Event = field(default_factory=threading.Event)
    batch_size: int = 4
    last: Any = None


def _run_job(job: _Job) -> Generator[tuple[str, Any], None, tuple[Any, Any]]:
    """Worker body: fine-tune, then segment the study with the new model."""
    from napari_sdnet import api

    gen = api.finetune(
        job.model,
        job.data,
        job.labels,
        job.spacing,
        seconds=job.seconds,
        steps=job.steps,
        lr=job.lr,
        freeze=job.freeze,
        device=job.device,
        batch_size=job.batch_size,
        stop=job.stop.is_set,
    )
    while True:
        try:
            progress = next(gen)
        except StopIteration as end:
            model = end.value
            break
        job.last = progress
        yield ("progress", progress)
    yield ("status", "segmenting the study with the fine-tuned model ...")
    seg = yield from segment_steps(model, job.data, job.spacing)
    return model, seg




@dataclass
class FinetuneUndo:
    record: SegmentationRecord
    layer: Any
    model: Any
    model_key: tuple | None
    model_name: str
    before: np.ndarray
    written: np.ndarray  # what fine-tuning wrote into the layer
    digests: tuple[str, ...]
    baseline: np.ndarray | None
    reconstruction: np.ndarray | None
    reconstruction_digests: tuple[str, ...] | None
    segmentation: Any
    frames: dict
    model_source: str
    edited: list[SliceKey]
    entry: Any = None  # the session's fine-tuned model it made

    @classmethod
    def capture(
        cls,
        state: SDNetState,
        record: SegmentationRecord,
        layer: Any,
        written: np.ndarray,
        edited: list[SliceKey],
        recon_layer: Any = None,
    ) -> FinetuneUndo:
        made = record.mask
        return cls(
            record=record,
            layer=layer,
            model=state.model,
            model_key=state.model_key,
            model_name=state.model_name(),
            before=np.array(layer.data, copy=True),
            written=written,
            digests=made.digests,
            baseline=None if made.baseline is None else made.baseline.copy(),
            reconstruction=None if recon_layer is None else np.array(recon_layer.data, copy=True),
            reconstruction_digests=None if recon_layer is None else record.reconstruction.digests,
            segmentation=record.segmentation,
            frames=dict(record.frames),
            model_source=record.model_source,
            edited=list(edited),
        )

    def restore(
        self, state: SDNetState, alive: Callable[[Any], bool],
        writing: Callable[[], AbstractContextManager],
    ) -> tuple[str, list[SliceKey]]:
        """Put everything back (see the module docstring); returns the sentence to show and
        the slices edited since fine-tuning (kept)."""
        record, layer = self.record, self.layer
        restored, kept = "", []
        if alive(layer) and layer.data.shape == self.before.shape:
            current = np.asarray(layer.data)
            data = self.before.copy()
            for key in np.ndindex(*current.shape[: current.ndim - 2]):
                if not np.array_equal(current[key], self.written[key]):  # edited since
                    data[key] = current[key]
                    kept.append(key)
            with writing():
                layer.data = data
            restored = f" and the mask in {layer.name!r} is as before fine-tuning"
            if record.mask is not None and record.mask.layer is layer:
                record.mask.digests, record.mask.baseline = self.digests, self.baseline
                recon = record.reconstruction.layer if record.reconstruction else None
                if self.reconstruction is not None and alive(recon):
                    recon.data = self.reconstruction
                    record.reconstruction.digests = self.reconstruction_digests
                record.segmentation, record.frames = self.segmentation, self.frames
                record.model_source = self.model_source
        state.use(self.model, self.model_key)
        if self.entry is not None:
            state.remove_finetuned(self.entry)
        note = f" (the {len(kept)} slice(s) edited since were kept)" if kept else ""
        return f"{self.model_name} is in use again{restored}{note}", kept
