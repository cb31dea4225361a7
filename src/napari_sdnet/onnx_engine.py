"""ONNX Runtime engine for the mask path of ``napari-sdnet predict`` (no torch import when cached).

PyTorch takes most of a short ``predict``'s time just to import (docs/benchmarks.md, "Predict
speed"), so the mask path (image -> soft mask M, exactly what :func:`napari_sdnet.inference.
iter_predict` computes for ``outputs=("mask",)``: the BatchNorm-folded inference copy, fp32) can
run on ONNX Runtime instead:

* **Export once, cached.** The first use exports the mask path with ``torch.onnx.export``
  (TorchScript exporter, dynamic batch axis) to ``$SDNET_CACHE_DIR/onnx/`` (default
  ``~/.cache/napari-sdnet/onnx/``), written atomically, named by the SHA-256 of the model file's
  bytes and :data:`EXPORT_VERSION` (bumped whenever the exported graph changes). The preset and
  preprocessing travel in the ONNX file's metadata, so a later run needs neither torch nor the
  weights' loader: it hashes the model file, opens the cached graph and segments.
* **Robust.** A cached file that does not open (corrupt, truncated, from another exporter) is
  exported again; a cache folder that cannot be written means: ``engine="auto"`` uses torch,
  ``engine="onnx"`` runs the graph from memory. A model file that is not a valid model never
  gets a cached graph: it goes through :func:`napari_sdnet.models.load_model` and its errors.
* **Where it runs.** CPU only, fp32 (ONNX Runtime's CPU kernels have no bf16 convolutions),
  ``threads`` intra-op threads (default: ``OMP_NUM_THREADS`` when set, else ONNX Runtime's
  choice, the physical cores, as PyTorch's default). Masks agree with the torch fp32 path
  (``tests/test_onnx_engine.py``, the real sample study).

:func:`load_predictor` chooses the engine (:func:`choose_engine`, the rule is in its
docstring) and returns either a torch :class:`~napari_sdnet.models.Model` or an
:class:`OnnxModel`; :func:`napari_sdnet.segmentation.segment` takes both.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sdnet import choices
from napari_sdnet.errors import InputError
from napari_sdnet.io.files import atomic_write
from napari_sdnet.model.presets import ModelConfig
from napari_sdnet.models import load_model, model_file
from napari_sdnet.preprocess import PreprocessConfig

if TYPE_CHECKING:
    from napari_sdnet.models import Model

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINE_CHOICES",
    "EXPORT_VERSION",
    "OnnxModel",
    "cache_dir",
    "cache_path",
    "choose_engine",
    "export_mask_onnx",
    "load_predictor",
]

#: ``--engine`` choices of ``napari-sdnet predict``.
ENGINE_CHOICES = choices.ENGINES
DEFAULT_ENGINE = "auto"
#: Part of every cache key: bump it whenever the exported graph changes.
EXPORT_VERSION = 2
OPSET = 17
#: Slices per ``session.run`` (batch 8-48 ran within noise of each other on 2 cores).
DEFAULT_BATCH_SIZE = 16
_INFO_KEY = "napari_sdnet.info"
_INPUT, _OUTPUT = "image", "mask"


# --------------------------------------------------------------------------------- the model
@dataclass(eq=False)
class OnnxModel:
    """A model's mask path on ONNX Runtime: what :func:`~napari_sdnet.segmentation.segment`
    needs of a :class:`~napari_sdnet.models.Model` for masks (no Z, no reconstruction)."""

    session: Any  # onnxruntime.InferenceSession
    config: ModelConfig
    preprocess: PreprocessConfig
    model_type: str = "sdnet"
    source: str = "in-memory"
    #: the cached graph it runs (None: run from memory, the cache folder was not writable)
    onnx_path: Path | None = None
    device = "cpu"
    precision = "fp32"

    @property
    def has_trained_reconstructor(self) -> bool:
        return self.model_type == "sdnet"

    def iter_predict(
        self, images: np.ndarray, batch_size: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Soft masks of ``images`` (N, S, S) in batches: yields ``(n_done, mask)``, the mask
        ``(B, S, S)`` (``(B, C, S, S)`` for C structures), float32."""
        images = np.asarray(images, dtype=np.float32)
        batch_size = batch_size or DEFAULT_BATCH_SIZE
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size][:, None])
            (mask,) = self.session.run([_OUTPUT], {_INPUT: batch})
            yield min(start + batch_size, len(images)), mask[:, 0] if mask.shape[1] == 1 else mask

    def __repr__(self) -> str:
        where = self.onnx_path or "in memory"
        return f"OnnxModel({self.model_type}, {self.config.name!r}, {self.source!r}, {where})"


# ----------------------------------------------------------------------------------- the rule
def _gpu_visible() -> bool:
    """Whether PyTorch's ``auto`` device could be a GPU here (checked without importing it)."""
    if sys.platform == "darwin":  # MPS
        return True
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd"))


def choose_engine(
    engine: str = DEFAULT_ENGINE,
    *,
    device: Any = "auto",
    outputs: Collection[str] = ("mask",),
    precision: str | None = "auto",
) -> str:
    """``"torch"`` or ``"onnx"`` for an engine setting (before anything is loaded).

    ``torch``: always torch. ``onnx``: ONNX Runtime, which computes masks only, on the CPU, in
    fp32; anything else is an :class:`InputError`, as is a missing ``onnxruntime``. ``auto``
    (default): ONNX Runtime when only masks are wanted, the device is the CPU (``cpu``, or
    ``auto`` with no GPU visible), the precision ``auto`` or ``fp32`` and ``onnxruntime`` can
    be imported; torch otherwise (Z, reconstructions, GPUs, bf16/fp16 stay on torch). Whether
    the cached graph exists or can be made is decided by :func:`load_predictor`.
    """
    choice = str(engine).strip().lower()
    if choice not in ENGINE_CHOICES:
        raise InputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINE_CHOICES)}")
    if choice == "torch":
        return "torch"
    wanted = {outputs} if isinstance(outputs, str) else set(outputs)
    dev = str(device or "auto").strip().lower()
    prec = str(precision or "auto").strip().lower()
    problems = []
    if wanted - {"mask"}:
        problems.append(
            "it computes masks only (no Z, no reconstruction: --reconstruction needs "
            "--engine torch)"
        )
    if dev not in ("auto", "cpu"):
        problems.append(f"it runs on the CPU only, not {device}")
    if prec not in ("auto", "fp32"):
        problems.append(f"it runs in fp32 only, not {precision}")
    if choice == "onnx":
        if problems:
            raise InputError("--engine onnx cannot be used: " + "; ".join(problems))
        _import_onnxruntime()  # a clear message now, before anything is loaded
        return "onnx"
    if problems or (dev == "auto" and _gpu_visible()):
        return "torch"
    try:
        _import_onnxruntime()
    except InputError:
        return "torch"
    return "onnx"


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise InputError(
            f"--engine onnx needs the onnxruntime package ({exc}); install it with "
            "`pip install onnxruntime`, or use --engine torch"
        ) from None
    return onnxruntime


# ----------------------------------------------------------------------------------- the cache
def cache_dir() -> Path:
    """Where exported graphs are kept: ``$SDNET_CACHE_DIR/onnx``, else
    ``~/.cache/napari-sdnet/onnx``."""
    root = os.environ.get("SDNET_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "napari-sdnet") / "onnx"


def cache_path(model_path: str | os.PathLike[str]) -> Path:
    """The cached graph of a model file: named by the SHA-256 of its bytes and of everything
    else that shapes the export (:data:`EXPORT_VERSION`, the opset, the mask path)."""
    digest = hashlib.sha256()
    with open(model_path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(f"|mask-path|export-v{EXPORT_VERSION}|opset-{OPSET}".encode())
    return cache_dir() / f"mask-{digest.hexdigest()[:40]}.onnx"


def export_mask_onnx(model: Model) -> bytes:
    """The mask path of ``model`` (:func:`napari_sdnet.inference.mask_path`) as an ONNX graph
    (input ``image`` (B, 1, S, S), output ``mask`` (B, C, S, S), dynamic B), with the preset
    and preprocessing in its metadata. Needs torch and the ``onnx`` package."""
    import io

    import onnx
    import torch

    from napari_sdnet.inference import mask_path

    size = model.config.image_size
    module = mask_path(model.network).cpu()
    buffer = io.BytesIO()
    # the TorchScript exporter (needs only `onnx`); torch < 2.5 has no `dynamo` argument
    has_dynamo = "dynamo" in inspect.signature(torch.onnx.export).parameters
    legacy = {"dynamo": False} if has_dynamo else {}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about the input-shape checks
        torch.onnx.export(
            module,
            (torch.zeros(2, 1, size, size),),
            buffer,
            input_names=[_INPUT],
            output_names=[_OUTPUT],
            dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            **legacy,
        )
    proto = onnx.load_model_from_string(buffer.getvalue())
    info = {
        "model_config": model.config.to_dict(),
        "preprocess": model.preprocess.to_dict(),
        "model_type": model.model_type,
    }
    entry = proto.metadata_props.add()
    entry.key, entry.value = _INFO_KEY, json.dumps(info)
    return proto.SerializeToString()


def _threads(threads: int | None) -> int:
    """Intra-op threads: ``threads``, else ``OMP_NUM_THREADS`` (what PyTorch follows), else 0
    (ONNX Runtime's default: the physical cores, like PyTorch's)."""
    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        return int(threads)
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return 0


def _session(ort, graph: Path | bytes, source: str, threads: int | None) -> OnnxModel:
    """An :class:`OnnxModel` for a graph file or bytes (raises on an unreadable graph)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: no optimiser chatter on stderr
    # Idle workers sleep instead of spinning: on 2 shared cores spinning made 240 slices at 2
    # threads 15-25 % slower (2.9-3.2 s against 2.3-2.9 s, docs/benchmarks.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    data = str(graph) if isinstance(graph, Path) else graph
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    info = json.loads(session.get_modelmeta().custom_metadata_map[_INFO_KEY])
    return OnnxModel(
        session=session,
        config=ModelConfig.from_dict(info["model_config"]),
        preprocess=PreprocessConfig.from_dict(info["preprocess"]),
        model_type=info.get("model_type", "sdnet"),
        source=source,
        onnx_path=graph if isinstance(graph, Path) else None,
    )


def _store(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically; False when the cache folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, overwrite=True) as tmp:
            tmp.write_bytes(data)
    except (OSError, InputError):
        return False
    return True


# ---------------------------------------------------------------------------------- loading
def load_predictor(
    source: str | os.PathLike[str] = "bundled",
    device: Any = "auto",
    *,
    engine: str = DEFAULT_ENGINE,
    outputs: Collection[str] = ("mask",),
    precision: str | None = "auto",
    threads: int | None = None,
) -> Model | OnnxModel:
    """Load a model for :func:`~napari_sdnet.segmentation.segment` on the engine
    :func:`choose_engine` picks: a torch :class:`~napari_sdnet.models.Model`, or an
    :class:`OnnxModel` (masks only; segment with ``latents=False``).

    ONNX: a cached graph of this model file is opened without importing torch; without one
    (or with an unreadable one) the model is loaded with :func:`~napari_sdnet.models.load_model`
    (same checks and errors), exported and cached. With ``engine="auto"`` an export that fails
    or a cache folder that cannot be written falls back to that torch model; with
    ``engine="onnx"`` a failed export is an :class:`InputError` and an unwritable cache runs
    the graph from memory.
    """
    if choose_engine(engine, device=device, outputs=outputs, precision=precision) == "torch":
        return load_model(source, device)
    _threads(threads)  # a bad value is an error, not a reason to export again
    ort = _import_onnxruntime()
    path, label = model_file(source)
    try:
        cached = cache_path(path) if path.is_file() else None
    except OSError:  # unreadable: load_model below says why
        cached = None
    if cached is not None and cached.is_file():
        try:
            return _session(ort, cached, label, threads)
        except Exception:  # noqa: BLE001 - corrupt or foreign cache file: export it again
            pass
    model = load_model(source, "cpu")  # raises the usual errors for a bad model file
    try:
        graph = export_mask_onnx(model)
        stored = cached is not None and _store(cached, graph)
        if stored or engine == "onnx":
            return _session(ort, cached if stored else graph, label, threads)
    except Exception as exc:  # noqa: BLE001 - an exporter failure must not stop a prediction
        if engine == "onnx":
            raise InputError(
                f"cannot run the model on ONNX Runtime ({exc}); use --engine torch"
            ) from None
        warnings.warn(
            f"ONNX Runtime could not be used ({exc}); segmenting with torch",
            UserWarning,
            stacklevel=2,
        )
    return model  # auto with an unwritable cache: the export would be lost, stay on torch
