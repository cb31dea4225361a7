"""Loading and wrapping models: :class:`Model` (network + checkpoint info + device) and
:func:`load_model` (the bundled model or a ``.safetensors`` file). Re-exported by
:mod:`napari_sdnet.api`. torch is imported lazily."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_sdnet.errors import CheckpointError, InputError
from napari_sdnet.preprocess import PreprocessConfig

if TYPE_CHECKING:
    import torch

    from napari_sdnet.model import ModelConfig, SDNet
    from napari_sdnet.training.checkpoint import CheckpointInfo

#: File name of the bundled model inside ``napari_sdnet/weights``.
BUNDLED_MODEL = "sdnet_compact_acdc3.safetensors"


@dataclass(eq=False)
class Model:
    """A loaded SDNet: the network, what it is (:class:`CheckpointInfo`) and its device.

    Attributes:
        network: the :class:`~napari_sdnet.model.SDNet` (eval mode, on ``device``).
        info: its checkpoint information (preset, preprocessing, model type, training, metrics).
        device: the ``torch.device`` the network lives on.
        source: where it came from: ``"bundled"``, a file path, ``"finetuned(<base>)"`` or
            ``"in-memory"``.
    """

    network: SDNet
    info: CheckpointInfo
    device: torch.device
    source: str = "in-memory"

    @classmethod
    def from_network(
        cls,
        network: SDNet,
        info: CheckpointInfo | None = None,
        source: str = "in-memory",
    ) -> Model:
        """Wrap an in-memory network (e.g. one being trained).

        Without ``info``, the preprocessing is the one the preset was designed for
        (``pixel_spacing_mm`` and ``image_size`` of its config) and the model type ``sdnet``.
        """
        from napari_sdnet.training.checkpoint import CheckpointInfo

        if info is None:
            info = CheckpointInfo.for_model(network.config)
        device = next(network.parameters()).device
        return cls(network=network, info=info, device=device, source=source)

    @property
    def config(self) -> ModelConfig:
        """The network's :class:`~napari_sdnet.model.ModelConfig` (preset)."""
        return self.info.model_config

    @property
    def preprocess(self) -> PreprocessConfig:
        """How images must be prepared for this model (pixel size, grid size, clipping)."""
        return self.info.preprocess

    @property
    def model_type(self) -> str:
        """``sdnet``, ``unet`` or ``gan``."""
        return self.info.model_type

    @property
    def has_trained_reconstructor(self) -> bool:
        """False for ``unet``/``gan`` models: their reconstructor g was never trained."""
        return self.info.model_type == "sdnet"

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        include_discriminators: bool = True,
    ) -> Path:
        """Write the model to a ``.safetensors`` file (atomic; refuses to overwrite by default).

        Keep the discriminators (default) to be able to fine-tune the saved model with SDNet's
        adversarial losses later.
        """
        from napari_sdnet.training.checkpoint import save_checkpoint

        return save_checkpoint(
            path,
            self.network,
            self.info,
            include_discriminators=include_discriminators,
            overwrite=overwrite,
        )

    def __repr__(self) -> str:
        cfg = self.config
        return (
            f"Model({self.model_type}, preset={cfg.name!r}, {cfg.image_size}x{cfg.image_size} at "
            f"{self.preprocess.target_spacing} mm, device={self.device}, source={self.source!r})"
        )


def bundled_model_path() -> Path:
    """Where the bundled model file lives (it may not be installed yet)."""
    return Path(str(files("napari_sdnet") / "weights" / BUNDLED_MODEL))


_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


def model_file(source: str | os.PathLike[str]) -> tuple[Path, str]:
    """The file a model source names and its label: ``"bundled"`` (the shipped model) or a
    path. One rule for the API, the CLI and the widgets.

    Raises:
        InputError: not a string or path (e.g. None).
        CheckpointError: no bundled model installed, or a folder instead of a file.
    """
    if source is None or not isinstance(source, str | os.PathLike):
        raise InputError(
            f"load_model needs 'bundled' or a model file path, got {type(source).__name__}"
        )
    if isinstance(source, str) and source.strip().lower() == "bundled":
        path = bundled_model_path()
        if not path.is_file():
            raise CheckpointError(
                "no bundled model is installed yet; pass a model file (.safetensors)"
            )
        return path, "bundled"
    path = Path(source)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass a .safetensors model file")
    return path, str(path)


@contextlib.contextmanager
def refuse_pickles(path: Path) -> Iterator[None]:
    """Turn a failed read of a PyTorch pickle (``.pt``, ``.pth``, ...) into the message that
    such files are never loaded (they could run code)."""
    try:
        yield
    except CheckpointError as exc:
        if path.suffix.lower() in _PICKLE_SUFFIXES and path.is_file():
            raise CheckpointError(
                f"{path.name}: napari-sdnet reads its own .safetensors model files only; "
                f"{path.suffix} files (PyTorch pickles) are never loaded"
            ) from exc
        raise


def load_model(source: str | os.PathLike[str] = "bundled", device: Any = "auto") -> Model:
    """Load a model file (or the bundled model) onto a device.

    Args:
        source: ``"bundled"`` for the model shipped with the package, or the path of a
            napari-sdnet ``.safetensors`` model file.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cuda"``, ``"cuda:1"``, ``"mps"``,
            ``"cpu"`` or a ``torch.device``.

    Raises:
        CheckpointError: missing file, no bundled model installed, a file of another kind
            (e.g. a PyTorch ``.pt`` pickle, which is never loaded) or weights that do not fit.
        InputError: a device that is not available.

    ``unet`` / ``gan`` models (baselines) load fine but warn: their reconstructor was never
    trained, so reconstructions and latent mixing are meaningless for them.
    """
    from napari_sdnet.device import resolve_device
    from napari_sdnet.training.checkpoint import load_checkpoint

    path, label = model_file(source)
    dev = resolve_device(device)
    with refuse_pickles(path):
        network, info = load_checkpoint(path, device=dev)
    model = Model(network=network, info=info, device=dev, source=label)
    if not model.has_trained_reconstructor:
        warnings.warn(
            f"{path.name} is a {info.model_type!r} model: it segments, but its reconstructor "
            "was never trained, so reconstructions and latent mixing are meaningless",
            UserWarning,
            stacklevel=2,
        )
    return model


def _as_model(model: Any) -> Model:
    if isinstance(model, Model):
        return model
    from napari_sdnet.model import SDNet

    if isinstance(model, SDNet):
        return Model.from_network(model)
    raise InputError(
        f"expected a Model from napari_sdnet.api.load_model, got {type(model).__name__}"
    )
