"""Segmentation and reconstruction of 2D/3D/4D images: :func:`segment` (and its generator
:func:`segment_iter`), :class:`Segmentation`, :func:`reconstruct` from any mask and Z.
Re-exported by :mod:`napari_sdnet.api` (see its docstring for the axis order)."""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import InitVar, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from napari_sdnet.choices import ACDC_LABELS
from napari_sdnet.errors import InputError
from napari_sdnet.io.slices import MYOCARDIUM, structure_channels
from napari_sdnet.models import Model, _as_model
from napari_sdnet.onnx_engine import DEFAULT_BATCH_SIZE as ONNX_BATCH_SIZE
from napari_sdnet.onnx_engine import OnnxModel
from napari_sdnet.postprocess import largest_components
from napari_sdnet.preprocess import (
    PreprocessConfig,
    SliceGrid,
    inplane_spacing,
    preprocess_volume,
    restore_image,
    restore_probabilities,
    restore_probability_window,
)

#: A pixel is myocardium when its (restored) probability is at least this.
THRESHOLD = 0.5

#: the :class:`Segmentation` attributes computed on first use when not given
_LAZY = ("probability", "model_reconstruction", "reconstruction")

#: ``progress(done, total)`` callbacks; ``total`` is None when unknown.
ProgressCallback = Callable[[int, "int | None"], None]


@dataclass(eq=False)
class Segmentation:
    """The result of :func:`segment` for an image of shape ``(..., H, W)``.

    Attributes:
        mask: uint8 ``(..., H, W)``, 1 = myocardium (restored probability >= 0.5; for a model
            of several structures: where the myocardium is the most likely class).
        probability: float32 ``(..., H, W)`` in [0, 1] (0 outside the model's field of view):
            the myocardium's, restored from ``model_mask`` on first use when not given.
        structures / label_map: see below; :meth:`labels` gives the ACDC label map.
        z: float32 ``(..., z_dim)``: the latent vector Z of every slice (None when segmented
            with ``latents=False``).
        reconstruction: float32 ``(..., H, W)``: g(round(M), Z) on the input grid, in the
            model's [-1, 1] intensity scale (``pad_value`` outside the field of view). See
            :attr:`reconstruction_intensity` for the image's own units.
        grid: the :class:`~napari_sdnet.preprocess.SliceGrid` mapping model grid <-> input grid
            (with the clip range of the normalisation in ``grid.intensity_range``).
        model_image: float32 ``(..., S, S)``: the preprocessed input the model saw.
        model_mask: float32 ``(..., S, S)`` (``(..., C, S, S)`` for C structures): the soft
            mask M on the model grid.
        model_reconstruction: float32 ``(..., S, S)``: the reconstruction on the model grid.
        spacing: the in-plane ``(sy, sx)`` (mm) that was used.
        spacing_assumed: True when no spacing was given and the model's pixel size was assumed.
        precision: the inference precision that was used (``fp32``, ``bf16`` or ``fp16``).

    :func:`segment` restores only what its masks need: ``probability`` is restored on first
    use. It does not run the reconstructor: ``reconstruction``,
    ``model_reconstruction`` and :attr:`reconstruction_intensity` are computed on first use
    (once, with the model and precision that made the segmentation), so a caller that only
    wants the mask never pays for them.
    """

    mask: np.ndarray
    probability: np.ndarray | None = field(repr=False)
    z: np.ndarray | None
    reconstruction: np.ndarray | None = field(repr=False)
    grid: SliceGrid
    model_image: np.ndarray
    model_mask: np.ndarray
    model_reconstruction: np.ndarray | None = field(repr=False)
    spacing: tuple[float, float]
    spacing_assumed: bool = False
    precision: str = "fp32"
    #: what the model segments, in channel order (``("myocardium",)`` for the paper's model)
    structures: tuple[str, ...] = ("myocardium",)
    #: ACDC labels (1 RV, 2 myocardium, 3 LV) on the input grid, for models of several
    #: structures (None for a myocardium-only model: see :meth:`labels`)
    label_map: np.ndarray | None = field(default=None, repr=False)
    #: computes the model-grid reconstruction when it was not given (see the class docstring)
    decoder: InitVar[Callable[[], np.ndarray] | None] = None

    def __post_init__(self, decoder: Callable[[], np.ndarray] | None) -> None:
        self.__dict__["_decoder"] = decoder
        self.__dict__["_lazy_lock"] = threading.RLock()
        # not given: leave them unset, so that the first access goes through __getattr__
        for name in _LAZY:
            if self.__dict__.get(name) is None:
                del self.__dict__[name]

    def __getattr__(self, name: str) -> Any:
        # only called for attributes that are not set: the lazy probability and reconstructions
        if name not in _LAZY or "_lazy_lock" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")
        with self.__dict__["_lazy_lock"]:
            if name not in self.__dict__:
                if name == "probability":
                    prob = self.model_mask
                    if len(self.structures) > 1:
                        prob = prob[..., self.structures.index("myocardium"), :, :]
                    value = restore_probabilities(prob, self.grid)
                elif name == "reconstruction":
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
        """ACDC labels, uint8: 1 RV cavity, 2 myocardium, 3 LV cavity for a model of several
        structures; 2 = myocardium, 0 elsewhere for a myocardium-only model."""
        if self.label_map is not None:
            return self.label_map
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
    model: Model | OnnxModel,
    slices: np.ndarray,
    batch_size: int | None,
    *,
    precision: str = "auto",
    outputs: Sequence[str] = ("mask",),
) -> Generator[
    tuple[int, int], None, tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]
]:
    """Batched inference on model-grid slices ``(N, S, S)``, yielding ``(done, N)``.

    Returns ``(probability (N, S, S) or (N, C, S, S) for C structures, z (N, z_dim),
    reconstruction (N, S, S))``, each None
    unless named in ``outputs`` (``mask``, ``z``, ``reconstruction``; default: the mask only).
    The default precision is :func:`segment`'s, so that :func:`evaluate` scores what
    :func:`segment` (and ``napari-sdnet predict``) return. An :class:`OnnxModel` computes the
    mask only (fp32).
    """
    n = len(slices)
    size = model.config.image_size
    channels = model.config.n_structures
    shapes = {
        "mask": (n, size, size) if channels == 1 else (n, channels, size, size),
        "z": (n, model.config.z_dim),
        "reconstruction": (n, size, size),
    }
    arrays = {k: np.empty(shapes[k], np.float32) for k in outputs}
    start = 0
    yield 0, n
    if isinstance(model, OnnxModel):
        batches = ((done, {"mask": mask}) for done, mask in model.iter_predict(slices, batch_size))
    else:
        from napari_sdnet.inference import iter_predict

        gen = iter_predict(
            model.network, slices, batch_size=batch_size, precision=precision, outputs=outputs
        )
        batches = (
            (done, {"mask": out.probability, "z": out.z, "reconstruction": out.reconstruction})
            for done, out in gen
        )
    for done, values in batches:
        for key in arrays:
            arrays[key][start:done] = values[key]
        start = done
        yield done, n
    return arrays.get("mask"), arrays.get("z"), arrays.get("reconstruction")


def structure_labels(probabilities: np.ndarray, structures: Sequence[str]) -> np.ndarray:
    """ACDC label map (uint8) from per-structure probabilities ``(C, ..., H, W)`` (a softmax's
    structure part): the arg-max over background ``1 - sum`` and the structures, ties to
    background, so a pixel is labelled where its structure is the most likely class."""
    probabilities = np.asarray(probabilities, np.float32)
    # the arg-max over [background, structures...] one channel at a time (no stacked copy): a
    # structure takes a pixel only where it beats everything before it (ties stay earlier)
    best = 1.0 - probabilities.sum(axis=0)  # the background's probability
    out = np.zeros(best.shape, np.uint8)
    for name, p in zip(structures, probabilities, strict=True):
        out[p > best] = ACDC_LABELS[name]
        np.maximum(best, p, out=best)
    return out


def structure_masks(labels: Any, structures: Sequence[str]) -> np.ndarray:
    """One binary channel per structure, float32 ``(..., C, H, W)``, from an ACDC label map
    ``(..., H, W)``: the M that :func:`reconstruct` takes for a model of ``structures``."""
    return structure_channels(labels, structures).astype(np.float32)


def native_outputs(
    model_prob: np.ndarray, grid: SliceGrid, structures: Sequence[str]
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(mask, label_map)`` on the input grid from the soft masks on the model grid,
    ``(..., S, S)`` or ``(..., C, S, S)`` for C structures: the hard myocardium mask (uint8;
    restored probability >= 0.5 for one structure) and, for several structures, the ACDC label
    map with one connected component per structure and volume
    (:mod:`napari_sdnet.postprocess`). The one rule of :func:`segment` and
    :func:`napari_sdnet.evaluation.evaluate`.

    Only the pixels that can be labelled are restored: a structure wins a pixel only with a
    probability of at least 1 / (C + 1) (background and C structures share 1), and a linear
    blend of model pixels under that stays under it (``restore_probabilities(floor=...)``), so
    the answer is the same as restoring everything, for the heart's bounding box of work.
    """
    floor = 1.0 / (len(structures) + 1)
    several = len(structures) > 1
    # channels first while restoring: every (t, z) slice shares the grid
    prob = np.moveaxis(model_prob, -3, 0) if several else model_prob
    lead = prob.shape[1:-2] if several else prob.shape[:-2]
    mask = np.zeros((*lead, *grid.in_shape), np.uint8)
    part = restore_probability_window(prob, grid, floor)
    if not several:
        if part is not None:
            mask[(..., *part[1])] = part[0] >= THRESHOLD
        return mask, None
    label_map = np.zeros_like(mask)
    if part is not None:
        # outside the window nothing is labelled, so its components are the whole map's
        label_map[(..., *part[1])] = largest_components(
            structure_labels(part[0], structures), [ACDC_LABELS[s] for s in structures]
        )
        mask[(..., *part[1])] = label_map[(..., *part[1])] == MYOCARDIUM
    return mask, label_map


def _run_settings(
    model: Model | OnnxModel, precision: str, batch_size: int | None, latents: bool
) -> tuple[str, int]:
    """The precision and batch size a segmentation of ``model`` runs with."""
    if isinstance(model, OnnxModel):
        if latents:
            raise InputError(
                "the ONNX Runtime engine computes masks only: segment with latents=False, or "
                "load the model with engine='torch' for Z and reconstructions"
            )
        if str(precision or "auto").strip().lower() not in ("auto", "fp32"):
            raise InputError(f"the ONNX Runtime engine runs in fp32, not {precision}")
        return model.precision, _check_batch_size(
            ONNX_BATCH_SIZE if batch_size is None else batch_size
        )
    from napari_sdnet.inference import default_batch_size, resolve_precision

    used_precision = resolve_precision(precision, model.device)
    if batch_size is None:
        batch_size = default_batch_size(model.device, used_precision)
    return used_precision, _check_batch_size(batch_size)


def segment_iter(
    model: Model | OnnxModel,
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
    if not isinstance(model, OnnxModel):
        model = _as_model(model)
    arr = _check_image(image)
    used_precision, batch_size = _run_settings(model, precision, batch_size, latents)
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

    structures = model.config.structures
    channels = () if len(structures) == 1 else (len(structures),)
    model_prob = prob.reshape(*lead, *channels, size, size)
    mask, label_map = native_outputs(model_prob, grid, structures)
    result = Segmentation(
        mask=mask,
        probability=None,
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
        structures=structures,
        label_map=label_map,
    )
    yield result
    return result


def segment(
    model: Model | OnnxModel,
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
        model: from :func:`load_model`, or from
            :func:`napari_sdnet.onnx_engine.load_predictor` (an :class:`OnnxModel` segments
            in fp32 on ONNX Runtime, masks only: pass ``latents=False``).
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
            A model of several structures takes one channel per structure, ``(..., C, S, S)``
            in ``model.config.structures`` order (:func:`structure_masks` makes them from
            ACDC labels).
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
    channels = model.config.n_structures
    if channels > 1 and (m.ndim < 3 or m.shape[-3] != channels):
        raise InputError(
            f"this model's M has {channels} channels ({', '.join(model.config.structures)}): "
            f"pass masks of shape (..., {channels}, H, W); got {m.shape}"
        )
    mask_lead = m.shape[:-3] if channels > 1 else m.shape[:-2]
    per_slice = (channels, size, size) if channels > 1 else (size, size)
    try:
        lead = np.broadcast_shapes(mask_lead, zz.shape[:-1])
    except ValueError:
        raise InputError(
            f"mask leading shape {mask_lead} and Z leading shape {zz.shape[:-1]} do not "
            "broadcast"
        ) from None
    # copies: torch refuses read-only (broadcast) arrays
    m_flat = np.array(np.broadcast_to(m, (*lead, *per_slice)).reshape(-1, *per_slice))
    z_flat = np.array(np.broadcast_to(zz, (*lead, z_dim)).reshape(-1, z_dim))
    out = decode_latents(model.network, m_flat, z_flat, batch_size=batch_size, precision=precision)
    out = out.reshape(*lead, size, size)
    if grid is None:
        if denormalise:
            raise InputError("denormalise needs the grid of a segmented image (grid=seg.grid)")
        return out
    return restore_image(out, grid, denormalise=denormalise)
