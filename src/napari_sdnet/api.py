"""Headless API: load a model, segment, reconstruct, evaluate and fine-tune (no Qt, no napari).

The napari widgets and the ``napari-sdnet`` command line are thin shells over these functions::

    from napari_sdnet import api

    model = api.load_model("my_model.safetensors")           # or "bundled"
    seg = api.segment(model, image, spacing=(10.0, 1.25, 1.25))
    seg.mask             # uint8, image.shape, 1 = myocardium
    api.to_acdc_labels(seg.mask)                               # 2 = myocardium (ACDC)

Arrays follow napari's axis order (the last two axes are the in-plane ``(y, x)``): 2D
``(y, x)``, 3D ``(z, y, x)``, 4D cine ``(t, z, y, x)``. ``spacing`` is given per array axis in
that order, or as the in-plane ``(sy, sx)`` only.

This module is a facade: the functions live in modules by concern, each importable on its own
(:mod:`napari_sdnet.models`, :mod:`napari_sdnet.segmentation`, :mod:`napari_sdnet.evaluation`,
:mod:`napari_sdnet.finetuning`, :mod:`napari_sdnet.measurement`, :mod:`napari_sdnet.latent`,
:mod:`napari_sdnet.cardiac`, :mod:`napari_sdnet.generators`), over preprocessing
(:mod:`napari_sdnet.preprocess`), batched inference (:mod:`napari_sdnet.inference`), the data
loaders (:mod:`napari_sdnet.io`), the training loop and checkpoints
(:mod:`napari_sdnet.training`). See ``docs/api.md`` and ``docs/architecture.md``.
"""

from __future__ import annotations

from napari_sdnet.cardiac import (
    CardiacFunction,
    measure_ed_es,
    measure_labels,
    measure_segmentation,
    segmented_structures,
)
from napari_sdnet.evaluation import EvaluationResult, evaluate
from napari_sdnet.finetuning import (
    FINETUNE_LR,
    FINETUNE_SCHEDULE,
    FINETUNE_STEPS,
    finetune,
    finetune_loss_weights,
)
from napari_sdnet.generators import run
from napari_sdnet.io.slices import MYOCARDIUM  # ACDC value of the model's binary mask
from napari_sdnet.latent import (  # latent space exploration (docs/api.md, "Latent mixing")
    Figure3,
    LatentSlice,
    figure3,
    interpolate_z,
    latent_slice,
    mix,
    mix_slices,
    mix_z,
    offset_z,
    save_figure3,
)
from napari_sdnet.measurement import measure
from napari_sdnet.models import BUNDLED_MODEL, Model, bundled_model_path, load_model
from napari_sdnet.segmentation import (
    THRESHOLD,
    Segmentation,
    reconstruct,
    segment,
    segment_iter,
    structure_masks,
    to_acdc_labels,
)

__all__ = [
    "BUNDLED_MODEL",
    "MYOCARDIUM",
    "THRESHOLD",
    "EvaluationResult",
    "Model",
    "Segmentation",
    "bundled_model_path",
    "evaluate",
    "finetune",
    "load_model",
    "reconstruct",
    "run",
    "segment",
    "segment_iter",
    "structure_masks",
    "to_acdc_labels",
    # fine-tuning defaults
    "FINETUNE_LR",
    "FINETUNE_SCHEDULE",
    "FINETUNE_STEPS",
    "finetune_loss_weights",
    # latent space exploration (napari_sdnet.latent)
    "Figure3",
    "LatentSlice",
    "figure3",
    "interpolate_z",
    "latent_slice",
    "mix",
    "mix_slices",
    "mix_z",
    "offset_z",
    "save_figure3",
    # cardiac function (napari_sdnet.cardiac)
    "CardiacFunction",
    "measure",
    "measure_ed_es",
    "measure_labels",
    "measure_segmentation",
    "segmented_structures",
]
