"""SDNet networks and presets (pure PyTorch; no Qt or napari imports).

``SDNet(config)`` holds the decomposer f (U-Net mask head + Z head), the reconstructor g and the
two PatchGAN discriminators; ``ModelConfig`` and the presets ``paper``, ``compact``, ``tiny``
describe their sizes.

The names of :mod:`napari_sdnet.model.networks` (``SDNet``, ``binarise``, ...) are imported, and
torch with them, on first use, so that the presets (:mod:`napari_sdnet.model.presets`, plain
Python) can be read without torch, e.g. by the ONNX Runtime engine
(:mod:`napari_sdnet.onnx_engine`).
"""

from __future__ import annotations

import importlib
from typing import Any

from napari_sdnet.model.presets import PRESETS as PRESETS
from napari_sdnet.model.presets import ModelConfig as ModelConfig
from napari_sdnet.model.presets import get_preset as get_preset
from napari_sdnet.model.presets import preset_names as preset_names

_PRESET_NAMES = ("PRESETS", "ModelConfig", "get_preset", "preset_names")


def __getattr__(name: str) -> Any:
    if name.startswith("_") and name != "__all__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    networks = importlib.import_module("napari_sdnet.model.networks")
    if name == "__all__":
        return sorted([*_PRESET_NAMES, *networks.__all__])
    if name not in networks.__all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(networks, name)
    globals()[name] = value
    return value
