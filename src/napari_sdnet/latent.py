"""Latent space exploration: the anatomy M of one slice with the Z of another (no Qt/napari).

SDNet splits an image into a myocardium mask M (the anatomy) and a 16-value vector Z (the rest:
intensities, surrounding anatomy), and its reconstructor g rebuilds the image from the pair. The
helpers here are small layers over :func:`napari_sdnet.api.reconstruct` (g on the model grid)
and the :class:`~napari_sdnet.api.Segmentation` of a study; the "Latent mixer" dock widget
and scripts use the same functions::

    from napari_sdnet import api

    seg = api.segment(model, volume, spacing)             # (z, y, x) or (t, z, y, x)
    a, b = api.latent_slice(seg, 3), api.latent_slice(seg, 8)
    api.mix(model, b, a.z)                                # g(M_8, Z_3): slice 8's anatomy
    api.mix(model, None, a.z)                             # g(0, Z_3): null mask
    api.mix(model, a, api.interpolate_z(a.z, b.z, 0.5), grid=seg.grid, denormalise=True)
    panels = api.figure3(model, seg, 3, 8)                # SDNet's Figure 3, for two slices
    api.save_figure3(panels, "figure3.png")

Slices are named by their index in the segmentation's leading axes: ``()`` for a 2D image,
``z`` (or ``(z,)``) for a 3D volume, ``(t, z)`` for a 4D cine study.

matplotlib is imported only by the functions that draw (the Agg backend, no pyplot).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sdnet.choices import ACDC_LABELS
from napari_sdnet.errors import InputError
from napari_sdnet.io.files import atomic_write
from napari_sdnet.preprocess import SliceGrid, restore_image

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from napari_sdnet.models import Model
    from napari_sdnet.segmentation import Segmentation

__all__ = [
    "FIGURE3_COLUMNS",
    "Figure3",
    "LatentSlice",
    "draw_figure3",
    "draw_z_heatmap",
    "figure3",
    "figure3_slices",
    "interpolate_z",
    "latent_slice",
    "mix",
    "mix_slices",
    "mix_z",
    "offset_z",
    "save_figure3",
    "slice_indices",
    "slice_label",
    "torch_threads",
]

#: Column titles of :func:`figure3` (one row per slice; "other" is the other row's slice).
FIGURE3_COLUMNS = (
    "input",
    "mask M",
    "g(M, Z)",
    "g(M other, Z)",
    "g(0, Z)",
    "g(M, 0)",
)


# --------------------------------------------------------------------------------- slices
@dataclass(frozen=True, eq=False)
class LatentSlice:
    """One segmented slice on the model grid: what latent mixing needs.

    Attributes:
        index: its index in the segmentation's leading axes (``()``, ``(z,)`` or ``(t, z)``).
        image: float32 ``(S, S)``: the preprocessed input the model saw ([-1, 1]).
        mask: float32 ``(S, S)``: the soft mask M (g uses ``M > 0.5``); ``(C, S, S)`` for a
            model of C structures (g uses the one-hot of the most likely class).
        z: float32 ``(z_dim,)``: its latent vector Z, in [0, 1].
        reconstruction: float32 ``(S, S)``: g(M, Z) as computed by the segmentation.
        grid: the :class:`SliceGrid` between the model grid and the input grid.
        label: a short name for titles, e.g. ``"t=0, z=6"``.
        structures: what the channels of ``mask`` are (``("myocardium",)`` for one channel).
    """

    index: tuple[int, ...]
    image: np.ndarray
    mask: np.ndarray
    z: np.ndarray
    reconstruction: np.ndarray
    grid: SliceGrid
    label: str
    structures: tuple[str, ...] = ("myocardium",)

    @property
    def hard_mask(self) -> np.ndarray:
        """The binary mask g actually sees: bool ``(S, S)``, ``M > 0.5``; for C structures
        bool ``(C, S, S)``, the one-hot of the arg-max over background and the structures."""
        from napari_sdnet.segmentation import structure_labels

        if self.mask.ndim == 2:
            return self.mask > 0.5
        labels = structure_labels(self.mask, self.structures)  # the one arg-max rule
        values = np.asarray([ACDC_LABELS[s] for s in self.structures])
        return labels[None] == values[:, None, None]

    @property
    def mask_image(self) -> np.ndarray:
        """What g sees as one picture, float32 ``(S, S)`` in [0, 1]: the binary mask, or for
        C structures the structure's channel number / C (0 background)."""
        hard = self.hard_mask
        if hard.ndim == 2:
            return hard.astype(np.float32)
        weights = np.arange(1, len(hard) + 1, dtype=np.float32)[:, None, None] / len(hard)
        return (hard * weights).sum(axis=0).astype(np.float32)


def _lead_shape(seg: Segmentation) -> tuple[int, ...]:
    return tuple(seg.z.shape[:-1])


def slice_label(index: Sequence[int]) -> str:
    """``"slice"``, ``"z=6"`` or ``"t=0, z=6"`` for an index of a 2D, 3D or 4D study."""
    index = tuple(int(i) for i in index)
    if not index:
        return "slice"
    if len(index) == 1:
        return f"z={index[0]}"
    return f"t={index[0]}, z={index[1]}"


def _check_index(seg: Segmentation, index: Any) -> tuple[int, ...]:
    lead = _lead_shape(seg)
    if isinstance(index, int | np.integer) and not isinstance(index, bool | np.bool_):
        index = (int(index),)
    try:
        idx = tuple(index)
    except TypeError:
        raise InputError(f"slice index must be an integer or a tuple, got {index!r}") from None
    if any(isinstance(i, bool | np.bool_) or not isinstance(i, int | np.integer) for i in idx):
        raise InputError(f"slice index must hold integers, got {index!r}")
    names = ("t", "z")[-len(lead) :] if lead else ()
    if len(idx) != len(lead):
        want = f"({', '.join(names)})" if names else "() (a 2D image has one slice)"
        raise InputError(f"slice index {idx} does not fit a study of {lead} slices: use {want}")
    for i, n, name in zip(idx, lead, names, strict=True):
        if not 0 <= i < n:
            raise InputError(f"slice index {name}={i} is out of range (0..{n - 1})")
    return tuple(int(i) for i in idx)


def slice_indices(seg: Segmentation) -> list[tuple[int, ...]]:
    """Every slice index of a segmentation, in order (``[()]`` for a 2D image)."""
    return [tuple(int(i) for i in idx) for idx in np.ndindex(*_lead_shape(seg))]


def latent_slice(seg: Segmentation, index: Any = (), label: str | None = None) -> LatentSlice:
    """The slice ``index`` of a segmentation (``z`` or ``(t, z)``; ``()`` for a 2D image).

    Raises:
        InputError: an index of the wrong length, not integer or out of range.
    """
    idx = _check_index(seg, index)
    return LatentSlice(
        index=idx,
        image=np.asarray(seg.model_image[idx], dtype=np.float32),
        mask=np.asarray(seg.model_mask[idx], dtype=np.float32),
        z=np.asarray(seg.z[idx], dtype=np.float32),
        reconstruction=np.asarray(seg.model_reconstruction[idx], dtype=np.float32),
        grid=seg.grid,
        label=label if label is not None else slice_label(idx),
        structures=tuple(seg.structures),
    )


# ------------------------------------------------------------------------------------- Z
def _as_z(z: Any, what: str = "Z") -> np.ndarray:
    if isinstance(z, LatentSlice):
        z = z.z
    zz = np.asarray(z, dtype=np.float32)
    if zz.ndim != 1 or zz.size == 0:
        raise InputError(f"{what} must be one latent vector (z_dim,), got shape {zz.shape}")
    if not np.all(np.isfinite(zz)):
        raise InputError(f"{what} holds NaN or infinite values")
    return zz


def interpolate_z(z_a: Any, z_b: Any, t: float) -> np.ndarray:
    """``(1 - t) * z_a + t * z_b`` for ``t`` in [0, 1] (float32; also takes LatentSlices)."""
    a = _as_z(z_a, "Z (first)")
    b = _as_z(z_b, "Z (second)")
    if a.shape != b.shape:
        raise InputError(f"the two Z have different lengths ({a.size} and {b.size})")
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise InputError(f"t must be a number in [0, 1], got {t!r}") from None
    if not (math.isfinite(t) and 0.0 <= t <= 1.0):
        raise InputError(f"t must be in [0, 1], got {t}")
    return ((1.0 - t) * a + t * b).astype(np.float32)


def offset_z(z: Any, offsets: Mapping[int, float] | Sequence[float] | np.ndarray) -> np.ndarray:
    """Z with offsets added, clipped to [0, 1] (Z is a sigmoid output).

    ``offsets`` is a full vector ``(z_dim,)`` or a mapping ``{component: offset}``.
    """
    zz = _as_z(z).copy()
    if isinstance(offsets, Mapping):
        delta = np.zeros_like(zz)
        for k, v in offsets.items():
            if isinstance(k, bool) or not isinstance(k, int | np.integer):
                raise InputError(f"Z components are integers 0..{zz.size - 1}, got {k!r}")
            if not 0 <= k < zz.size:
                raise InputError(f"Z component {k} is out of range (0..{zz.size - 1})")
            delta[k] = v
    else:
        delta = np.asarray(offsets, dtype=np.float32)
        if delta.shape != zz.shape:
            raise InputError(f"offsets must have shape {zz.shape}, got {delta.shape}")
    if not np.all(np.isfinite(delta)):
        raise InputError("Z offsets hold NaN or infinite values")
    return np.clip(zz + delta, 0.0, 1.0).astype(np.float32)


def mix_z(
    z: Any,
    *,
    toward: Any = None,
    t: float = 0.0,
    zero: bool = False,
    offsets: Mapping[int, float] | Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """The Z the mixer decodes: ``z`` interpolated ``t`` of the way ``toward`` another Z, then
    set to 0 when ``zero``, then ``offsets`` added (clipped to [0, 1]); in that order."""
    zz = _as_z(z)
    if toward is not None:
        zz = interpolate_z(zz, toward, t)
    if zero:
        zz = np.zeros_like(zz)
    if offsets is not None:
        zz = offset_z(zz, offsets)
    return zz


# ---------------------------------------------------------------------------------- mixing
@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` PyTorch intra-op threads (``None``: leave them as they are).

    Decoding ONE slice gains little from several threads, and when another program keeps a
    core busy, PyTorch's default (one thread per core) made it 3-40x slower on a 2-core machine
    (docs/benchmarks.md); the mixer widget decodes its previews with one thread. The setting is
    process-wide: do not use this while another thread runs PyTorch work.
    """
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def mix(
    model: Model,
    mask_from: LatentSlice | np.ndarray | None,
    z: Any,
    *,
    grid: SliceGrid | None = None,
    denormalise: bool = False,
) -> np.ndarray:
    """g(M, Z) of one slice: the mask of ``mask_from`` with the latent vector ``z``.

    Args:
        model: from :func:`napari_sdnet.api.load_model`.
        mask_from: a :class:`LatentSlice` (its soft mask), a model-grid mask ``(S, S)`` in
            [0, 1] (``(C, S, S)`` for a model of C structures), or ``None`` for the null mask
            (M = 0).
        z: a latent vector ``(z_dim,)`` or a :class:`LatentSlice` (its Z).
        grid: ``None``: the model grid ``(S, S)`` in the model's [-1, 1] scale. A grid (e.g.
            ``seg.grid``): mapped back onto that input grid ``(H, W)``, exactly as
            :attr:`Segmentation.reconstruction` is.
        denormalise: with a grid from :func:`~napari_sdnet.api.segment`: in the image's units.

    Returns:
        float32 ``(S, S)`` or ``(H, W)``.
    """
    from napari_sdnet.segmentation import reconstruct

    size, channels = model.config.image_size, model.config.n_structures
    shape = (size, size) if channels == 1 else (channels, size, size)
    if mask_from is None:
        m = np.zeros(shape, np.float32)
    elif isinstance(mask_from, LatentSlice):
        m = mask_from.mask
    else:
        m = np.asarray(mask_from)
        if m.ndim != len(shape):
            raise InputError(f"the mask must be one model-grid slice {shape}, got {m.shape}")
    zz = _as_z(z)
    out = reconstruct(model, m, zz)
    if grid is None:
        if denormalise:
            raise InputError("denormalise needs the grid of a segmented image (grid=seg.grid)")
        return out
    return restore_image(out, grid, denormalise=denormalise)


def mix_slices(
    model: Model,
    seg: Segmentation,
    mask_index: Any,
    z_index: Any,
    *,
    null_mask: bool = False,
    zero_z: bool = False,
    z_toward: Any = None,
    t: float = 0.0,
    z_offsets: Mapping[int, float] | Sequence[float] | np.ndarray | None = None,
    on_input_grid: bool = False,
    denormalise: bool = False,
) -> np.ndarray:
    """The mixer's operations on a segmented study by slice index.

    g(M of ``mask_index`` (or 0 with ``null_mask``), Z) where Z is :func:`mix_z` of the Z of
    ``z_index``, interpolated ``t`` toward the Z of ``z_toward`` (a slice index), zeroed with
    ``zero_z``, then offset by ``z_offsets``. On the model grid, or on the input grid with
    ``on_input_grid`` (and in the image's units with ``denormalise``).
    """
    source = latent_slice(seg, z_index)
    toward = latent_slice(seg, z_toward).z if z_toward is not None else None
    z = mix_z(source.z, toward=toward, t=t, zero=zero_z, offsets=z_offsets)
    mask_from = None if null_mask else latent_slice(seg, mask_index)
    if denormalise and not on_input_grid:
        raise InputError("denormalise applies on the input grid (on_input_grid=True)")
    return mix(
        model,
        mask_from,
        z,
        grid=seg.grid if on_input_grid else None,
        denormalise=denormalise,
    )


# ---------------------------------------------------------------------------------- Figure 3
@dataclass(frozen=True, eq=False)
class Figure3:
    """SDNet's Figure 3 for two slices: a ``(2, 6, S, S)`` stack of model-grid images.

    Row ``r`` is slice ``labels[r]``; the columns are :data:`FIGURE3_COLUMNS`: the input, its
    mask M (0/1, what g sees; for C structures channel number / C), g(M, Z), g(M of the other
    slice, Z), g(0, Z) and g(M, 0). All images except the mask are in the model's [-1, 1]
    intensity scale.
    """

    images: np.ndarray
    labels: tuple[str, str]
    columns: tuple[str, ...] = FIGURE3_COLUMNS
    title: str = ""

    def panel(self, row: int, column: str) -> np.ndarray:
        """One image, e.g. ``fig.panel(0, "g(0, Z)")``."""
        return self.images[row, self.columns.index(column)]


def figure3_slices(model: Model, a: LatentSlice, b: LatentSlice, title: str = "") -> Figure3:
    """:func:`figure3` for two :class:`LatentSlice` objects (e.g. from two segmentations)."""
    from napari_sdnet.segmentation import reconstruct

    rows = []
    for own, other in ((a, b), (b, a)):
        masks = np.stack([own.mask, other.mask, np.zeros_like(own.mask), own.mask])
        zs = np.stack([own.z, own.z, own.z, np.zeros_like(own.z)])
        recon = reconstruct(model, masks, zs)  # one batch of 4
        rows.append(np.stack([own.image, own.mask_image, *recon]))
    return Figure3(images=np.stack(rows).astype(np.float32), labels=(a.label, b.label), title=title)


def figure3(model: Model, seg: Segmentation, i: Any, j: Any, title: str = "") -> Figure3:
    """SDNet's Figure 3 (Chartsias et al. 2018) for slices ``i`` and ``j`` of a segmentation.

    For each slice: the input, its mask, its reconstruction g(M, Z), the reconstruction with the
    OTHER slice's mask (the anatomy moves, the intensities stay), with the null mask g(0, Z)
    (the myocardium disappears) and with a zero Z g(M, 0) (only the anatomy is left).
    """
    return figure3_slices(model, latent_slice(seg, i), latent_slice(seg, j), title=title)


def draw_figure3(panels: Figure3, figure: Figure | None = None) -> Figure:
    """Draw the panels on a matplotlib Figure (a new Agg-backed one when ``figure`` is None)."""
    from matplotlib.figure import Figure as _Figure

    n_rows, n_cols = panels.images.shape[:2]
    if figure is None:
        figure = _Figure(figsize=(1.9 * n_cols, 2.1 * n_rows + (0.3 if panels.title else 0.0)))
    figure.clear()
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r, c]
            is_mask = panels.columns[c] == "mask M"
            ax.imshow(
                panels.images[r, c],
                cmap="gray",
                vmin=0.0 if is_mask else -1.0,
                vmax=1.0,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(panels.columns[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(panels.labels[r], fontsize=9)
    if panels.title:
        figure.suptitle(panels.title, fontsize=10)
    figure.tight_layout()
    return figure


def save_figure3(
    panels: Figure3,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    dpi: int = 150,
) -> Path:
    """Save the panels as a PNG with titles, atomically (temporary file, then ``os.replace``).

    Raises:
        InputError: a name not ending in ``.png``, a missing folder, an existing file (unless
            ``overwrite``) or an unwritable location.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"the figure is saved as PNG: use a name ending in .png, not {path.name}")
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: file exists; refusing to overwrite (pass overwrite=True)")
    figure = draw_figure3(panels)
    try:
        with atomic_write(path, overwrite=overwrite) as tmp:
            with open(tmp, "xb") as fh:
                figure.savefig(fh, format="png", dpi=dpi)
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    return path


# ------------------------------------------------------------------------------ Z heat map
def draw_z_heatmap(
    ax: Axes,
    z: np.ndarray,
    row_labels: Sequence[str],
    *,
    current: int | None = None,
    title: str = "",
) -> Any:
    """Z of several slices or phases as a heat map: one row per slice, one column per component.

    ``current`` outlines one row (e.g. the slice whose Z the mixer uses). Returns the image
    artist (for a colour bar).
    """
    from matplotlib.patches import Rectangle

    zz = np.asarray(z, dtype=np.float32)
    if zz.ndim != 2:
        raise InputError(f"the heat map needs Z of shape (rows, z_dim), got {zz.shape}")
    if len(row_labels) != zz.shape[0]:
        raise InputError(f"{len(row_labels)} row labels for {zz.shape[0]} rows")
    ax.clear()
    image = ax.imshow(
        zz, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest"
    )
    ax.set_xticks(range(zz.shape[1]))
    ax.set_xticklabels([str(k) for k in range(zz.shape[1])], fontsize=7)
    step = max(1, math.ceil(zz.shape[0] / 12))
    ax.set_yticks(range(0, zz.shape[0], step))
    ax.set_yticklabels(list(row_labels)[::step], fontsize=7)
    ax.set_xlabel("Z component", fontsize=8)
    if title:
        ax.set_title(title, fontsize=8)
    if current is not None and 0 <= current < zz.shape[0]:
        ax.add_patch(
            Rectangle(
                (-0.5, current - 0.5), zz.shape[1], 1.0, fill=False, edgecolor="red", linewidth=1.5
            )
        )
    return image
