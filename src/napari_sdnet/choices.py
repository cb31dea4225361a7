"""The named options shared by the library, the CLI and the benchmarks, in one place.

This module imports nothing, so the command line can offer these choices (``--help``, argument
checking) without loading PyTorch; the modules that implement them import the same tuples.
"""

from __future__ import annotations

#: Shipped network presets (:data:`napari_sdnet.model.presets.PRESETS` has their configs).
PRESET_NAMES = ("paper", "compact", "tiny")
#: What can be trained: SDNet and the paper's two baselines.
MODEL_TYPES = ("sdnet", "unet", "gan")
#: Which validated weights training keeps: best Dice or lowest reconstruction error.
SELECT_ON = ("dice", "reconstruction")
#: Learning rate over a training or fine-tuning budget (constant, or cosine down to 0).
LR_SCHEDULES = ("constant", "cosine")
#: How a labelled count is counted (see :func:`napari_sdnet.io.datasets.split_labelled`).
LABELLED_BY = ("images", "volumes", "patients")
#: Where the mask discriminator's real masks come from: all training masks or the labelled ones.
REAL_MASKS = ("all", "labelled")
#: Structures a model can segment, in channel order, with their ACDC label values (this
#: project's convention: 1 RV cavity, 2 myocardium, 3 LV cavity).
STRUCTURES = ("rv", "myocardium", "lv")
ACDC_LABELS = {"rv": 1, "myocardium": 2, "lv": 3}
STRUCTURE_NAMES = {"rv": "RV cavity", "myocardium": "myocardium", "lv": "LV cavity"}


def labels_text(values) -> str:
    """ACDC label values in words: ``myocardium (label 2)``, or ``RV cavity, myocardium or LV
    cavity (labels 1, 2, 3)``; a value of no structure is ``label N``."""
    by_value = {v: STRUCTURE_NAMES[k] for k, v in ACDC_LABELS.items()}
    values = [int(v) for v in values]
    names = [by_value.get(v, f"label {v}") for v in values]
    if len(values) == 1:
        return f"{names[0]} (label {values[0]})"
    nums = ", ".join(str(v) for v in values)
    return f"{', '.join(names[:-1])} or {names[-1]} (labels {nums})"

#: What ``train --structures`` offers: the paper's myocardium alone, or all three.
STRUCTURE_SETS = {"myocardium": ("myocardium",), "all": STRUCTURES}
#: Inference engines of ``napari-sdnet predict`` (:func:`napari_sdnet.onnx_engine.choose_engine`).
ENGINES = ("auto", "torch", "onnx")
