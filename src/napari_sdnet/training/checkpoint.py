"""Model checkpoints: safetensors weights with the configuration in the same file.

One ``.safetensors`` file holds everything needed to segment: the network weights and, in the
file's string metadata, ``format = "napari-sdnet"``, a format version and a JSON ``info`` block
with the model preset (:class:`~napari_sdnet.model.ModelConfig`), the preprocessing
(:class:`~napari_sdnet.preprocess.PreprocessConfig`), the model type (``sdnet``/``unet``/``gan``),
the training data and labelled count, and metrics. Loading never unpickles anything (safetensors
holds raw tensors only), maps to the requested device, and refuses a file of another kind or a
mismatched preset with a :class:`~napari_sdnet.errors.CheckpointError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from napari_sdnet.choices import ACDC_LABELS, MODEL_TYPES, STRUCTURE_NAMES
from napari_sdnet.errors import CheckpointError, InputError
from napari_sdnet.io.files import write_or_rescue
from napari_sdnet.model import ModelConfig, SDNet
from napari_sdnet.preprocess import PreprocessConfig

FORMAT = "napari-sdnet"
FORMAT_VERSION = 1
#: A training state to resume (``napari-sdnet train --resume``), not a model.
STATE_FORMAT = "napari-sdnet-train-state"
STATE_FORMAT_VERSION = 1
_DISCRIMINATOR_PREFIXES = ("mask_discriminator.", "image_discriminator.")


@dataclass
class CheckpointInfo:
    """What a checkpoint is: how to rebuild and feed the model, and where it came from."""

    model_config: ModelConfig
    preprocess: PreprocessConfig
    model_type: str = "sdnet"
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    version: str = ""
    has_discriminators: bool = True

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise InputError(
                f"unknown model type {self.model_type!r}; choose one of {', '.join(MODEL_TYPES)}"
            )
        if self.preprocess.size != self.model_config.image_size:
            raise InputError(
                f"preprocessing size {self.preprocess.size} does not match the model's input "
                f"size {self.model_config.image_size}"
            )

    @classmethod
    def for_model(cls, model_config: ModelConfig, **kwargs: Any) -> CheckpointInfo:
        """Info for a model of ``model_config`` with its matching preprocessing.

        The preprocessing follows the preset: slices resampled to ``pixel_spacing_mm`` and
        cropped/padded to ``image_size`` (paper: 1.37 mm, 224 x 224).
        """
        kwargs.setdefault("preprocess", preprocess_config_for(model_config))
        return cls(model_config=model_config, **kwargs)

    @property
    def preset(self) -> str:
        return self.model_config.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_config": self.model_config.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "model_type": self.model_type,
            "training": self.training,
            "metrics": self.metrics,
            "created": self.created,
            "version": self.version,
            "has_discriminators": self.has_discriminators,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointInfo:
        return cls(
            model_config=ModelConfig.from_dict(data["model_config"]),
            preprocess=PreprocessConfig.from_dict(data["preprocess"]),
            model_type=data.get("model_type", "sdnet"),
            training=dict(data.get("training", {})),
            metrics=dict(data.get("metrics", {})),
            created=data.get("created", ""),
            version=data.get("version", ""),
            has_discriminators=bool(data.get("has_discriminators", True)),
        )

    def summary(self) -> str:
        """A few human-readable lines (what ``napari-sdnet info`` prints)."""
        cfg, pre = self.model_config, self.preprocess
        lines = [
            f"model type     : {self.model_type}",
            f"preset         : {cfg.name} ({cfg.image_size}x{cfg.image_size}, "
            f"{cfg.base_filters}-{cfg.unet_widths[-1]} filters, Z = {cfg.z_dim})",
            "segments       : "
            + ", ".join(f"{STRUCTURE_NAMES[s]} ({ACDC_LABELS[s]})" for s in cfg.structures),
            f"preprocessing  : {pre.target_spacing} mm/pixel, {pre.size}x{pre.size}, "
            f"clip {pre.clip_percentiles[0]}-{pre.clip_percentiles[1]} percentiles",
            f"created        : {self.created or 'unknown'} (napari-sdnet {self.version or '?'})",
        ]
        for key, value in self.training.items():
            lines.append(f"training.{key:<7}: {value}")
        for key, value in self.metrics.items():
            lines.append(f"metrics.{key:<8}: {value}")
        return "\n".join(lines)


def preprocess_config_for(model_config: ModelConfig, **overrides: Any) -> PreprocessConfig:
    """The preprocessing a model of ``model_config`` expects (its spacing and input size)."""
    return PreprocessConfig(
        target_spacing=model_config.pixel_spacing_mm, size=model_config.image_size, **overrides
    )


def _version() -> str:
    from napari_sdnet import __version__

    return __version__


def _json_default(value: Any) -> Any:
    """JSON for the values a training record may hold besides plain ones."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _info_json(info: CheckpointInfo) -> str:
    try:
        return json.dumps(info.to_dict(), default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"checkpoint info cannot be stored as JSON: {exc}") from None


def save_checkpoint(
    path: str | os.PathLike,
    model: SDNet,
    info: CheckpointInfo,
    *,
    include_discriminators: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` and ``info`` to one safetensors file, atomically.

    Without ``overwrite`` an existing file is an error. Discriminators are needed to fine-tune
    with SDNet's adversarial losses; leave them out for the smallest inference-only file.
    Weights holding NaN or infinite values are refused (:class:`CheckpointError`). When the
    final write fails (disk full, permissions changed), the file goes to the rescue folder and
    :class:`~napari_sdnet.errors.RescuedWrite` names it (see
    :func:`~napari_sdnet.io.files.write_or_rescue`).
    The file gets the user's umask (e.g. 0644).
    """

    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"model files end in .safetensors, got {path.name}")
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; choose another name or allow overwriting")
    if info.model_config != model.config:
        raise InputError("checkpoint info does not describe this model's configuration")
    state = {
        key: value.detach().to("cpu").contiguous()
        for key, value in model.state_dict().items()
        if include_discriminators or not key.startswith(_DISCRIMINATOR_PREFIXES)
    }
    info.has_discriminators = include_discriminators
    info.created = info.created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    info.version = info.version or _version()
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "info": _info_json(info),
    }
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(
            f"refusing to save {path.name}: {len(bad)} weight tensor(s) hold NaN or infinite "
            f"values (e.g. {bad[0]}); the model is broken"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_safetensors(path, state, metadata, overwrite=overwrite)
    return path


def _write_safetensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str], **kw) -> None:
    """safetensors' ``save_file`` through :func:`write_or_rescue` (atomic, umask, rescued
    when the destination fails; safetensors' own errors, e.g. a full disk, count as OS errors)."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except OSError:
            raise
        except Exception as exc:
            text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise OSError(text) from exc

    write_or_rescue(path, write, **kw)


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state`` that hold NaN or infinite values."""
    import torch

    return [
        key
        for key, value in state.items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def _open_safetensors(
    path: Path, missing: str, unreadable: str, *, tensors: bool = False
) -> tuple[dict[str, str], dict[str, Any] | None]:
    """The metadata of the safetensors file ``path`` (and, with ``tensors``, its tensors on
    the CPU). :class:`CheckpointError` with ``missing`` when there is no such file, with
    ``unreadable`` when it cannot be read; both are templates of ``{path}``, ``{name}``
    (``path.name``) and, for ``unreadable``, ``{detail}`` (the first line of the error)."""
    from safetensors import safe_open

    if tensors:  # safetensors.torch imports torch: only when the tensors are wanted
        from safetensors.torch import load_file
    if not path.is_file():
        raise CheckpointError(missing.format(path=path, name=path.name))
    loaded = None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if tensors:
            loaded = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for foreign files
        detail = str(exc).splitlines()[0][:120]
        raise CheckpointError(unreadable.format(path=path, name=path.name, detail=detail)) from None
    return metadata, loaded


def read_checkpoint_info(path: str | os.PathLike) -> CheckpointInfo:
    """Read only the configuration of a checkpoint (no weights are loaded)."""
    path = Path(path)
    metadata, _ = _open_safetensors(
        path,
        "model file not found: {path}",
        "{name} is not a napari-sdnet model (not a readable safetensors file: {detail})",
    )
    if metadata.get("format") == STATE_FORMAT:
        raise CheckpointError(
            f"{path.name} is a saved training state (to continue with `napari-sdnet train "
            "--resume`), not a model; use the model file the training wrote"
        )
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path.name} is a safetensors file but not a napari-sdnet model "
            "(no napari-sdnet metadata)"
        )
    try:
        version = int(metadata.get("format_version", "0"))
    except ValueError:
        version = -1
    if version < 1 or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path.name} has model format version {metadata.get('format_version')!r}; this "
            f"napari-sdnet reads version {FORMAT_VERSION} (update napari-sdnet?)"
        )
    try:
        return CheckpointInfo.from_dict(json.loads(metadata["info"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path.name} has corrupt napari-sdnet metadata: {exc}") from None


def load_checkpoint(
    path: str | os.PathLike,
    device: Any = "cpu",
    expected_preset: str | None = None,
) -> tuple[SDNet, CheckpointInfo]:
    """Rebuild the model stored in ``path`` on ``device`` (eval mode) and return it with its info.

    Raises :class:`CheckpointError` for a missing file, a file of another kind, a preset other
    than ``expected_preset`` or weights that do not fit the stored configuration.
    """
    import torch
    from safetensors.torch import load_file

    info = read_checkpoint_info(path)
    name = Path(path).name
    if expected_preset is not None and info.preset != expected_preset:
        raise CheckpointError(
            f"{name} holds a {info.preset!r} model, but a {expected_preset!r} model was expected"
        )
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{name}: cannot read the weights ({exc})") from None
    model = SDNet(info.model_config)
    expected = model.state_dict()
    if not info.has_discriminators:
        state = {
            **{k: v for k, v in expected.items() if k.startswith(_DISCRIMINATOR_PREFIXES)},
            **state,
        }
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(
            f"{name} is broken: {len(bad)} weight tensor(s) hold NaN or infinite values "
            f"(e.g. {bad[0]}); it would segment nothing. Use another model file"
        )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            details.append(f"{len(wrong)} of another shape (e.g. {wrong[0]})")
        raise CheckpointError(
            f"{name}: weights do not match the {info.preset!r} preset it declares: "
            + "; ".join(details)
        )
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    model.to(device)
    model.eval()
    return model, info


# ------------------------------------------------------------------------------------------
# training states (resume)
# ------------------------------------------------------------------------------------------


def train_state_path(output: str | os.PathLike) -> Path:
    """Where ``napari-sdnet train -o OUTPUT`` keeps its resumable state: ``OUTPUT`` with the
    suffix ``.resume.safetensors`` (e.g. ``model.resume.safetensors``)."""
    output = Path(output)
    return output.with_name(output.name.removesuffix(".safetensors") + ".resume.safetensors")


def save_train_state(path: str | os.PathLike, state: Any, recipe: dict[str, Any]) -> Path:
    """Write a :class:`~napari_sdnet.training.trainer.TrainState` and the ``recipe`` (the
    settings it was started with) to one safetensors file, atomically, replacing the last."""

    path = Path(path)
    metadata = {
        "format": STATE_FORMAT,
        "format_version": str(STATE_FORMAT_VERSION),
        "meta": json.dumps(state.meta, default=_json_default),
        "recipe": json.dumps(recipe, default=_json_default),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "version": _version(),
    }
    _write_safetensors(path, state.tensors, metadata, overwrite=True)
    return path


def load_train_state(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Read what :func:`save_train_state` wrote: ``(TrainState, recipe)``."""
    from napari_sdnet.training.trainer import TrainState

    path = Path(path)
    metadata, tensors = _open_safetensors(
        path,
        "no saved training state at {path}: nothing to resume",
        "{name}: not a readable training state ({detail})",
        tensors=True,
    )
    if metadata.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path.name} is not a napari-sdnet training state")
    if metadata.get("format_version") != str(STATE_FORMAT_VERSION):
        raise CheckpointError(
            f"{path.name}: training state version {metadata.get('format_version')!r}; this "
            f"napari-sdnet resumes version {STATE_FORMAT_VERSION}"
        )
    try:
        meta = json.loads(metadata["meta"])
        recipe = json.loads(metadata["recipe"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path.name}: corrupt training state ({exc})") from None
    return TrainState(tensors=tensors, meta=meta), recipe
