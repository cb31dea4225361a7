"""SDNet networks and presets (pure PyTorch; no Qt or napari imports).

``SDNet(config)`` holds the decomposer f (U-Net mask head + Z head), the reconstructor g and the
two PatchGAN discriminators; ``ModelConfig`` and the presets ``paper``, ``compact``, ``tiny``
describe their sizes.
"""

from napari_sdnet.model.networks import (
    Decomposer,
    Discriminator,
    Reconstructor,
    SDNet,
    SDNetOutput,
    binarise,
    build_model,
    count_parameters,
    hard_channels,
    mask_from_logits,
)
from napari_sdnet.model.presets import PRESETS, ModelConfig, get_preset, preset_names

__all__ = [
    "PRESETS",
    "Decomposer",
    "Discriminator",
    "ModelConfig",
    "Reconstructor",
    "SDNet",
    "SDNetOutput",
    "binarise",
    "build_model",
    "count_parameters",
    "get_preset",
    "hard_channels",
    "mask_from_logits",
    "preset_names",
]
