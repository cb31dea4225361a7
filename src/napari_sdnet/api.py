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

Everything else is reused, never re-implemented: preprocessing and its inverse
(:mod:`napari_sdnet.preprocess`), batched inference (:mod:`napari_sdnet.inference`), the data
loaders (:mod:`napari_sdnet.io.datasets`), the training loop (:mod:`napari_sdnet.training.trainer`)
and checkpoints (:mod:`napari_sdnet.training.checkpoint`). See ``docs/api.md``.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import InitVar, dataclass, field
from functools import cached_property
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from napari_sdnet.errors import CheckpointError, InputError, TrainingError
from napari_sdnet.io.datasets import MYOCARDIUM  # ACDC value of the model's binary mask
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
from napari_sdnet.preprocess import (
    PreprocessConfig,
    SliceGrid,
    inplane_spacing,
    preprocess_labels,
    preprocess_volume,
    restore_image,
    restore_probabilities,
)

if TYPE_CHECKING:  # torch is imported lazily so that ``import napari_sdnet.api`` stays light
    import torch

    from napari_sdnet.io.datasets import VolumeRecord
    from napari_sdnet.model import ModelConfig, SDNet
    from napari_sdnet.training.checkpoint import CheckpointInfo
    from napari_sdnet.training.trainer import Progress

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
    "to_acdc_labels",
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

#: File name of the bundled model inside ``napari_sdnet/weights``.
BUNDLED_MODEL = "sdnet_compact_acdc.safetensors"
#: A pixel is myocardium when its (restored) probability is at least this.
THRESHOLD = 0.5

#: ``progress(done, total)`` callbacks; ``total`` is None when unknown.
ProgressCallback = Callable[[int, "int | None"], None]
_T = TypeVar("_T")
_R = TypeVar("_R")


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


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

    if source is None or not isinstance(source, str | os.PathLike):
        raise InputError(
            f"load_model needs 'bundled' or a model file path, got {type(source).__name__}"
        )
    dev = resolve_device(device)
    if isinstance(source, str) and source.strip().lower() == "bundled":
        path = bundled_model_path()
        if not path.is_file():
            raise CheckpointError(
                "no bundled model is installed yet; pass a model file (.safetensors)"
            )
        label = "bundled"
    else:
        path = Path(source)
        label = str(path)
        if path.is_dir():
            raise CheckpointError(f"{path} is a folder; pass a .safetensors model file")
    try:
        network, info = load_checkpoint(path, device=dev)
    except CheckpointError as exc:
        if path.suffix.lower() in _PICKLE_SUFFIXES and path.is_file():
            raise CheckpointError(
                f"{path.name}: napari-sdnet reads its own .safetensors model files only; "
                f"{path.suffix} files (PyTorch pickles) are never loaded"
            ) from exc
        raise
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


def run(gen: Generator[Any, Any, _R]) -> _R:
    """Drive one of this module's generators (``segment_iter``, ``finetune``) to the end.

    Returns the generator's return value (the :class:`Segmentation` or the fine-tuned
    :class:`Model`).
    """
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


# --------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Segmentation:
    """The result of :func:`segment` for an image of shape ``(..., H, W)``.

    Attributes:
        mask: uint8 ``(..., H, W)``, 1 = myocardium (restored probability >= 0.5).
        probability: float32 ``(..., H, W)`` in [0, 1] (0 outside the model's field of view).
        z: float32 ``(..., z_dim)``: the latent vector Z of every slice (None when segmented
            with ``latents=False``).
        reconstruction: float32 ``(..., H, W)``: g(round(M), Z) on the input grid, in the
            model's [-1, 1] intensity scale (``pad_value`` outside the field of view). See
            :attr:`reconstruction_intensity` for the image's own units.
        grid: the :class:`~napari_sdnet.preprocess.SliceGrid` mapping model grid <-> input grid
            (with the clip range of the normalisation in ``grid.intensity_range``).
        model_image: float32 ``(..., S, S)``: the preprocessed input the model saw.
        model_mask: float32 ``(..., S, S)``: the soft mask M on the model grid.
        model_reconstruction: float32 ``(..., S, S)``: the reconstruction on the model grid.
        spacing: the in-plane ``(sy, sx)`` (mm) that was used.
        spacing_assumed: True when no spacing was given and the model's pixel size was assumed.
        precision: the inference precision that was used (``fp32``, ``bf16`` or ``fp16``).

    :func:`segment` does not run the reconstructor: ``reconstruction``,
    ``model_reconstruction`` and :attr:`reconstruction_intensity` are computed on first use
    (once, with the model and precision that made the segmentation), so a caller that only
    wants the mask never pays for them.
    """

    mask: np.ndarray
    probability: np.ndarray
    z: np.ndarray | None
    reconstruction: np.ndarray | None = field(repr=False)
    grid: SliceGrid
    model_image: np.ndarray
    model_mask: np.ndarray
    model_reconstruction: np.ndarray | None = field(repr=False)
    spacing: tuple[float, float]
    spacing_assumed: bool = False
    precision: str = "fp32"
    #: computes the model-grid reconstruction when it was not given (see the class docstring)
    decoder: InitVar[Callable[[], np.ndarray] | None] = None

    def __post_init__(self, decoder: Callable[[], np.ndarray] | None) -> None:
        self.__dict__["_decoder"] = decoder
        self.__dict__["_lazy_lock"] = threading.RLock()
        # not given: leave them unset, so that the first access goes through __getattr__
        for name in ("model_reconstruction", "reconstruction"):
            if self.__dict__.get(name) is None:
                del self.__dict__[name]

    def __getattr__(self, name: str) -> Any:
        # only called for attributes that are not set: the lazy reconstructions
        if name not in ("model_reconstruction", "reconstruction") or "_lazy_lock" not in (
            self.__dict__
        ):
            raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")
        with self.__dict__["_lazy_lock"]:
            if name not in self.__dict__:
                if name == "reconstruction":
                    value = restore_image(self.model_reconstruction, self.grid)
                else:
                    decoder = self.__dict__.get("_decoder")
                    if decoder is None:
                        raise InputError(
                            "this segmentation has no reconstruction: it was made with "
                            "latents=False (no Z); segment again with latents=True"
                        )
                    value = decoder()
                self.__dict__[name] = value
            return self.__dict__[name]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the input image."""
        return tuple(self.mask.shape)

    @cached_property
    def reconstruction_intensity(self) -> np.ndarray:
        """The reconstruction on the input grid in the image's units (float32).

        [-1, 1] is mapped back onto the clip range of the input's normalisation (so values the
        normalisation clipped stay clipped); outside the field of view it is the low clip value.
        """
        return restore_image(self.model_reconstruction, self.grid, denormalise=True)

    def labels(self) -> np.ndarray:
        """The mask as ACDC labels: uint8, 2 = myocardium, 0 elsewhere."""
        return to_acdc_labels(self.mask)


def to_acdc_labels(mask: Any) -> np.ndarray:
    """A binary myocardium mask (bool or 0/1) as ACDC labels: uint8, 2 = myocardium."""
    arr = np.asarray(mask)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"mask must be numeric or boolean, got dtype {arr.dtype}")
    if arr.size and arr.dtype.kind != "b" and not np.all((arr == 0) | (arr == 1)):
        raise InputError("mask must be binary (0/1); it holds other values")
    return np.where(arr.astype(bool), np.uint8(MYOCARDIUM), np.uint8(0))


def _check_image(image: Any) -> np.ndarray:
    if image is None:
        raise InputError("no image given (None); pass a 2D, 3D or 4D array")
    try:
        arr = np.asarray(image)
    except ValueError as exc:  # a ragged list of slices of different sizes
        raise InputError(
            f"image must be a regular array; got a ragged sequence ({str(exc).split(':')[0]})"
        ) from None
    if arr.dtype == object:
        raise InputError("image must be a regular numeric array, not a ragged list of slices")
    if arr.ndim < 2 or arr.ndim > 4:
        raise InputError(
            f"image must be 2D (y, x), 3D (z, y, x) or 4D (t, z, y, x); got shape {arr.shape}"
        )
    return arr


def _resolve_spacing(
    spacing: Any, ndim: int, preprocess: PreprocessConfig, warn: bool = True
) -> tuple[tuple[float, float], bool]:
    """In-plane ``(sy, sx)`` from a per-axis or in-plane spacing; ``(value, assumed)``."""
    if spacing is None:
        t = preprocess.target_spacing
        if warn and ndim >= 3:
            warnings.warn(
                f"no spacing given: assuming {t} mm pixels (the model's own), so nothing is "
                "resampled; pass spacing=(..., sy, sx) in mm for correct results",
                UserWarning,
                stacklevel=4,
            )
        return (t, t), True
    return inplane_spacing(spacing, ndim), False


#: A heart is about 100-120 mm across; a short-axis field of view narrower than this (mm),
#: or pixels coarser than this (mm), means the spacing is wrong or the image is not cardiac.
MIN_FIELD_OF_VIEW_MM = 60.0
MAX_INPLANE_SPACING_MM = 4.0


def _warn_implausible_field_of_view(
    shape: Sequence[int], in_plane: tuple[float, float], preprocess: PreprocessConfig
) -> None:
    """Warn (before segmenting) when the spacing makes the heart a few pixels or a blur."""
    fov = [n * s for n, s in zip(shape[-2:], in_plane, strict=True)]
    heart_px = 100.0 / preprocess.target_spacing
    if min(fov) < MIN_FIELD_OF_VIEW_MM:
        warnings.warn(
            f"the image covers only {fov[0]:.0f} x {fov[1]:.0f} mm at {in_plane[0]:g} x "
            f"{in_plane[1]:g} mm per pixel, less than a heart (about 100 mm): check the spacing; "
            f"at the model's {preprocess.target_spacing:g} mm the whole image is "
            f"{min(fov) / preprocess.target_spacing:.0f} pixels (a heart is about {heart_px:.0f}), "
            "so the mask will likely be empty",
            UserWarning,
            stacklevel=4,
        )
    elif max(in_plane) > MAX_INPLANE_SPACING_MM:
        warnings.warn(
            f"in-plane pixels of {in_plane[0]:g} x {in_plane[1]:g} mm are very coarse for cine "
            "MR (usually 1-2 mm): check the spacing",
            UserWarning,
            stacklevel=4,
        )


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _predict_iter(
    model: Model,
    slices: np.ndarray,
    batch_size: int | None,
    *,
    precision: str = "auto",
    outputs: Sequence[str] = ("mask",),
) -> Generator[
    tuple[int, int], None, tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]
]:
    """Batched inference on model-grid slices ``(N, S, S)``, yielding ``(done, N)``.

    Returns ``(probability (N, S, S), z (N, z_dim), reconstruction (N, S, S))``, each None
    unless named in ``outputs`` (``mask``, ``z``, ``reconstruction``; default: the mask only).
    The default precision is :func:`segment`'s, so that :func:`evaluate` scores what
    :func:`segment` (and ``napari-sdnet predict``) return.
    """
    from napari_sdnet.inference import iter_predict

    n = len(slices)
    size = model.config.image_size
    shapes = {
        "mask": (n, size, size),
        "z": (n, model.config.z_dim),
        "reconstruction": (n, size, size),
    }
    arrays = {k: np.empty(shapes[k], np.float32) for k in outputs}
    start = 0
    yield 0, n
    gen = iter_predict(
        model.network, slices, batch_size=batch_size, precision=precision, outputs=outputs
    )
    for done, out in gen:
        for key, value in (
            ("mask", out.probability),
            ("z", out.z),
            ("reconstruction", out.reconstruction),
        ):
            if key in arrays:
                arrays[key][start:done] = value
        start = done
        yield done, n
    return arrays.get("mask"), arrays.get("z"), arrays.get("reconstruction")


def _native_mask(probability: np.ndarray) -> np.ndarray:
    """The hard myocardium mask (uint8 0/1) from restored probabilities (one rule everywhere)."""
    return (probability >= THRESHOLD).astype(np.uint8)


def segment_iter(
    model: Model,
    image: Any,
    spacing: Sequence[float] | None = None,
    *,
    batch_size: int | None = None,
    precision: str = "auto",
    latents: bool = True,
) -> Generator[tuple[int, int] | Segmentation, None, Segmentation]:
    """Segment ``image``, yielding ``(done, total)`` slice counts, then the :class:`Segmentation`.

    For napari thread workers and progress bars: iterate it, and the last item yielded is the
    result (it is also the generator's return value). :func:`segment` drives it to the end.
    Arguments as :func:`segment`.
    """
    from napari_sdnet.inference import default_batch_size, resolve_precision

    model = _as_model(model)
    arr = _check_image(image)
    used_precision = resolve_precision(precision, model.device)
    if batch_size is None:
        batch_size = default_batch_size(model.device, used_precision)
    batch_size = _check_batch_size(batch_size)
    in_plane, assumed = _resolve_spacing(spacing, arr.ndim, model.preprocess)
    # one normalisation for the whole array: a 4D study shares one intensity scale (as training)
    slices, grid = preprocess_volume(arr, in_plane, model.preprocess)
    _warn_implausible_field_of_view(arr.shape, in_plane, model.preprocess)
    lead = arr.shape[:-2]
    size = model.config.image_size
    flat = slices.reshape(-1, size, size)
    outputs = ("mask", "z") if latents else ("mask",)
    prob, z, _ = yield from _predict_iter(
        model, flat, batch_size, precision=used_precision, outputs=outputs
    )
    assert prob is not None
    decoder = None
    if z is not None:
        z_flat = z

        def decoder() -> np.ndarray:
            from napari_sdnet.inference import decode_latents

            recon = decode_latents(
                model.network, prob, z_flat, batch_size=batch_size, precision=used_precision
            )
            return recon.reshape(*lead, size, size)

    model_prob = prob.reshape(*lead, size, size)
    probability = restore_probabilities(model_prob, grid)
    result = Segmentation(
        mask=_native_mask(probability),
        probability=probability,
        z=None if z is None else z.reshape(*lead, model.config.z_dim),
        reconstruction=None,
        grid=grid,
        model_image=slices,
        model_mask=model_prob,
        model_reconstruction=None,
        spacing=in_plane,
        spacing_assumed=assumed,
        precision=used_precision,
        decoder=decoder,
    )
    yield result
    return result


def segment(
    model: Model,
    image: Any,
    spacing: Sequence[float] | None = None,
    *,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    precision: str = "auto",
    latents: bool = True,
) -> Segmentation:
    """Segment the myocardium in a 2D, 3D or 4D image.

    Args:
        model: from :func:`load_model`.
        image: ``(y, x)``, ``(z, y, x)`` or ``(t, z, y, x)`` intensities (any real dtype). The
            whole array is normalised at once (a 4D study shares one intensity scale, as in
            training), every 2D slice is resampled to the model's pixel size and centre
            cropped/padded, segmented in batches and mapped back with the exact inverse.
        spacing: mm per array axis (e.g. ``(dt, dz, dy, dx)``; only the in-plane ``(dy, dx)``
            matter) or the in-plane ``(sy, sx)``. ``None``: the pixels are assumed to already
            have the model's pixel size (no resampling; a warning for 3D/4D images).
        batch_size: slices per forward pass; None (default) picks the fastest for the device
            and precision (:func:`napari_sdnet.inference.default_batch_size`).
        progress: optional ``progress(done, total)`` callback, in slices.
        precision: ``auto`` (default: bf16 on CPUs with native bf16, fp16 on CUDA, else
            fp32; masks agree with fp32 at Dice >= 0.995), ``fp32``, ``bf16`` or ``fp16``
            (GPU only). See :func:`napari_sdnet.inference.resolve_precision`.
        latents: compute Z (default; needed for the reconstruction and latent mixing). With
            False only the mask is computed (the Z head is skipped): ``z`` is None and there
            is no reconstruction.

    Returns:
        A :class:`Segmentation` (mask, probability, Z, reconstruction, grid, model-grid arrays).
        Its reconstruction is computed on first use.

    Raises:
        InputError: 1D/5D, empty, all-NaN or constant images, images smaller than 8x8
            in-plane, a spacing of the wrong length or with zero/negative/NaN values.

    ``unet``/``gan`` models have no trained reconstructor: their ``reconstruction`` is noise.
    """
    gen = segment_iter(
        model, image, spacing, batch_size=batch_size, precision=precision, latents=latents
    )
    for item in gen:
        if isinstance(item, Segmentation):
            return item
        if progress is not None:
            progress(*item)
    raise RuntimeError("segmentation produced no result")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# reconstruction from any mask and Z (latent mixing)
# --------------------------------------------------------------------------------------------


def reconstruct(
    model: Model,
    mask: Any,
    z: Any,
    spacing: Sequence[float] | None = None,
    grid: SliceGrid | None = None,
    *,
    batch_size: int = 16,
    denormalise: bool = False,
    precision: str = "auto",
) -> np.ndarray:
    """g(M, Z): an image from any myocardium mask(s) and latent vector(s), the mixing primitive.

    Args:
        model: from :func:`load_model`.
        mask: myocardium mask(s) with values in [0, 1] (soft or binary; the reconstructor
            rounds them), shape ``(..., S, S)`` on the model grid, or ``(..., H, W)`` on an
            original grid when ``grid`` or ``spacing`` is given (then resampled to the model grid
            with the same rule as the training masks). For ACDC labels pass ``labels == 2``.
        z: latent vector(s) ``(..., z_dim)``. The leading axes of ``mask`` and ``z`` broadcast
            against each other: one mask with many Z, or one Z for many masks.
        spacing: in-plane ``(sy, sx)`` (or per axis) of an original-grid mask.
        grid: the :class:`SliceGrid` of an original-grid mask, e.g. ``Segmentation.grid``.
        batch_size: slices per forward pass.
        precision: as for :func:`segment` (default ``auto``, the precision :func:`segment`
            uses, so that g(M, Z) of a segmented slice is its ``model_reconstruction``).
        denormalise: with a ``grid`` from :func:`segment`, return the image's own units
            instead of the model's [-1, 1] scale.

    Returns:
        float32 ``(broadcast leading shape) + (S, S)`` on the model grid, or ``+ (H, W)`` on
        the original grid when ``grid``/``spacing`` was given.
    """
    from napari_sdnet.inference import decode_latents

    model = _as_model(model)
    batch_size = _check_batch_size(batch_size)
    if not model.has_trained_reconstructor:
        warnings.warn(
            f"this is a {model.model_type!r} model: its reconstructor was never trained",
            UserWarning,
            stacklevel=2,
        )
    m = np.asarray(mask)
    if m.dtype.kind not in "biuf":
        raise InputError(f"mask must be numeric or boolean, got dtype {m.dtype}")
    m = m.astype(np.float32)
    if m.ndim < 2:
        raise InputError(f"mask must have at least 2 dimensions (y, x), got shape {m.shape}")
    if m.size and (not np.all(np.isfinite(m)) or m.min() < 0 or m.max() > 1):
        raise InputError(
            "mask values must be in [0, 1] (a myocardium mask); for ACDC labels pass labels == 2"
        )
    zz = np.asarray(z, dtype=np.float32)
    z_dim = model.config.z_dim
    if zz.ndim < 1 or zz.shape[-1] != z_dim:
        raise InputError(f"Z must have shape (..., {z_dim}), got {zz.shape}")
    if not np.all(np.isfinite(zz)):
        raise InputError("Z holds NaN or infinite values")
    size = model.config.image_size
    if grid is None and spacing is not None:
        in_plane, _ = _resolve_spacing(spacing, m.ndim, model.preprocess, warn=False)
        grid = SliceGrid.from_config(m.shape[-2:], in_plane, model.preprocess)
    if grid is not None:
        if grid.size != size or not math.isclose(
            grid.target_spacing, model.preprocess.target_spacing
        ):
            raise InputError(
                f"the grid maps to {grid.size}x{grid.size} at {grid.target_spacing} mm, but the "
                f"model works on {size}x{size} at {model.preprocess.target_spacing} mm"
            )
        grid._check_last2(m, grid.in_shape, "mask")
        # linear interpolation, then the reconstructor's rounding (> 0.5): the same rule as the
        # training masks (io.datasets) for binary masks
        m = grid.to_model(m, order=1, cval=0.0, anti_aliasing=False)
    elif m.shape[-2:] != (size, size):
        raise InputError(
            f"mask has in-plane shape {m.shape[-2:]}, not the model grid ({size}, {size}); "
            "pass grid= (e.g. Segmentation.grid) or spacing= for a mask on an original grid"
        )
    try:
        lead = np.broadcast_shapes(m.shape[:-2], zz.shape[:-1])
    except ValueError:
        raise InputError(
            f"mask leading shape {m.shape[:-2]} and Z leading shape {zz.shape[:-1]} do not "
            "broadcast"
        ) from None
    # copies: torch refuses read-only (broadcast) arrays
    m_flat = np.array(np.broadcast_to(m, (*lead, size, size)).reshape(-1, size, size))
    z_flat = np.array(np.broadcast_to(zz, (*lead, z_dim)).reshape(-1, z_dim))
    out = decode_latents(model.network, m_flat, z_flat, batch_size=batch_size, precision=precision)
    out = out.reshape(*lead, size, size)
    if grid is None:
        if denormalise:
            raise InputError("denormalise needs the grid of a segmented image (grid=seg.grid)")
        return out
    return restore_image(out, grid, denormalise=denormalise)


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Myocardium Dice of a model on a dataset, computed on each volume's NATIVE grid.

    Attributes:
        per_volume: one dict per evaluated volume: ``volume_id``, ``dice`` (3D hard Dice over
            the labelled slices), ``n_slices`` (labelled slices evaluated), ``n_slices_total``,
            ``frame`` (cine studies) .
        per_slice: one dict per labelled slice: ``volume_id``, ``slice`` (z index), ``dice``,
            ``gt_pixels``, ``pred_pixels`` (a slice where both are 0 has Dice 1).
        skipped: ids of volumes without any labelled slice (not evaluated).
        model: the model's source; split: the split asked for (``None`` if it does not apply);
        layout: ``acdc_h5``, ``acdc_nifti``, ``cine_nifti`` or ``records``.
    """

    per_volume: list[dict[str, Any]]
    per_slice: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)
    model: str = ""
    split: str | None = None
    layout: str = "records"

    @property
    def n_volumes(self) -> int:
        """Number of volumes evaluated."""
        return len(self.per_volume)

    @property
    def mean_myocardium_dice(self) -> float:
        """Mean per-volume (3D) hard myocardium Dice (NaN when nothing was evaluated)."""
        values = [v["dice"] for v in self.per_volume]
        return float(np.mean(values)) if values else float("nan")

    @property
    def std(self) -> float:
        """Standard deviation of the per-volume Dice (population, ``ddof=0``)."""
        values = [v["dice"] for v in self.per_volume]
        return float(np.std(values)) if values else float("nan")

    @property
    def mean_slice_dice(self) -> float:
        """Mean per-slice hard Dice over all labelled slices (NaN when none)."""
        values = [s["dice"] for s in self.per_slice]
        return float(np.mean(values)) if values else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (plain floats/ints/strings; NaN becomes None)."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {
            "mean_myocardium_dice": num(self.mean_myocardium_dice),
            "std_myocardium_dice": num(self.std),
            "mean_slice_dice": num(self.mean_slice_dice),
            "n_volumes": self.n_volumes,
            "n_slices": len(self.per_slice),
            "model": self.model,
            "split": self.split,
            "layout": self.layout,
            "metric": "hard myocardium (label 2) Dice per 3D volume on the native grid, "
            "labelled slices only; mean over volumes",
            "per_volume": [dict(v) for v in self.per_volume],
            "per_slice": [dict(s) for s in self.per_slice],
            "skipped": list(self.skipped),
        }


def _cine_label_file(image: Path) -> Path | None:
    from napari_sdnet.io.nifti import LABEL_SUFFIXES, is_nifti_path, nifti_stem

    stem = nifti_stem(image)
    for suffix in LABEL_SUFFIXES:
        for ext in (".nii.gz", ".nii"):
            cand = image.with_name(f"{stem}{suffix}{ext}")
            if cand.is_file() and is_nifti_path(cand):
                return cand
    return None


def _dataset_records(
    path: Path, split: str, config: PreprocessConfig, h5_spacing: float | None
) -> tuple[Iterator[VolumeRecord], int | None, str, str | None]:
    """``(records, total or None, layout, split or None)`` for a dataset path."""
    from napari_sdnet.io import datasets as ds
    from napari_sdnet.io import dicom as dicom_io

    if dicom_io.looks_like_dicom_folder(path) or dicom_io.is_dicom_file(path):
        # a DICOM series with a DICOM SEG of its expert contours in the same folder
        return dicom_io.iter_dicom_records(path, config), None, "dicom", None
    layout = ds.detect_layout(path)
    if layout == "acdc_h5":
        total = len(ds.read_acdc_split(path).get(split, [])) if split in ds.SPLITS else None
        return ds.iter_acdc_h5(path, split, config, h5_spacing), total, layout, split
    if layout == "acdc_nifti":
        return ds.iter_acdc_nifti(path, config=config), None, layout, None
    if path.is_dir():
        image, labels, meta = ds.find_cine_files(path)
    else:
        image, labels, meta = path, _cine_label_file(path), None
    if labels is None:
        raise InputError(
            f"{image}: no label file found beside it (<name>_gt.nii.gz); nothing to evaluate"
        )
    return ds.iter_cine_nifti(image, labels, meta, config), None, layout, None


def _h5_spacing_for(model: Model, h5_spacing: float | None) -> float | None:
    """The H5 spacing to assume: the caller's, else the one the model was trained with."""
    if h5_spacing is not None:
        return h5_spacing
    trained = model.info.training.get("h5_spacing")
    return float(trained) if isinstance(trained, int | float) else None


def evaluate(
    model: Model,
    dataset: str | os.PathLike[str] | Iterable[VolumeRecord],
    *,
    split: str = "test",
    progress: ProgressCallback | None = None,
    batch_size: int = 16,
    h5_spacing: float | None = None,
) -> EvaluationResult:
    """Per-volume 3D hard myocardium Dice of ``model`` on a dataset, on the native grids.

    For every volume: the model-grid slices are segmented, the probabilities are restored to
    the volume's native grid (:func:`~napari_sdnet.preprocess.restore_probabilities`,
    threshold 0.5: exactly what :func:`segment` returns) and compared with ``labels == 2`` on
    the labelled slices only (for partially labelled cine studies the unlabelled slices do not
    count). Per-slice Dice is reported too.

    Args:
        model: from :func:`load_model`.
        dataset: a path whose layout is detected (an ACDC H5 split folder, a folder of ACDC
            ``patientNNN`` NIfTI folders or one patient folder, a cine NIfTI file with a
            ``<name>_gt`` label file beside it, or a folder holding one cine study), or an
            iterable of :class:`~napari_sdnet.io.datasets.VolumeRecord` prepared with this
            model's preprocessing (``config=model.preprocess``).
        split: ``train``/``val``/``test`` for the ACDC H5 layout (ignored by the others).
        progress: optional ``progress(done, total)`` callback in volumes (``total`` may be
            None).
        batch_size: slices per forward pass.
        h5_spacing: the in-plane spacing (mm) to assume for H5 volumes (they store none);
            ``None`` uses the spacing the model was trained with on H5 data (recorded in its
            checkpoint as ``training["h5_spacing"]``), else takes the H5 pixel to be the
            model's pixel size.
    """
    model = _as_model(model)
    batch_size = _check_batch_size(batch_size)
    config = model.preprocess
    if dataset is None or isinstance(dataset, bytes):
        raise InputError(
            "evaluate needs a dataset: a folder or file path, or an iterable of VolumeRecord"
        )
    if not isinstance(dataset, str | os.PathLike) and not isinstance(dataset, Iterable):
        raise InputError(
            f"evaluate needs a dataset path or an iterable of VolumeRecord, got "
            f"{type(dataset).__name__}"
        )
    if isinstance(dataset, str | os.PathLike):
        records, total, layout, used_split = _dataset_records(
            Path(dataset), split, config, _h5_spacing_for(model, h5_spacing)
        )
    else:
        records, layout, used_split = iter(dataset), "records", None
        total = len(dataset) if hasattr(dataset, "__len__") else None  # type: ignore[arg-type]

    from napari_sdnet.training.losses import hard_dice

    size = config.size
    per_volume: list[dict[str, Any]] = []
    per_slice: list[dict[str, Any]] = []
    skipped: list[str] = []
    done = 0
    if progress is not None:
        progress(0, total)
    for rec in records:
        if rec.slices.shape[-2:] != (size, size) or not math.isclose(
            rec.grid.target_spacing, config.target_spacing
        ):
            raise InputError(
                f"volume {rec.volume_id} was prepared for a {rec.slices.shape[-1]} pixel grid at "
                f"{rec.grid.target_spacing} mm; this model needs {size} at "
                f"{config.target_spacing} mm (load records with config=model.preprocess)"
            )
        labelled = np.asarray(rec.labelled, bool)
        if rec.labels is None or not labelled.any():
            skipped.append(rec.volume_id)
        else:
            gen = _predict_iter(model, rec.slices, batch_size)
            prob = run(gen)[0]
            pred = _native_mask(restore_probabilities(prob, rec.grid)).astype(bool)
            gt = np.asarray(rec.labels) == MYOCARDIUM
            entry: dict[str, Any] = {
                "volume_id": rec.volume_id,
                "dice": hard_dice(pred[labelled], gt[labelled]),
                "n_slices": int(labelled.sum()),
                "n_slices_total": int(labelled.size),
            }
            if rec.frame is not None:
                entry["frame"] = int(rec.frame)
            per_volume.append(entry)
            for k in np.flatnonzero(labelled):
                per_slice.append(
                    {
                        "volume_id": rec.volume_id,
                        "slice": int(k),
                        "dice": hard_dice(pred[k], gt[k]),
                        "gt_pixels": int(gt[k].sum()),
                        "pred_pixels": int(pred[k].sum()),
                    }
                )
        done += 1
        if progress is not None:
            progress(done, total)
    return EvaluationResult(
        per_volume=per_volume,
        per_slice=per_slice,
        skipped=skipped,
        model=model.source,
        split=used_split,
        layout=layout,
    )


# --------------------------------------------------------------------------------------------
# fine-tuning on a few painted slices
# --------------------------------------------------------------------------------------------


def _painted_slices(labels: Any, image_shape: tuple[int, ...]) -> np.ndarray:
    """The label map checked against the image; returns it as uint8."""
    lab = np.asarray(labels)
    if tuple(lab.shape) != tuple(image_shape):
        raise InputError(
            f"labels have shape {lab.shape} but the image has shape {tuple(image_shape)}; "
            "paint the labels on the image's own grid"
        )
    if lab.dtype.kind == "b":
        raise InputError(
            "labels are boolean; use ACDC values (2 = myocardium) so it is clear what is painted"
        )
    if lab.dtype.kind not in "iuf":
        raise InputError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.dtype.kind == "f" and (not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab))):
        raise InputError("labels must hold whole numbers (they have fractional or NaN values)")
    if lab.size and (lab.min() < 0 or lab.max() > 255):
        raise InputError(f"label values must be in 0-255, got {lab.min()}..{lab.max()}")
    return lab.astype(np.uint8)


#: Fine-tuning defaults shared by the API, the CLI and the widget (docs/benchmarks.md).
#: The budget is a number of steps, about a minute on an idle 2-core CPU and seconds on a GPU,
#: so that the result does not depend on the machine: a minute on a GPU would be thousands of
#: steps, and many steps over-fit a few painted slices (Sunnybrook, 2 given slices: 314 steps
#: +0.020 Dice (seed 0), 150 steps +0.032 (3 seeds)). lr 3e-4 was chosen on the Sunnybrook
#: study with 2 given slices: 1e-4 barely moved the model in 150 steps, 1e-3 overshot.
FINETUNE_STEPS = 150
FINETUNE_LR = 3e-4
#: The learning rate falls from ``lr`` to 0 along a cosine over the budget (time or steps),
#: so the returned (last) weights are not those of a mid-stride Adam step. Measured on the
#: Sunnybrook study, 2 given slices, 150 steps, seeds 0/1: Dice gain +0.034/+0.035 with it,
#: +0.017/+0.015 with a constant rate (docs/benchmarks.md).
FINETUNE_SCHEDULE = "cosine"


#: Fine-tuning whose result segments the painted slices themselves worse than the start by
#: more than this (hard myocardium Dice, model grid) is refused: it has broken the model.
FINETUNE_WORSE_BY = 0.05
#: ... when the start segmented them at all (an untrained model has nothing to lose).
FINETUNE_CHECK_FROM = 0.2


def _painted_dice(network: Any, data: Any) -> float:
    """Hard myocardium Dice of ``network`` on the painted (labelled) model-grid slices."""
    from napari_sdnet.inference import predict_slices
    from napari_sdnet.training.losses import hard_dice

    out = predict_slices(network, data.labelled_images, batch_size=16)
    return float(hard_dice(out.probability >= THRESHOLD, data.labelled_masks > 0))


def finetune_loss_weights() -> Any:
    """SDNet's losses for fine-tuning on a few painted slices: the paper's, WITHOUT the
    adversarial mask terms.

    The mask discriminator's "real" masks would be only the few painted ones: it learns them by
    heart within a few steps and then pushes every prediction towards those shapes. Measured on
    Sunnybrook (2 given slices, 150 steps, seed 1): Dice on the other slices 0.719 with the
    mask adversarial terms, 0.771 without. The Dice, reconstruction (labelled and unlabelled
    slices) and image adversarial terms stay, so the unpainted slices still teach the model
    through the reconstruction (SDNet's semi-supervision). The mask discriminator is not trained
    either (it is kept as it was).
    """
    from napari_sdnet.training.trainer import LossWeights

    return LossWeights(adv_mask=0.0, unl_adv_mask=0.0)


def finetune(
    model: Model,
    image: Any,
    labels: Any,
    spacing: Sequence[float] | None = None,
    *,
    seconds: float | None = None,
    steps: int | None = None,
    lr: float = FINETUNE_LR,
    lr_schedule: str = FINETUNE_SCHEDULE,
    freeze: Sequence[str] = (),
    device: Any = None,
    batch_size: int = 4,
    seed: int = 0,
    stop: Callable[[], bool] | None = None,
) -> Generator[Progress, None, Model]:
    """Fine-tune a COPY of ``model`` on the slices painted in ``labels``; yields progress.

    Every 2D slice (every ``(t, z)`` slice of a 4D study) of ``labels`` that holds at least one
    myocardium pixel (ACDC value 2) is a labelled training slice; every other slice of the
    study is part of the unlabelled pool (SDNet's semi-supervised losses). The study is
    preprocessed exactly as :func:`segment` does (one normalisation for the whole array).
    Training is :func:`napari_sdnet.training.trainer.train` with ``model_type="sdnet"`` and
    :func:`finetune_loss_weights` (no adversarial mask terms), augmentation on and no
    validation, until the ``seconds`` or ``steps`` budget (whichever comes first) or until
    ``stop()`` returns True.

    Use it as a generator (``for progress in finetune(...)``; the return value is the new
    model) or with :func:`run`: ``new = api.run(api.finetune(model, image, labels, ...))``.

    Args:
        model: the base model; it is never modified.
        image: ``(y, x)``, ``(z, y, x)`` or ``(t, z, y, x)``.
        labels: same shape, ACDC values: 2 = myocardium (other values are ignored).
        spacing: as for :func:`segment`.
        seconds / steps: the budget; at least one is required.
        lr: Adam learning rate (the start of the schedule).
        lr_schedule: ``"cosine"`` (default: from ``lr`` down to 0 at the end of the budget;
            with both budgets, whichever is further along) or ``"constant"``.
        freeze: parameter-name prefixes not to train, e.g. ``("reconstructor",)`` or
            ``("decomposer.down",)``.
        device: where to train; default the model's device.
        batch_size: slices per batch.
        seed: seeds the batch order and the augmentation.
        stop: polled after every step; when it returns True training ends early and the model
            so far is returned.

    Returns (as the generator's return value):
        A new :class:`Model` whose ``info.training["finetuned"]`` records the base model, the
        labelled/unlabelled slice counts, steps and seconds. Its metrics are cleared (the base
        model's metrics no longer apply; they are kept in that record).

    Raises:
        InputError: no slice with myocardium (label 2) painted, labels of another shape, no
            budget, or bad image/spacing (as :func:`segment`).
    """
    from napari_sdnet.device import resolve_device
    from napari_sdnet.training.checkpoint import CheckpointInfo
    from napari_sdnet.training.trainer import (
        AugmentConfig,
        TrainConfig,
        TrainData,
        check_budget,
        clone_model,
        train,
    )

    model = _as_model(model)
    arr = _check_image(image)
    lab = _painted_slices(labels, arr.shape)
    if seconds is None and steps is None:
        raise InputError("give a fine-tuning budget: seconds=... and/or steps=...")
    check_budget(lr=lr, seconds=seconds, steps=steps)
    batch_size = _check_batch_size(batch_size)

    myo = lab == MYOCARDIUM
    painted = myo.reshape(-1, *arr.shape[-2:]).any(axis=(1, 2))
    if not painted.any():
        values = sorted(int(v) for v in np.unique(lab))
        if values and values != [0]:
            hint = (
                f" (the labels hold the values {values[:8]}; the myocardium is label 2, "
                "the ACDC convention)"
            )
        else:
            hint = " (the labels are empty)"
        raise InputError(
            "no slice has myocardium (label 2) painted; paint the myocardium with label 2 on "
            f"at least one slice{hint}"
        )
    in_plane, _ = _resolve_spacing(spacing, arr.ndim, model.preprocess)
    slices, grid = preprocess_volume(arr, in_plane, model.preprocess)
    size = model.config.image_size
    flat = slices.reshape(-1, size, size)
    masks = preprocess_labels(myo.astype(np.uint8), grid).reshape(-1, size, size)
    data = TrainData(
        labelled_images=flat[painted],
        labelled_masks=masks[painted],
        unlabelled_images=flat[~painted] if (~painted).any() else None,
    )
    n_labelled, n_unlabelled = int(painted.sum()), int((~painted).sum())

    dev = model.device if device is None else resolve_device(device)
    if not model.info.has_discriminators:
        warnings.warn(
            "the model file holds no discriminators; fine-tuning starts them from scratch",
            UserWarning,
            stacklevel=2,
        )
    network = clone_model(model.network).to(dev)
    before = _painted_dice(network, data)
    # A U-Net/GAN baseline is fine-tuned as what it is (Dice on the painted slices): its
    # reconstructor was never trained, and a few steps would not make it so.
    sdnet = model.model_type == "sdnet"
    config = TrainConfig(
        model_type="sdnet" if sdnet else "unet",
        batch_size=batch_size,
        lr=float(lr),
        max_iterations=None if steps is None else int(steps),
        max_epochs=None,
        max_seconds=None if seconds is None else float(seconds),
        patience=None,
        seed=seed,
        augment=AugmentConfig(enabled=True),
        weights=finetune_loss_weights(),
        # the user's choice, and the mask discriminator (its loss is not used, see above)
        freeze=(*freeze, "mask_discriminator"),
        lr_schedule=lr_schedule,
    )
    trainer = train(network, data, config)
    last: Progress | None = None
    try:
        for progress in trainer:
            last = progress
            yield progress
            if progress.done:
                break
            if stop is not None and stop():
                trainer.close()  # leaves the network usable, in eval mode
                break
    finally:
        trainer.close()
    if last is not None and last.stop_reason == "diverged":
        raise TrainingError(
            f"fine-tuning diverged at step {last.iteration} (the loss became NaN or infinite); "
            "nothing was kept. Try a lower learning rate"
        )
    from napari_sdnet.training.checkpoint import non_finite_tensors

    bad = non_finite_tensors(network.state_dict())
    if bad:
        raise TrainingError(
            f"fine-tuning produced NaN or infinite weights (e.g. {bad[0]}); nothing was kept. "
            "Try a lower learning rate"
        )
    after = _painted_dice(network, data)
    if before >= FINETUNE_CHECK_FROM and after < before - FINETUNE_WORSE_BY:
        raise TrainingError(
            f"fine-tuning made the model worse on the painted slices themselves (myocardium "
            f"Dice {before:.3f} -> {after:.3f}); nothing was kept. Try a lower learning rate "
            "or check the painted labels"
        )
    iterations = 0 if last is None else last.iteration
    elapsed = 0.0 if last is None else last.elapsed
    base = model.info
    record = {
        "base_model": model.source,
        "base_training": {k: v for k, v in base.training.items() if k != "finetuned"},
        "base_metrics": dict(base.metrics),
        "labelled_slices": n_labelled,
        "unlabelled_slices": n_unlabelled,
        "image_shape": [int(s) for s in arr.shape],
        "spacing": [float(s) for s in in_plane],
        "steps": int(iterations),
        "seconds": round(float(elapsed), 2),
        "lr": float(lr),
        "lr_schedule": lr_schedule,
        "freeze": list(freeze),
        "painted_dice_before": round(before, 4),
        "painted_dice_after": round(after, 4),
    }
    training = dict(base.training)
    training["finetuned"] = [*base.training.get("finetuned", []), record]
    info = CheckpointInfo(
        model_config=base.model_config,
        preprocess=base.preprocess,
        model_type=base.model_type,
        training=training,
        metrics={},
        has_discriminators=True,
    )
    network.eval()
    return Model(network=network, info=info, device=dev, source=f"finetuned({model.source})")


# --------------------------------------------------------------------------------------------
# cardiac function: volumes, ED/ES, EF, LV mass (napari_sdnet.cardiac, docs/cardiac_function.md)
# --------------------------------------------------------------------------------------------
from napari_sdnet.cardiac import (  # noqa: E402  (re-exported; the module is Qt- and torch-free)
    CardiacFunction,
    measure_ed_es,
    measure_labels,
    measure_segmentation,
    segmented_structures,
)


def measure(
    model: Model,
    image: Any,
    spacing: Sequence[float],
    es_image: Any = None,
    es_spacing: Sequence[float] | None = None,
    *,
    ed: int | None = None,
    es: int | None = None,
    time_unit: str | None = None,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
) -> CardiacFunction:
    """Segment a cine (or an ED and an ES volume) with ``model`` and measure cardiac function.

    ``image`` is a 4D cine ``(t, z, y, x)`` (ED/ES from the LV volume curve, or ``ed``/``es``),
    or, with ``es_image``, the 3D ED volume. ``spacing`` per axis in mm (``Geometry.spacing``).
    Structures the model does not segment (today's models: the LV and RV cavities) are reported
    as absent for that reason; see :func:`napari_sdnet.cardiac.measure_segmentation`.
    """
    images = [image] if es_image is None else [image, es_image]
    spacings = [spacing] if es_image is None else [spacing, es_spacing or spacing]
    for arr, what in zip(images, ("image", "ES image"), strict=False):
        if np.ndim(arr) != (4 if es_image is None else 3):
            want = "a 4D (t, z, y, x) cine" if es_image is None else "a 3D (z, y, x) volume"
            raise InputError(f"{what} must be {want}; got shape {np.shape(arr)}")
    totals = [int(np.prod(np.shape(a)[:-2])) for a in images]
    segs = []
    for k, (arr, sp) in enumerate(zip(images, spacings, strict=True)):
        offset = sum(totals[:k])

        def report(done: int, total: int | None, _o: int = offset) -> None:
            if progress is not None:
                progress(_o + done, sum(totals))

        segs.append(segment(model, arr, sp, batch_size=batch_size, progress=report))
    if es_image is None:
        return measure_segmentation(segs[0], spacing, ed=ed, es=es, time_unit=time_unit)
    return measure_segmentation(segs[0], spacings[0], segs[1], spacings[1])
