"""Preprocessing for SDNet and its exact geometric inverse (pure NumPy/SciPy).

Forward path (what the model sees)::

    image (..., H, W) at in-plane spacing (sy, sx)
      -> normalise_intensity: clip the WHOLE array to its 5th-95th percentiles, scale to [-1, 1]
      -> SliceGrid.to_model: ONE interpolation per slice that resamples to ``target_spacing`` and
         centre-crops/pads to S x S at the same time (padding = ``pad_value``, -1)

Inverse path (back to the user's grid)::

    model output (..., S, S) -> SliceGrid.from_model -> (..., H, W)

Both directions are the same axis-aligned affine map, written once in :class:`SliceGrid`: the
centre of the original grid ((H-1)/2, (W-1)/2) and the centre of the model grid ((S-1)/2,
(S-1)/2) are the same physical point, and one pixel step is ``sy`` / ``sx`` mm on the original
grid and ``target_spacing`` mm on the model grid. The inverse is the analytic inverse of that map
(not a chain of "un-pad then un-resample" steps), so it holds for any input grid: odd or even
sizes, non-square pixels, inputs larger (cropped) or smaller (padded) than the model's field of
view. Original pixels outside the model's field of view come back as ``cval`` (background).

Axis order is napari's: the last two axes are always the in-plane ``(y, x)``; any leading axes
(z, t, ...) are carried through slice by slice. See ``docs/preprocessing.md``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sdnet.errors import InputError, dataclass_kwargs

# the kernels' names stay importable from here (tests/test_inference_pipeline.py uses them)
from napari_sdnet.preprocess_resample import _aa_sigma as _aa_sigma
from napari_sdnet.preprocess_resample import _reading_window, _resample
from napari_sdnet.preprocess_resample import _resample_linear as _resample_linear

__all__ = [
    "MIN_SIDE",
    "PreprocessConfig",
    "SliceGrid",
    "normalise_intensity",
    "preprocess_labels",
    "preprocess_volume",
    "restore_image",
    "restore_labels",
    "restore_probabilities",
]

#: Smallest accepted in-plane image side (pixels).
MIN_SIDE = 8

# Original/model pixels whose centre lies within half a pixel outside the first/last sample are
# still inside the sampled area (a pixel covers [i - 0.5, i + 0.5]); a tiny tolerance absorbs
# floating point error at exactly half a pixel.
_EDGE = 0.5 + 1e-6


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


def _finite_positive(value: Any, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(out) or out <= 0:
        raise InputError(f"{what} must be a finite number > 0, got {value!r}")
    return out


def _check_percentiles(percentiles: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise InputError(
            f"clip percentiles must be two numbers (low, high), got {percentiles!r}"
        ) from None
    if not (0.0 <= lo < hi <= 100.0):
        raise InputError(
            f"clip percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}"
        )
    return lo, hi


@dataclass(frozen=True)
class PreprocessConfig:
    """How images are put on the model grid. Travels inside model checkpoints (``to_dict``).

    Attributes:
        target_spacing: in-plane pixel size of the model grid, mm/pixel (the paper: 1.37).
        size: the model grid is ``size x size`` pixels (the paper: 224).
        clip_percentiles: per-volume intensity clipping percentiles before scaling to [-1, 1].
        pad_value: model-grid intensity outside the original image's field of view.
    """

    target_spacing: float = 1.37
    size: int = 224
    clip_percentiles: tuple[float, float] = (5.0, 95.0)
    pad_value: float = -1.0

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "target_spacing", _finite_positive(self.target_spacing, "target_spacing")
        )
        size = self.size
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < MIN_SIDE:
            raise InputError(f"size must be an integer >= {MIN_SIDE}, got {size!r}")
        object.__setattr__(self, "size", int(size))
        object.__setattr__(self, "clip_percentiles", _check_percentiles(self.clip_percentiles))
        pad = float(self.pad_value)
        if not math.isfinite(pad):
            raise InputError(f"pad_value must be finite, got {self.pad_value!r}")
        object.__setattr__(self, "pad_value", pad)

    @property
    def field_of_view_mm(self) -> float:
        """Side length of the model grid in mm (``size * target_spacing``)."""
        return self.size * self.target_spacing

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        return {
            "target_spacing": self.target_spacing,
            "size": self.size,
            "clip_percentiles": list(self.clip_percentiles),
            "pad_value": self.pad_value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`. Missing keys take defaults; unknown keys are an error.

        Unknown keys are refused rather than ignored: a checkpoint written with a preprocessing
        option this version does not know would otherwise be fed differently prepared images.
        """
        kwargs = dataclass_kwargs(
            data,
            cls,
            "preprocessing config",
            "unknown preprocessing option(s) {unknown}; known: {known}",
        )
        if "clip_percentiles" in kwargs:
            kwargs["clip_percentiles"] = _check_percentiles(kwargs["clip_percentiles"])
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# intensity
# --------------------------------------------------------------------------------------------


def _as_real_array(volume: Any, what: str = "image") -> np.ndarray:
    arr = np.asarray(volume)
    if np.iscomplexobj(arr):
        raise InputError(f"{what} has complex values ({arr.dtype}); pass the magnitude image")
    if arr.dtype.kind == "b":
        raise InputError(f"{what} is boolean (a mask?); an intensity image is needed")
    if arr.dtype.kind not in "iuf":
        raise InputError(f"{what} must be numeric, got dtype {arr.dtype}")
    if arr.size == 0:
        raise InputError(f"{what} is empty (shape {arr.shape})")
    return arr


def _clean_and_range(volume: Any, percentiles: Sequence[float]) -> tuple[np.ndarray, float, float]:
    """Float32 copy with non-finite voxels replaced, and the (low, high) clip values."""
    lo_p, hi_p = _check_percentiles(percentiles)
    arr = _as_real_array(volume)
    data = np.array(arr, dtype=np.float32)  # always a copy: we may write into it
    finite = np.isfinite(data)
    n_bad = int(data.size - np.count_nonzero(finite))
    if n_bad == data.size:
        raise InputError("image has no finite values (all NaN/inf); nothing to segment")
    values = data[finite] if n_bad else data.ravel()
    # float32-representable clip values, so that clipped voxels map to exactly -1 / +1
    lo, hi = (float(np.float32(v)) for v in np.percentile(values, [lo_p, hi_p]))
    if n_bad:
        warnings.warn(
            f"{n_bad} of {data.size} voxels are NaN or infinite; they were replaced by the "
            f"{lo_p:g}th percentile of the finite voxels ({lo:g})",
            RuntimeWarning,
            stacklevel=3,
        )
        data[~finite] = lo
    if not hi > lo:
        vmin, vmax = float(values.min()), float(values.max())
        if not vmax > vmin:
            raise InputError(f"image is constant (every voxel = {vmin:g}): nothing to segment")
        # Very sparse image: the percentiles coincide but there is some spread. Use min/max.
        lo, hi = vmin, vmax
    return data, lo, hi


def _scale(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip ``data`` (float32, in place) to [lo, hi] and map it linearly to [-1, 1]."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    np.clip(data, lo32, hi32, out=data)
    data -= lo32
    data /= hi32 - lo32  # a voxel at hi becomes exactly 1 (x / x)
    data *= np.float32(2.0)
    data -= np.float32(1.0)
    np.clip(data, -1.0, 1.0, out=data)
    return data


def normalise_intensity(volume: Any, percentiles: Sequence[float] = (5.0, 95.0)) -> np.ndarray:
    """Clip a whole array to its intensity percentiles and scale it linearly to [-1, 1].

    The percentiles are computed over EVERY voxel of ``volume`` (any ndim): pass one 3D volume
    to normalise per volume, one slice to normalise per slice.

    * Voxels at or below the low percentile become -1, at or above the high percentile +1.
    * NaN/inf voxels are replaced by the low percentile of the finite voxels (so they map to
      -1) and a ``RuntimeWarning`` says how many there were. All non-finite -> ``InputError``.
    * If the two percentiles coincide (very sparse images, e.g. > 95 % zeros) but the image is
      not constant, the minimum and maximum are used instead. A constant image -> ``InputError``.

    Returns:
        float32 array of the same shape, values in [-1, 1].
    """
    data, lo, hi = _clean_and_range(volume, percentiles)
    return _scale(data, lo, hi)


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------
def _check_order(order: int) -> int:
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or not 0 <= order <= 5:
        raise InputError(f"interpolation order must be an integer 0-5, got {order!r}")
    return int(order)


@dataclass(frozen=True)
class SliceGrid:
    """Mapping between one in-plane original grid and the model grid.

    The original grid is ``in_shape = (H, W)`` pixels at ``in_spacing = (sy, sx)`` mm; the model
    grid is ``size x size`` pixels at ``target_spacing`` mm. Centre-aligned: original pixel
    ``((H-1)/2, (W-1)/2)`` and model pixel ``((S-1)/2, (S-1)/2)`` are the same point. In pixel
    coordinates (per axis, ``s`` = original spacing, ``t`` = target spacing)::

        original = (model - (S-1)/2) * t / s + (H-1)/2
        model    = (original - (H-1)/2) * s / t + (S-1)/2

    ``intensity_range`` optionally records the (low, high) clip values of the volume the grid
    was made for, so that reconstructions can be mapped back to the input's intensity scale.
    """

    in_shape: tuple[int, int]
    in_spacing: tuple[float, float]
    size: int = 224
    target_spacing: float = 1.37
    pad_value: float = -1.0
    intensity_range: tuple[float, float] | None = field(default=None)

    def __post_init__(self) -> None:
        try:
            h, w = (int(v) for v in self.in_shape)
        except (TypeError, ValueError):
            raise InputError(f"in_shape must be (H, W), got {self.in_shape!r}") from None
        if h < 1 or w < 1:
            raise InputError(f"in_shape must be positive, got {self.in_shape!r}")
        try:
            sy, sx = self.in_spacing
        except (TypeError, ValueError):
            raise InputError(f"in_spacing must be (sy, sx), got {self.in_spacing!r}") from None
        object.__setattr__(self, "in_shape", (h, w))
        object.__setattr__(
            self,
            "in_spacing",
            (_finite_positive(sy, "y spacing"), _finite_positive(sx, "x spacing")),
        )
        size = self.size
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise InputError(f"size must be a positive integer, got {size!r}")
        object.__setattr__(self, "size", int(size))
        object.__setattr__(
            self, "target_spacing", _finite_positive(self.target_spacing, "target_spacing")
        )
        object.__setattr__(self, "pad_value", float(self.pad_value))
        if self.intensity_range is not None:
            lo, hi = (float(v) for v in self.intensity_range)
            object.__setattr__(self, "intensity_range", (lo, hi))

    # -- construction / serialisation ---------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        in_shape: Sequence[int],
        in_spacing: Sequence[float],
        config: PreprocessConfig | None = None,
        intensity_range: tuple[float, float] | None = None,
    ) -> SliceGrid:
        """Grid for an ``(H, W)`` image at ``(sy, sx)`` mm with the model grid of ``config``."""
        config = PreprocessConfig() if config is None else config
        return cls(
            in_shape=tuple(in_shape[-2:]),
            in_spacing=tuple(in_spacing[-2:]),
            size=config.size,
            target_spacing=config.target_spacing,
            pad_value=config.pad_value,
            intensity_range=intensity_range,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "in_shape": list(self.in_shape),
            "in_spacing": list(self.in_spacing),
            "size": self.size,
            "target_spacing": self.target_spacing,
            "pad_value": self.pad_value,
            "intensity_range": None if self.intensity_range is None else list(self.intensity_range),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SliceGrid:
        """Inverse of :meth:`to_dict`."""
        kwargs = dataclass_kwargs(
            data, cls, "slice grid", "unknown slice-grid field(s) {unknown}; known: {known}"
        )
        missing = [k for k in ("in_shape", "in_spacing") if k not in kwargs]
        if missing:
            raise InputError(f"slice grid is missing {missing}")
        kwargs["in_shape"] = tuple(kwargs["in_shape"])
        kwargs["in_spacing"] = tuple(kwargs["in_spacing"])
        if kwargs.get("intensity_range") is not None:
            kwargs["intensity_range"] = tuple(kwargs["intensity_range"])
        return cls(**kwargs)

    # -- geometry -----------------------------------------------------------------------------

    @property
    def model_shape(self) -> tuple[int, int]:
        """``(S, S)``."""
        return (self.size, self.size)

    @property
    def zoom(self) -> tuple[float, float]:
        """Model pixels per original pixel, per axis (``s / t``; < 1 means downsampling)."""
        return (
            self.in_spacing[0] / self.target_spacing,
            self.in_spacing[1] / self.target_spacing,
        )

    def _model_to_original(self) -> tuple[np.ndarray, np.ndarray]:
        """(step, offset): original pixel coordinate = step * model coordinate + offset."""
        s = np.asarray(self.in_spacing, dtype=np.float64)
        n = np.asarray(self.in_shape, dtype=np.float64)
        step = self.target_spacing / s
        offset = (n - 1.0) / 2.0 - step * (self.size - 1.0) / 2.0
        return step, offset

    def _original_to_model(self) -> tuple[np.ndarray, np.ndarray]:
        """(step, offset): model pixel coordinate = step * original coordinate + offset."""
        s = np.asarray(self.in_spacing, dtype=np.float64)
        n = np.asarray(self.in_shape, dtype=np.float64)
        step = s / self.target_spacing
        offset = (self.size - 1.0) / 2.0 - step * (n - 1.0) / 2.0
        return step, offset

    def original_to_model_coords(self, points: Any) -> np.ndarray:
        """Map ``(..., 2)`` original pixel coordinates ``(y, x)`` to model pixel coordinates."""
        step, offset = self._original_to_model()
        return np.asarray(points, dtype=np.float64) * step + offset

    def model_to_original_coords(self, points: Any) -> np.ndarray:
        """Map ``(..., 2)`` model pixel coordinates ``(y, x)`` to original pixel coordinates."""
        step, offset = self._model_to_original()
        return np.asarray(points, dtype=np.float64) * step + offset

    def _inside(self, to_model: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per-axis booleans: target pixels whose centre lies inside the source grid's area.

        A source grid of ``n`` pixels covers pixel coordinates ``[-0.5, n - 0.5]``.
        """
        if to_model:
            step, offset = self._model_to_original()
            n_out, n_src = (self.size, self.size), self.in_shape
        else:
            step, offset = self._original_to_model()
            n_out, n_src = self.in_shape, (self.size, self.size)
        masks = []
        for k in range(2):
            c = step[k] * np.arange(n_out[k]) + offset[k]
            masks.append((c >= -_EDGE) & (c <= n_src[k] - 1 + _EDGE))
        return masks[0], masks[1]

    def fov_mask(self) -> np.ndarray:
        """Boolean ``(H, W)``: original pixels that lie inside the model's field of view.

        Pixels outside it are invisible to the model and come back as ``cval`` from
        :meth:`from_model`.
        """
        rows, cols = self._inside(to_model=False)
        return np.outer(rows, cols)

    def model_fov_mask(self) -> np.ndarray:
        """Boolean ``(S, S)``: model pixels covered by the original image (the rest is padding)."""
        rows, cols = self._inside(to_model=True)
        return np.outer(rows, cols)

    def _check_last2(self, arr: np.ndarray, expected: tuple[int, int], what: str) -> None:
        if arr.ndim < 2 or tuple(arr.shape[-2:]) != tuple(expected):
            raise InputError(
                f"{what} must have shape (..., {expected[0]}, {expected[1]}), got {arr.shape}"
            )

    def to_model(
        self,
        arr: Any,
        order: int = 1,
        cval: float | None = None,
        anti_aliasing: bool | None = None,
    ) -> np.ndarray:
        """Resample + centre crop/pad ``(..., H, W)`` to the model grid ``(..., S, S)``.

        One interpolation per slice (``scipy.ndimage.affine_transform``).

        Args:
            arr: array whose last two axes are the original ``(H, W)``.
            order: spline order; 0 (nearest) for labels, 1 (linear, default) for images.
            cval: value outside the original field of view; default ``pad_value`` for
                ``order > 0`` and 0 for ``order == 0``.
            anti_aliasing: Gaussian prefilter when downsampling (sigma ``(t/s - 1) / 2`` per
                axis, as ``skimage.transform.rescale``); default on for ``order > 0``, off for
                ``order == 0`` (labels must never be blurred).

        Returns:
            float32 for ``order > 0``; the input dtype for ``order == 0``.
        """
        arr = np.asarray(arr)
        self._check_last2(arr, self.in_shape, "array")
        order = _check_order(order)
        if cval is None:
            cval = self.pad_value if order > 0 else 0.0
        if anti_aliasing is None:
            anti_aliasing = order > 0
        step, offset = self._model_to_original()
        out_dtype = np.dtype(np.float32) if order > 0 else arr.dtype
        inside = self._inside(to_model=True)
        return _resample(
            arr, self.model_shape, step, offset, inside, order, cval, anti_aliasing, out_dtype
        )

    def from_model(
        self,
        arr: Any,
        order: int = 1,
        cval: float = 0.0,
        anti_aliasing: bool = False,
    ) -> np.ndarray:
        """Map ``(..., S, S)`` model-grid arrays back to the original grid ``(..., H, W)``.

        The exact geometric inverse of :meth:`to_model` (same affine map, inverted), done in one
        interpolation. Original pixels outside the model's field of view get ``cval``. Only
        model pixels that lie on the original image are read: the padding never leaks back.

        :meth:`from_model_window` computes only a window of it.

        Returns:
            float32 for ``order > 0``; the input dtype for ``order == 0``.
        """
        arr = np.asarray(arr)
        self._check_last2(arr, self.model_shape, "model-grid array")
        order = _check_order(order)
        step, offset, arr, _ = self._valid_model_part(arr)
        out_dtype = np.dtype(np.float32) if order > 0 else arr.dtype
        return _resample(
            arr,
            self.in_shape,
            step,
            offset,
            self._inside(to_model=False),
            order,
            cval,
            anti_aliasing,
            out_dtype,
        )

    def _valid_model_part(
        self, arr: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
        """``(step, offset, part, (r0, c0))``: ``arr`` cut to the model pixels that lie on the
        original image (first row and column ``r0, c0``), with the sampling of
        :meth:`from_model` on that cut. Reading only those (never the padding), an original
        pixel near a padded edge takes the nearest valid model value instead of a blend with
        pad_value."""
        step, offset = self._original_to_model()
        rows, cols = self._inside(to_model=True)
        if not (rows.any() and cols.any()):
            return step, offset, arr, (0, 0)
        r0, r1 = (int(v) for v in np.flatnonzero(rows)[[0, -1]])
        c0, c1 = (int(v) for v in np.flatnonzero(cols)[[0, -1]])
        offset = offset - np.array([r0, c0], dtype=np.float64)
        return step, offset, arr[..., r0 : r1 + 1, c0 : c1 + 1], (r0, c0)

    def from_model_window(
        self, arr: Any, needed: np.ndarray, cval: float = 0.0
    ) -> tuple[np.ndarray, tuple[slice, slice]] | None:
        """Linear :meth:`from_model` of ``(..., S, S)`` on a window of the original grid only:
        ``(values, (rows, cols))`` with ``values`` float32 ``(..., h, w)``, the original
        rows and columns that read a model pixel where ``needed`` (boolean ``(S, S)``) is
        True (one pixel wider on each side); None when ``needed`` is all False. The values
        equal ``from_model(arr)[..., rows, cols]``; every pixel outside the window is a blend
        of model pixels outside ``needed`` alone."""
        arr = np.asarray(arr)
        self._check_last2(arr, self.model_shape, "model-grid array")
        needed = np.asarray(needed, bool)
        self._check_last2(needed, self.model_shape, "model-grid window mask")
        step, offset, arr, (r0, c0) = self._valid_model_part(arr)
        needed = needed[r0 : r0 + arr.shape[-2], c0 : c0 + arr.shape[-1]]
        window = _reading_window(needed, step, offset, self.in_shape)
        if window is None:
            return None
        (a0, a1), (b0, b1) = window
        # the model rows/columns that window reads (edge indices clamp as without a window)
        first = np.floor(step * np.array([a0, b0]) + offset).astype(int)
        last = np.floor(step * np.array([a1 - 1, b1 - 1]) + offset).astype(int) + 1
        size = np.array(arr.shape[-2:]) - 1
        lo, hi = np.clip(first, 0, size), np.clip(last, 0, size)
        inside = self._inside(to_model=False)
        values = _resample(
            arr[..., lo[0] : hi[0] + 1, lo[1] : hi[1] + 1],
            (a1 - a0, b1 - b0),
            step,
            offset + step * np.array([a0, b0]) - lo,
            (inside[0][a0:a1], inside[1][b0:b1]),
            1,
            cval,
            False,
            np.dtype(np.float32),
        )
        return values, (slice(a0, a1), slice(b0, b1))


# --------------------------------------------------------------------------------------------
# public pipeline
# --------------------------------------------------------------------------------------------


def inplane_spacing(spacing: Any, ndim: int) -> tuple[float, float]:
    """The in-plane ``(sy, sx)`` of a per-axis or in-plane spacing, checked (finite, > 0)."""
    if np.isscalar(spacing):
        raise InputError(
            f"spacing must be the in-plane (sy, sx) or one value per axis, got {spacing!r}"
        )
    try:
        values = [float(s) for s in spacing]
    except (TypeError, ValueError):
        raise InputError(f"spacing must be a sequence of numbers, got {spacing!r}") from None
    if not 2 <= len(values) <= max(ndim, 2):
        raise InputError(
            f"spacing must be (sy, sx) or one value per axis ({ndim} for this image), "
            f"got {len(values)} values"
        )
    sy, sx = values[-2:]
    return (_finite_positive(sy, "in-plane y spacing"), _finite_positive(sx, "in-plane x spacing"))


def _check_image_shape(arr: np.ndarray) -> None:
    if arr.ndim < 2:
        raise InputError(f"image must have at least 2 dimensions (y, x), got shape {arr.shape}")
    h, w = arr.shape[-2:]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InputError(
            f"image is too small in-plane ({h} x {w} pixels); at least {MIN_SIDE} x {MIN_SIDE} "
            "is needed"
        )


def preprocess_volume(
    image: Any,
    spacing: Sequence[float],
    config: PreprocessConfig | None = None,
) -> tuple[np.ndarray, SliceGrid]:
    """Normalise a volume and put every slice on the model grid.

    Args:
        image: ``(..., H, W)`` intensities: a 2D slice, 3D ``(z, y, x)``, 4D ``(t, z, y, x)``.
            The WHOLE array is normalised together (one pair of clip values), then each 2D slice
            is resampled (linear, anti-aliased when downsampling) and centre-cropped/padded.
        spacing: in-plane ``(sy, sx)`` in mm, or the full per-axis spacing (the last two are
            used).
        config: preprocessing options; defaults to ``PreprocessConfig()``.

    Returns:
        ``(slices, grid)``: float32 ``(..., S, S)`` in [-1, 1] (padding = ``pad_value``) and
        the :class:`SliceGrid` that maps them back (it also records the clip values in
        ``intensity_range``).
    """
    config = PreprocessConfig() if config is None else config
    if not isinstance(config, PreprocessConfig):
        raise InputError(f"config must be a PreprocessConfig, got {type(config).__name__}")
    arr = _as_real_array(image)
    _check_image_shape(arr)
    in_spacing = inplane_spacing(spacing, arr.ndim)
    data, lo, hi = _clean_and_range(arr, config.clip_percentiles)
    data = _scale(data, lo, hi)
    grid = SliceGrid.from_config(arr.shape[-2:], in_spacing, config, intensity_range=(lo, hi))
    out = grid.to_model(data, order=1, cval=config.pad_value, anti_aliasing=True)
    np.clip(out, min(-1.0, config.pad_value), max(1.0, config.pad_value), out=out)
    return out, grid


def _as_label_array(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.size == 0:
        raise InputError(f"label map is empty (shape {arr.shape})")
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError("label map must hold whole numbers (it has fractional or NaN values)")
    elif arr.dtype.kind not in "iu":
        raise InputError(f"label map must be integer, got dtype {arr.dtype}")
    return arr


def _onehot_argmax(
    arr: np.ndarray,
    resample: Any,
    outside: np.ndarray,
    background: int,
    out_dtype: np.dtype,
) -> np.ndarray:
    """Resample each label's one-hot map with ``resample`` (linear) and take the arg-max.

    Ties go to the smaller label value; pixels where ``outside`` is True get ``background``.
    Never invents a label: a pixel only gets a label whose own map has weight there.
    """
    best: np.ndarray | None = None
    out: np.ndarray | None = None
    for value in np.unique(arr):
        score = resample((arr == value).astype(np.float32))
        if best is None or out is None:
            best = score
            out = np.full(score.shape, value, dtype=out_dtype)
        else:
            better = score > best
            out[better] = value
            best[better] = score[better]
    assert out is not None
    out[..., outside] = background
    return out


def preprocess_labels(
    labels: Any,
    grid: SliceGrid,
    method: str = "linear",
    anti_aliasing: bool = False,
) -> np.ndarray:
    """Put a label map ``(..., H, W)`` on the model grid: uint8 ``(..., S, S)``.

    Labels must be integers in 0-255; model pixels outside the original field of view are 0.

    Args:
        labels: integer (or boolean) label map on the original grid.
        grid: the :class:`SliceGrid` of the matching image (from :func:`preprocess_volume`).
        method: ``"linear"`` (default): each label's one-hot map is interpolated linearly and
            the arg-max is taken; a label can only appear where it was (no "linear then
            threshold" artefacts: interpolating between RV=1 and LV=3 never yields MYO=2).
            ``"nearest"``: nearest-neighbour sampling. ``"linear"`` is the default because it
            measured better: ACDC round-trip myocardium Dice min 0.9996 vs 0.986 for nearest,
            and closer to analytically rasterised shapes on the model grid (see
            ``docs/preprocessing.md``).
        anti_aliasing: Gaussian prefilter of the one-hot maps when downsampling
            (``method="linear"`` only). Off by default: label maps are never blurred unless
            asked for.
    """
    arr = _as_label_array(labels)
    grid._check_last2(arr, grid.in_shape, "label map")
    if arr.min() < 0 or arr.max() > 255:
        raise InputError(f"label values must be in 0-255, got {arr.min()}..{arr.max()}")
    arr = arr.astype(np.uint8, copy=False)
    if method == "nearest":
        return grid.to_model(arr, order=0, cval=0, anti_aliasing=False)
    if method != "linear":
        raise InputError(f"label resampling method must be 'linear' or 'nearest', got {method!r}")
    return _onehot_argmax(
        arr,
        lambda onehot: grid.to_model(onehot, order=1, cval=0.0, anti_aliasing=anti_aliasing),
        ~grid.model_fov_mask(),
        0,
        np.dtype(np.uint8),
    )


def restore_probabilities(probs: Any, grid: SliceGrid, floor: float | None = None) -> np.ndarray:
    """Map model-grid probabilities ``(..., S, S)`` back to the original grid: float32, linear.

    Original pixels outside the model's field of view get probability 0. With ``floor``, only
    the window of :func:`restore_probability_window` is computed and the rest is 0.
    """
    arr = _as_real_array(probs, "probability map")
    if floor is None:
        out = grid.from_model(arr, order=1, cval=0.0, anti_aliasing=False)
        np.clip(out, 0.0, 1.0, out=out)
        return out
    out = np.zeros((*arr.shape[:-2], *grid.in_shape), np.float32)
    part = restore_probability_window(arr, grid, floor)
    if part is not None:
        out[(..., *part[1])] = part[0]
    return out


def restore_probability_window(
    probs: Any, grid: SliceGrid, floor: float
) -> tuple[np.ndarray, tuple[slice, slice]] | None:
    """:func:`restore_probabilities` on the window of the original grid that can reach
    ``floor``: ``(values, (rows, cols))``, or None when no model value reaches it.

    The window holds every original pixel that reads a model value of at least ``floor`` (in
    any slice or channel of ``probs``). Outside it every restored value would be under
    ``floor`` (a linear blend of values under ``floor``), so a caller that only asks which
    pixels reach ``floor`` (a threshold, an arg-max: :func:`napari_sdnet.segmentation.
    native_outputs`) gets the same answer for a fraction of the work: the heart is a small
    part of the field of view.
    """
    arr = _as_real_array(probs, "probability map")
    grid._check_last2(arr, grid.model_shape, "model-grid array")
    needed = (arr >= floor).reshape(-1, *arr.shape[-2:]).any(axis=0)
    part = grid.from_model_window(arr, needed, 0.0)
    if part is not None:
        np.clip(part[0], 0.0, 1.0, out=part[0])
    return part


def restore_labels(labels: Any, grid: SliceGrid, background: int = 0) -> np.ndarray:
    """Map a model-grid label map ``(..., S, S)`` back to the original grid ``(..., H, W)``.

    Each label present is one-hot encoded, interpolated linearly, and the arg-max is taken per
    pixel (ties go to the smaller label value). Unlike nearest-neighbour this keeps boundaries
    smooth and thin structures (the myocardium) intact when the original grid is finer than the
    model grid. Pixels outside the model's field of view get ``background``. Same dtype as input.
    """
    arr = _as_label_array(labels)
    grid._check_last2(arr, grid.model_shape, "model-grid label map")
    return _onehot_argmax(
        arr,
        lambda onehot: grid.from_model(onehot, order=1, cval=0.0, anti_aliasing=False),
        ~grid.fov_mask(),
        background,
        arr.dtype,
    )


def restore_image(recon: Any, grid: SliceGrid, denormalise: bool = False) -> np.ndarray:
    """Map a model-grid image (e.g. a reconstruction) back to the original grid: float32.

    Linear interpolation (anti-aliased when the original grid is coarser than the model grid);
    outside the model's field of view the value is ``grid.pad_value``. The result is in the
    model's [-1, 1] intensity scale, unless ``denormalise=True``: then [-1, 1] is mapped
    linearly back onto the volume's clip range ``grid.intensity_range`` (values that were clipped
    at preprocessing stay clipped; the padding becomes the low clip value).
    """
    arr = _as_real_array(recon, "image")
    out = grid.from_model(arr, order=1, cval=grid.pad_value, anti_aliasing=True)
    if denormalise:
        if grid.intensity_range is None:
            raise InputError(
                "this slice grid has no intensity range; it was not made by preprocess_volume"
            )
        lo, hi = grid.intensity_range
        out = (np.clip(out, -1.0, 1.0) + 1.0) * np.float32((hi - lo) / 2.0) + np.float32(lo)
        out = out.astype(np.float32, copy=False)
    return out
