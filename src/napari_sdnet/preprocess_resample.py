"""The resampling kernels of :mod:`napari_sdnet.preprocess`: the last two axes of an array
resampled at ``step * o + offset`` (anti-aliasing as ``skimage.transform.rescale``, linear
interpolation as ``scipy.ndimage.affine_transform``), for every slice at once as banded
per-axis matrices applied tap by tap, with SciPy for other orders and non-finite data; and
the window of an output grid whose linear interpolation reads given input pixels."""

from __future__ import annotations

import functools

import numpy as np


def _aa_sigma(step: np.ndarray) -> np.ndarray:
    """Gaussian anti-aliasing sigma per axis for a sampling step (in input pixels) ``step``.

    Same rule as ``skimage.transform.rescale(anti_aliasing=True)``: ``max(0, (step - 1) / 2)``,
    i.e. nothing when upsampling.
    """
    return np.maximum(0.0, (step - 1.0) / 2.0)


def _gaussian_matrix(n: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """(n, n) float64: ``scipy.ndimage.gaussian_filter1d(x, sigma, mode='nearest') = G @ x``.

    The same kernel as SciPy (radius ``int(truncate * sigma + 0.5)``, normalised samples of
    the Gaussian); edge samples are replicated (``mode='nearest'``).
    """
    if not sigma > 1e-15:
        return np.eye(n)
    radius = int(truncate * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / float(sigma) ** 2 * offsets.astype(np.float64) ** 2)
    weights /= weights.sum()
    out = np.zeros((n, n))
    rows = np.repeat(np.arange(n), offsets.size)
    cols = np.clip(np.arange(n)[:, None] + offsets[None, :], 0, n - 1).ravel()
    np.add.at(out, (rows, cols), np.tile(weights, n))
    return out


def _linear_matrix(n_out: int, n_in: int, step: float, offset: float, rows_of=None) -> np.ndarray:
    """(n_out, n_in) float64: linear interpolation at ``step * o + offset``, edges replicated.

    What ``scipy.ndimage.affine_transform(order=1, mode='nearest')`` computes along one axis:
    ``(1 - w) * x[i0] + w * x[i0 + 1]`` with ``i0 = floor(c)``, indices clamped to the input.
    With ``rows_of`` (an (n_in, m) matrix), returns ``L @ rows_of`` built from its rows
    (no BLAS call: a matrix product on a busy machine can wait for BLAS threads).
    """
    c = step * np.arange(n_out, dtype=np.float64) + offset
    i0 = np.floor(c)
    w = (c - i0)[:, None]
    i0 = i0.astype(np.int64)
    lo, hi = np.clip(i0, 0, n_in - 1), np.clip(i0 + 1, 0, n_in - 1)
    if rows_of is None:
        rows_of = np.eye(n_in)
    return (1.0 - w) * rows_of[lo] + w * rows_of[hi]


@functools.lru_cache(maxsize=64)
def _axis_taps(
    n_out: int, n_in: int, step: float, offset: float, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """The taps (:func:`_taps`) of one axis: linear interpolation after the Gaussian."""
    matrix = _linear_matrix(n_out, n_in, step, offset, rows_of=_gaussian_matrix(n_in, sigma))
    index, weight = _taps(matrix)
    index.setflags(write=False)
    weight.setflags(write=False)
    return index, weight


def _taps(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A banded (n_out, n_in) matrix as ``(index, weight)``, both (n_out, K): its non-zeros.

    Rows with fewer than K non-zeros are padded with weight 0 (on column 0).
    """
    rows, cols = np.nonzero(matrix)  # row-major: sorted by row, then column
    counts = np.bincount(rows, minlength=matrix.shape[0])
    k = max(1, int(counts.max(initial=0)))
    slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    index = np.zeros((matrix.shape[0], k), np.intp)
    weight = np.zeros((matrix.shape[0], k), np.float32)
    index[rows, slot] = cols
    weight[rows, slot] = matrix[rows, cols]
    return index, weight


# Values resampled per step (~1 MB of float32: every pass over a block stays in the cache;
# 4x less CPU time than whole-volume passes on the 2-core EPYC).
_CHUNK_VALUES = 1 << 18


def _resample_linear(
    flat: np.ndarray,
    out: np.ndarray,
    out_shape: tuple[int, int],
    step: np.ndarray,
    offset: np.ndarray,
    sigma: np.ndarray,
) -> None:
    """Order-1 resampling of every slice of ``flat`` (N, H, W) at once, into ``out``.

    Anti-aliasing and linear interpolation are both separable linear maps, so each axis is one
    banded matrix ``A = L @ G`` (2 taps per output pixel without anti-aliasing) and every slice
    is ``A_y @ X @ A_x.T``, applied tap by tap to the whole volume: a few vectorised passes
    instead of a filter and an ``affine_transform`` per slice. The sums run in the same order
    for every slice, so a slice gives the same values alone or inside a volume; they match
    SciPy's up to float32 rounding (~1e-7, ``tests/test_inference_pipeline.py``).
    """
    (h, w), (oh, ow) = flat.shape[-2:], out_shape
    y_index, y_weight = _axis_taps(oh, h, float(step[0]), float(offset[0]), float(sigma[0]))
    x_index, x_weight = _axis_taps(ow, w, float(step[1]), float(offset[1]), float(sigma[1]))
    per = max(1, _CHUNK_VALUES // max(1, h * w, oh * w, oh * ow))
    for start in range(0, flat.shape[0], per):
        block = flat[start : start + per].astype(np.float32, copy=False)
        out[start : start + per] = _apply_taps(
            _apply_taps(block, y_index, y_weight).transpose(0, 2, 1), x_index, x_weight
        ).transpose(0, 2, 1)


def _apply_taps(block: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``sum_k weight[o, k] * block[:, index[o, k], :]``: the banded matrix along axis 1.

    Gathers whole rows (contiguous copies), one pass per tap, always in the same order.
    """
    block = np.ascontiguousarray(block)
    acc = np.take(block, index[:, 0], axis=1)
    acc *= weight[:, 0, None]
    for k in range(1, index.shape[1]):
        part = np.take(block, index[:, k], axis=1)
        part *= weight[:, k, None]
        acc += part
    return acc


def _resample(
    arr: np.ndarray,
    out_shape: tuple[int, int],
    step: np.ndarray,
    offset: np.ndarray,
    inside: tuple[np.ndarray, np.ndarray],
    order: int,
    cval: float,
    anti_aliasing: bool,
    out_dtype: np.dtype,
) -> np.ndarray:
    """Resample the last two axes of ``arr``: output pixel ``o`` samples input ``step*o+offset``.

    Sampling uses ``mode='nearest'`` (values beyond the input's last sample are the edge value);
    output pixels outside ``inside`` (per-axis boolean vectors) get ``cval``. Linear
    interpolation (``order=1``, images, probabilities, one-hot label maps) of finite data is
    done for all slices at once with two matrix products (:func:`_resample_linear`); other
    orders (and data with NaN/inf, whose spread a matrix product would widen) go slice by
    slice through ``scipy.ndimage.affine_transform``.
    """
    in_shape = arr.shape[-2:]
    lead = arr.shape[:-2]
    flat = arr.reshape((-1, *in_shape))
    out = np.empty((flat.shape[0], *out_shape), dtype=out_dtype)
    sigma = _aa_sigma(step) if anti_aliasing else np.zeros(2)
    outside = ~np.outer(inside[0], inside[1])
    if (
        order == 1
        and out_dtype == np.float32
        and flat.dtype.kind in "biuf"
        and (flat.dtype.kind != "f" or np.isfinite(flat).all())
    ):
        _resample_linear(flat, out, out_shape, step, offset, sigma)
    else:
        from scipy import ndimage as ndi  # only for these rarer cases: keeps start-up light

        work_dtype = np.float32 if order > 0 else flat.dtype
        for i, sl in enumerate(flat):
            src = sl.astype(work_dtype, copy=False)
            if np.any(sigma > 0):
                src = ndi.gaussian_filter(src, sigma=tuple(sigma), mode="nearest")
            out[i] = ndi.affine_transform(
                src,
                step,
                offset=offset,
                output_shape=out_shape,
                order=order,
                mode="nearest",
                output=work_dtype,
            )
    out[:, outside] = cval
    return out.reshape((*lead, *out_shape))


def _reading_window(
    needed: np.ndarray, step: np.ndarray, offset: np.ndarray, out_shape: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Output rows ``(a0, a1)`` and columns ``(b0, b1)`` (end exclusive) whose linear
    interpolation at ``step * o + offset`` (edges clamped) reads a True pixel of ``needed``;
    one pixel wider on each side than strictly needed. None when ``needed`` is all False."""
    window = []
    for k, hot in enumerate((needed.any(axis=1), needed.any(axis=0))):
        idx = np.flatnonzero(hot)
        if idx.size == 0:
            return None
        lo, hi, n = int(idx[0]), int(idx[-1]), out_shape[k]
        # o reads floor(c) and floor(c) + 1 (c = step * o + offset): it touches [lo, hi] for
        # lo - 1 <= c < hi + 1; clamped reads reach the first and last model pixels from beyond
        a = 0 if lo == 0 else int(np.floor((lo - 1 - offset[k]) / step[k]))
        b = n if hi == hot.size - 1 else int(np.ceil((hi + 1 - offset[k]) / step[k])) + 1
        a, b = max(a, 0), min(b, n)
        if a >= b:
            return None
        window.append((a, b))
    return window[0], window[1]
