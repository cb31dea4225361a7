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
