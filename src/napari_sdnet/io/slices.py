"""Model-grid slice sets and volume records: what every data layout is turned into.

:class:`SliceSet` (2D slices on the model grid with myocardium masks, optional label maps of
every structure) and :class:`VolumeRecord` (one volume on its native and the model grid, for
per-volume evaluation), plus the label maps on the model grid. NumPy only (no Qt, no torch).
The layouts that produce them: :mod:`napari_sdnet.io.acdc` (ACDC NIfTI and H5) and
:mod:`napari_sdnet.io.datasets` (cine studies, layout detection, the labelled split).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from napari_sdnet.choices import ACDC_LABELS
from napari_sdnet.errors import InputError
from napari_sdnet.io.nifti import Geometry
from napari_sdnet.preprocess import PreprocessConfig, SliceGrid

__all__ = [
    "MYOCARDIUM",
    "SliceSet",
    "VolumeRecord",
    "model_grid_labels",
    "patient_id",
    "structure_channels",
]

#: ACDC label value of the myocardium: the model's binary mask is ``labels == MYOCARDIUM``.
MYOCARDIUM = 2

_PATIENT_RE = re.compile(r"^(patient\d+)", re.IGNORECASE)
_SUFFIX_RE = re.compile(r"(_frame\d+|_t\d+)$")


# --------------------------------------------------------------------------------------------
# containers
# --------------------------------------------------------------------------------------------


@dataclass
class SliceSet:
    """A set of 2D slices on the model grid, with their myocardium masks.

    Attributes:
        images: float32 ``(N, S, S)`` in [-1, 1] (padding = the config's ``pad_value``).
        masks: uint8 ``(N, S, S)``, 1 = myocardium (ACDC label 2). Meaningless (kept 0) where
            ``labelled`` is False: the mask of an unlabelled slice must be ignored.
        labelled: bool ``(N,)``.
        volume_ids: str ``(N,)``: the volume each slice came from (e.g. ``patient003_frame01``).
        slice_index: int ``(N,)``: 0-based z index of the slice within its volume.
        labels: uint8 ``(N, S, S)`` ACDC label maps on the model grid (1 RV, 2 myocardium,
            3 LV; 0 where unlabelled), for models of several structures; ``None`` when not
            loaded (``to_sliceset(with_labels=True)``).
    """

    images: np.ndarray
    masks: np.ndarray
    labelled: np.ndarray
    volume_ids: np.ndarray
    slice_index: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images, dtype=np.float32)
        self.masks = np.asarray(self.masks, dtype=np.uint8)
        self.labelled = np.asarray(self.labelled, dtype=bool).reshape(-1)
        self.volume_ids = np.asarray(self.volume_ids, dtype=str).reshape(-1)
        self.slice_index = np.asarray(self.slice_index, dtype=np.int64).reshape(-1)
        if self.images.ndim != 3 or self.images.shape[1] != self.images.shape[2]:
            raise InputError(f"slice images must be (N, S, S), got {self.images.shape}")
        n = self.images.shape[0]
        if self.masks.shape != self.images.shape:
            raise InputError(f"masks {self.masks.shape} and images {self.images.shape} differ")
        for name in ("labelled", "volume_ids", "slice_index"):
            if getattr(self, name).shape != (n,):
                raise InputError(f"{name} must have {n} entries, got {getattr(self, name).shape}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.uint8)
            if self.labels.shape != self.images.shape:
                raise InputError(
                    f"labels {self.labels.shape} and images {self.images.shape} differ"
                )

    # -- basics -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        """The model grid side ``S``."""
        return int(self.images.shape[1])

    @property
    def n_labelled(self) -> int:
        """Number of labelled slices."""
        return int(np.count_nonzero(self.labelled))

    def __repr__(self) -> str:
        return (
            f"SliceSet({len(self)} slices of {self.size}x{self.size}, {self.n_labelled} labelled, "
            f"{len(self.volumes())} volumes)"
        )

    @classmethod
    def empty(cls, size: int = 224) -> SliceSet:
        """A set with no slices on an ``size x size`` grid."""
        return cls(
            images=np.zeros((0, size, size), np.float32),
            masks=np.zeros((0, size, size), np.uint8),
            labelled=np.zeros(0, bool),
            volume_ids=np.zeros(0, dtype=str),
            slice_index=np.zeros(0, np.int64),
        )

    def subset(self, indices: Sequence[int] | np.ndarray) -> SliceSet:
        """The slices at ``indices`` (integer indices or a boolean mask), in that order."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise InputError(f"boolean selection must have {len(self)} entries")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        return SliceSet(
            images=self.images[idx],
            masks=self.masks[idx],
            labelled=self.labelled[idx],
            volume_ids=self.volume_ids[idx],
            slice_index=self.slice_index[idx],
            labels=None if self.labels is None else self.labels[idx],
        )

    @classmethod
    def concat(cls, sets: Iterable[SliceSet], size: int | None = None) -> SliceSet:
        """Concatenate slice sets (all on the same grid). ``size`` is used when there are none."""
        sets = list(sets)
        if not sets:
            return cls.empty(224 if size is None else size)
        sizes = {s.size for s in sets}
        if len(sizes) > 1:
            raise InputError(f"cannot concatenate slice sets of different grid sizes {sizes}")
        if len(sets) == 1:
            return sets[0]
        with_labels = all(s.labels is not None for s in sets)
        return cls(
            images=np.concatenate([s.images for s in sets]),
            masks=np.concatenate([s.masks for s in sets]),
            labelled=np.concatenate([s.labelled for s in sets]),
            volume_ids=np.concatenate([s.volume_ids for s in sets]),
            slice_index=np.concatenate([s.slice_index for s in sets]),
            labels=np.concatenate([s.labels for s in sets]) if with_labels else None,
        )

    def labelled_part(self) -> SliceSet:
        """Only the labelled slices."""
        return self.subset(self.labelled)

    def unlabelled_part(self) -> SliceSet:
        """Only the unlabelled slices."""
        return self.subset(~self.labelled)

    def hide_labels(self) -> SliceSet:
        """A copy with every slice unlabelled and every mask zeroed."""
        return SliceSet(
            images=self.images,
            masks=np.zeros_like(self.masks),
            labelled=np.zeros(len(self), bool),
            volume_ids=self.volume_ids,
            slice_index=self.slice_index,
            labels=None if self.labels is None else np.zeros_like(self.labels),
        )

    def volumes(self) -> list[str]:
        """Distinct volume ids, in order of first appearance."""
        return list(dict.fromkeys(self.volume_ids.tolist()))

    def patients(self) -> list[str]:
        """Distinct patient ids (see :func:`patient_id`), in order of first appearance."""
        return list(dict.fromkeys(patient_id(v) for v in self.volume_ids.tolist()))


@dataclass
class VolumeRecord:
    """One 3D volume in its native grid and on the model grid (for per-volume evaluation).

    Attributes:
        volume_id: e.g. ``patient003_frame01`` or ``SCD0000101_4d_t18``.
        image: native intensities ``(z, y, x)`` float32, as stored in the file.
        labels: native ACDC labels ``(z, y, x)`` (uint8) or ``None``. Only slices where
            ``labelled`` is True carry labels; elsewhere 0 means "unlabelled".
        spacing: ``(z, y, x)`` in mm. For H5 volumes this is ASSUMED (see ``spacing_known``).
        slices: float32 ``(z, S, S)``, the model-grid images (normalised per volume, or per
            study for a 4D cine).
        grid: the :class:`SliceGrid` that maps model-grid outputs back to ``(y, x)``.
        masks: uint8 ``(z, S, S)``: model-grid myocardium masks (0 where unlabelled).
        labelled: bool ``(z,)``.
        spacing_known: False for H5 volumes (no spacing stored; ``spacing`` holds the assumed
            in-plane spacing and 1.0 for z).
        geometry: the source file's geometry (4D for a cine study; use ``frame``), or ``None``.
        frame: the time index within a cine study, else ``None``.
    """

    volume_id: str
    image: np.ndarray
    labels: np.ndarray | None
    spacing: tuple[float, float, float]
    slices: np.ndarray
    grid: SliceGrid
    masks: np.ndarray
    labelled: np.ndarray
    spacing_known: bool = True
    geometry: Geometry | None = None
    frame: int | None = None

    def model_labels(self) -> np.ndarray:
        """ACDC label maps ``(z, S, S)`` on the model grid (0 where unlabelled or none)."""
        if self.labels is None or not np.any(self.labelled):
            return np.zeros(self.slices.shape, np.uint8)
        out = model_grid_labels(self.labels, self.grid)
        out[~np.asarray(self.labelled, bool)] = 0
        return out

    def to_sliceset(self, with_labels: bool = False) -> SliceSet:
        """The model-grid slices of this volume as a :class:`SliceSet` (with the model-grid
        label maps of every structure when ``with_labels``)."""
        n = self.slices.shape[0]
        return SliceSet(
            images=self.slices,
            masks=self.masks,
            labelled=self.labelled,
            volume_ids=np.full(n, self.volume_id),
            slice_index=np.arange(n),
            labels=self.model_labels() if with_labels else None,
        )


def patient_id(volume_id: str) -> str:
    """The patient a volume belongs to: ``patientNNN`` for ACDC names, else the id without a
    trailing ``_frameNN`` / ``_tNN`` (so all frames of one cine study share a patient)."""
    m = _PATIENT_RE.match(volume_id)
    if m:
        return m.group(1).lower()
    return _SUFFIX_RE.sub("", volume_id)


def _model_masks(labels: np.ndarray, grid: SliceGrid) -> np.ndarray:
    """Binary myocardium masks ``(..., S, S)`` uint8 on the model grid.

    The same rule as :func:`napari_sdnet.preprocess.preprocess_labels` applied to the binary
    map ``labels == 2`` (linear interpolation of the one-hot maps, arg-max, ties to background,
    0 outside the field of view), computed with one interpolation instead of two: for two
    complementary one-hot maps the arg-max is "myocardium weight > 0.5".
    """
    myo = (np.asarray(labels) == MYOCARDIUM).astype(np.float32)
    weight = grid.to_model(myo, order=1, cval=0.0, anti_aliasing=False)
    return (weight > 0.5).astype(np.uint8)


def structure_channels(labels: np.ndarray, structures: Sequence[str]) -> np.ndarray:
    """One binary channel per structure, ``(..., C, H, W)`` uint8, from ACDC label maps
    ``(..., H, W)`` (``structures`` in model channel order, e.g. ``("rv", "myocardium", "lv")``;
    ``(N, C, S, S)`` for a stack of model-grid slices)."""
    labels = np.asarray(labels)
    values = [ACDC_LABELS[name] for name in structures]
    return np.stack([labels == v for v in values], axis=-3).astype(np.uint8)


def model_grid_labels(labels: np.ndarray, grid: SliceGrid, n_labels: int = 4) -> np.ndarray:
    """ACDC label maps ``(..., S, S)`` uint8 on the model grid: every label's one-hot map
    interpolated linearly, then the arg-max (ties to the lower value, so to background), 0
    outside the field of view; the rule of
    :func:`napari_sdnet.preprocess.preprocess_labels`, for all structures at once."""
    labels = np.asarray(labels)
    best = None
    out = None
    for value in range(n_labels):
        weight = grid.to_model(
            (labels == value).astype(np.float32), order=1, cval=float(value == 0),
            anti_aliasing=False,
        )  # fmt: skip
        if best is None:
            best, out = weight, np.zeros(weight.shape, np.uint8)
        else:
            wins = weight > best
            out[wins] = value
            best = np.where(wins, weight, best)
    return out


def _collect(records: Iterable[VolumeRecord], config: PreprocessConfig) -> SliceSet:
    return SliceSet.concat((r.to_sliceset() for r in records), size=config.size)


def _config(config: PreprocessConfig | None) -> PreprocessConfig:
    if config is None:
        return PreprocessConfig()
    if not isinstance(config, PreprocessConfig):
        raise InputError(f"config must be a PreprocessConfig, got {type(config).__name__}")
    return config
