"""Training and evaluation data: the three supported layouts, as model-grid slices.

No Qt and no torch here: everything is NumPy (+ h5py / nibabel for reading).

Layouts (see ``docs/data.md``)
------------------------------
``acdc_nifti``
    ``root/patientNNN/patientNNN_frameXX.nii.gz`` (+ ``_gt``): the ED/ES frames of ACDC patients in
    the original NIfTI layout, with real spacing. Every slice of every frame is used; a frame is
    labelled where its ``_gt`` file exists.
``acdc_h5``
    ``root/{train,val,test}.list``, ``root/train_slices.list`` and ``root/data/*.h5``: the widely
    used semi-supervised ACDC split. Training volumes are stored one slice per file
    (``patientNNN_frame0F_slice_K.h5``, ``K`` from 1), validation/test volumes as whole
    ``(Z, H, W)`` files. **The H5 files hold no spacing.** ``spacing=None`` takes the native pixel
    as the model's target spacing (no in-plane resampling, only centre crop/pad); a number
    resamples from that assumed in-plane spacing (mm) instead.
``cine_nifti``
    One 4D ``(x, y, z, t)`` (or 3D) NIfTI study with PARTIAL labels (Sunnybrook style): a label
    value 0 elsewhere means "unlabelled", not background. A ``(t, z)`` slice counts as labelled iff
    its label slice contains myocardium (label 2), or, when a ``labelled.json`` is given, iff its
    ``[z, t]`` pair is listed in ``myocardium_frames_zt``.

Intensity normalisation
-----------------------
Always per volume, through :func:`napari_sdnet.preprocess.preprocess_volume`: the 5-95
percentile clip is computed over one ACDC frame (3D) at a time. H5 training slices stored one per
file are grouped by volume (``patientNNN_frame0F``), stacked in slice order and normalised
together, exactly as a whole-volume file would be. A 4D cine study is normalised as ONE array
(all frames together), which is what ``preprocess_volume`` does when the plugin segments a 4D
layer; training and inference therefore see identically normalised cine images.

Leakage
-------
The unlabelled pool must never contain validation or test patients (the reference code leaked
them). :func:`load_acdc_h5` with ``split="train"`` only returns patients of ``train.list`` and
refuses split lists that share a patient; :func:`check_training_only` raises if any volume of a
:class:`SliceSet` belongs to a validation/test patient.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np

from napari_sdnet.choices import ACDC_LABELS
from napari_sdnet.errors import InputError
from napari_sdnet.io.nifti import LABEL_SUFFIXES, Geometry, is_nifti_path, nifti_stem, read_nifti
from napari_sdnet.preprocess import (
    PreprocessConfig,
    SliceGrid,
    _finite_positive,
    preprocess_volume,
)

__all__ = [
    "MYOCARDIUM",
    "SPLITS",
    "SliceSet",
    "VolumeRecord",
    "acdc_split_patients",
    "check_training_only",
    "detect_layout",
    "find_cine_files",
    "iter_acdc_h5",
    "iter_acdc_nifti",
    "iter_cine_nifti",
    "load_acdc_h5",
    "load_acdc_nifti",
    "load_cine_nifti",
    "load_dataset",
    "model_grid_labels",
    "patient_id",
    "read_acdc_split",
    "split_labelled",
    "structure_channels",
]

#: ACDC label value of the myocardium: the model's binary mask is ``labels == MYOCARDIUM``.
MYOCARDIUM = 2
#: The fixed ACDC H5 splits.
SPLITS: tuple[str, ...] = ("train", "val", "test")

Layout = Literal["acdc_h5", "acdc_nifti", "cine_nifti"]

_FRAME_RE = re.compile(r"^(patient\d+)_frame(\d+)\.nii(\.gz)?$", re.IGNORECASE)
_SLICE_RE = re.compile(r"^(.+)_slice_(\d+)$")
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
    """One binary channel per structure, ``(N, C, ...)`` uint8, from ACDC label maps
    ``(N, ...)`` (``structures`` in model channel order, e.g. ``("rv", "myocardium", "lv")``)."""
    labels = np.asarray(labels)
    values = [ACDC_LABELS[name] for name in structures]
    return np.stack([labels == v for v in values], axis=1).astype(np.uint8)


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


# --------------------------------------------------------------------------------------------
# ACDC NIfTI folders
# --------------------------------------------------------------------------------------------


def _patient_name(p: str | int) -> str:
    if isinstance(p, int | np.integer):
        return f"patient{int(p):03d}"
    s = str(p).strip()
    if s.isdigit():
        return f"patient{int(s):03d}"
    return s.lower()


def _acdc_frame_files(folder: Path) -> list[tuple[str, Path, Path | None]]:
    """``(volume_id, image, gt or None)`` for each ``patientNNN_frameXX`` image in ``folder``."""
    out = []
    for f in sorted(folder.iterdir()):
        m = _FRAME_RE.match(f.name)
        if not m or not f.is_file():
            continue
        vid = f"{m.group(1).lower()}_frame{m.group(2)}"
        gt = None
        for ext in (".nii.gz", ".nii"):
            cand = folder / f"{m.group(1)}_frame{m.group(2)}_gt{ext}"
            if cand.is_file():
                gt = cand
                break
        out.append((vid, f, gt))
    return out


def _acdc_patient_folders(root: Path) -> dict[str, Path]:
    if _acdc_frame_files(root):  # root is one patient folder
        return {root.name.lower(): root}
    return {
        d.name.lower(): d
        for d in sorted(root.iterdir())
        if d.is_dir() and re.fullmatch(r"patient\d+", d.name, re.IGNORECASE)
    }


def iter_acdc_nifti(
    root: str | os.PathLike[str],
    patients: Iterable[str | int] | None = None,
    config: PreprocessConfig | None = None,
) -> Iterator[VolumeRecord]:
    """Yield one :class:`VolumeRecord` per ``patientNNN_frameXX`` image (ED/ES frames).

    Args:
        root: folder of ``patientNNN`` folders (or one patient folder).
        patients: ``"patient001"``, ``"001"`` or ``1`` style ids; ``None`` = all, sorted.
        config: preprocessing options.
    """
    config = _config(config)
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: ACDC NIfTI folder not found")
    folders = _acdc_patient_folders(root)
    if not folders:
        raise InputError(f"{root}: no patientNNN folders with patientNNN_frameXX.nii.gz files")
    if patients is None:
        wanted = sorted(folders)
    else:
        wanted = [_patient_name(p) for p in patients]
        missing = [p for p in wanted if p not in folders]
        if missing:
            raise InputError(f"{root}: patient folder(s) not found: {', '.join(missing)}")
    for name in wanted:
        files = _acdc_frame_files(folders[name])
        if not files:
            raise InputError(f"{folders[name]}: no patientNNN_frameXX.nii.gz images")
        for vid, img_path, gt_path in files:
            vol = read_nifti(img_path)
            if vol.data.ndim != 3:
                raise InputError(f"{img_path}: expected a 3D volume, got shape {vol.data.shape}")
            image = np.asarray(vol.data, dtype=np.float32)
            spacing = tuple(float(s) for s in vol.geometry.spacing)
            slices, grid = preprocess_volume(image, spacing, config)
            labels = None
            labelled = np.zeros(image.shape[0], bool)
            masks = np.zeros(slices.shape, np.uint8)
            if gt_path is not None:
                gt = read_nifti(gt_path).data
                if gt.shape != image.shape:
                    raise InputError(
                        f"{gt_path}: label shape {gt.shape} differs from image {image.shape}"
                    )
                labels = np.asarray(gt).astype(np.uint8)
                masks = _model_masks(labels, grid)
                labelled[:] = True
            yield VolumeRecord(
                volume_id=vid,
                image=image,
                labels=labels,
                spacing=spacing,  # type: ignore[arg-type]
                slices=slices,
                grid=grid,
                masks=masks,
                labelled=labelled,
                geometry=vol.geometry,
            )


def load_acdc_nifti(
    root: str | os.PathLike[str],
    patients: Iterable[str | int] | None = None,
    config: PreprocessConfig | None = None,
) -> SliceSet:
    """Every slice of the ED/ES frames of ACDC NIfTI patients (labelled where ``_gt`` exists).

    See :func:`iter_acdc_nifti` for the arguments. Mind the split: in the fixed ACDC split,
    some of these patients may be validation/test patients (use :func:`check_training_only`).
    """
    config = _config(config)
    return _collect(iter_acdc_nifti(root, patients, config), config)


# --------------------------------------------------------------------------------------------
# ACDC H5 split
# --------------------------------------------------------------------------------------------


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"{path}: split list not found (is this the ACDC H5 layout?)")
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            names.append(line[:-3] if line.endswith(".h5") else line)
    return names


def read_acdc_split(root: str | os.PathLike[str]) -> dict[str, list[str]]:
    """The H5 split lists: ``train``, ``val``, ``test`` (volume names) and ``train_slices``.

    Raises :class:`InputError` if a list is missing or if two of ``train``/``val``/``test``
    share a PATIENT (not just a volume): training on a frame of a test patient is a leak.
    """
    root = Path(root)
    lists = {name: _read_list(root / f"{name}.list") for name in SPLITS}
    lists["train_slices"] = _read_list(root / "train_slices.list")
    pats = {name: {patient_id(v) for v in lists[name]} for name in SPLITS}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        common = pats[a] & pats[b]
        if common:
            raise InputError(
                f"{root}: {a}.list and {b}.list share patient(s) {sorted(common)[:5]}; "
                "the split must be disjoint by patient"
            )
    return lists


def acdc_split_patients(root: str | os.PathLike[str]) -> dict[str, set[str]]:
    """Patient ids per split (``train``, ``val``, ``test``) of the ACDC H5 split lists."""
    lists = read_acdc_split(root)
    return {name: {patient_id(v) for v in lists[name]} for name in SPLITS}


def check_training_only(
    pool: SliceSet | Iterable[str],
    split_root: str | os.PathLike[str],
) -> None:
    """Raise :class:`InputError` if any volume of ``pool`` belongs to a val/test patient.

    Args:
        pool: a :class:`SliceSet` (e.g. an unlabelled pool) or volume/patient ids.
        split_root: the ACDC H5 folder holding ``val.list`` and ``test.list``.
    """
    ids = pool.volumes() if isinstance(pool, SliceSet) else list(dict.fromkeys(pool))
    held_out = acdc_split_patients(split_root)
    bad = sorted(
        {v for v in ids if patient_id(v) in held_out["val"] or patient_id(v) in held_out["test"]}
    )
    if bad:
        raise InputError(
            f"{len(bad)} volume(s) of validation/test patients in a training pool "
            f"(e.g. {', '.join(bad[:3])}); never train on held-out patients"
        )


def _h5_read(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise InputError(f"{path}: H5 file listed in the split but missing")
    try:
        with h5py.File(path, "r") as f:
            if "image" not in f:
                raise InputError(f"{path}: no 'image' dataset")
            image = np.asarray(f["image"][()], dtype=np.float32)
            label = np.asarray(f["label"][()]) if "label" in f else None
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from exc
    if label is not None and label.shape != image.shape:
        raise InputError(f"{path}: label shape {label.shape} differs from image {image.shape}")
    return image, label


def _h5_record(
    vid: str,
    image: np.ndarray,
    labels: np.ndarray | None,
    in_plane: float,
    config: PreprocessConfig,
) -> VolumeRecord:
    slices, grid = preprocess_volume(image, (in_plane, in_plane), config)
    labelled = np.zeros(image.shape[0], bool)
    masks = np.zeros(slices.shape, np.uint8)
    if labels is not None:
        labels = labels.astype(np.uint8)
        masks = _model_masks(labels, grid)
        labelled[:] = True
    return VolumeRecord(
        volume_id=vid,
        image=image,
        labels=labels,
        spacing=(1.0, in_plane, in_plane),
        slices=slices,
        grid=grid,
        masks=masks,
        labelled=labelled,
        spacing_known=False,
    )


def iter_acdc_h5(
    root: str | os.PathLike[str],
    split: str = "train",
    config: PreprocessConfig | None = None,
    spacing: float | None = None,
) -> Iterator[VolumeRecord]:
    """Yield one :class:`VolumeRecord` per volume of an ACDC H5 split.

    ``train`` volumes are rebuilt from their slice files (``train_slices.list``, stacked in the
    order of their slice number ``K``, so z index = ``K - 1`` for complete volumes, as in the
    standard list), ``val``/``test`` volumes are read from whole-volume files. Only volumes of the
    requested split's patients are returned (the lists must be disjoint by patient).

    Args:
        root: the ACDC H5 folder (``*.list`` and ``data/``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        config: preprocessing options.
        spacing: the H5 files store no spacing. ``None``: the native pixel is taken to be
            ``config.target_spacing`` (no in-plane resampling, only centre crop/pad). A number:
            the assumed in-plane spacing (mm) to resample from.
    """
    config = _config(config)
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    if spacing is None:
        in_plane = config.target_spacing
    else:
        in_plane = _finite_positive(spacing, "H5 spacing (mm)")
    root = Path(root)
    data = root / "data"
    if not data.is_dir():
        raise InputError(f"{root}: no data/ folder (is this the ACDC H5 layout?)")
    lists = read_acdc_split(root)
    allowed = set(lists[split])

    if split == "train":
        groups: dict[str, list[tuple[int, str]]] = {}
        for name in lists["train_slices"]:
            m = _SLICE_RE.match(name)
            if not m:
                raise InputError(f"train_slices.list: cannot parse slice name {name!r}")
            groups.setdefault(m.group(1), []).append((int(m.group(2)), name))
        unknown = sorted(set(groups) - allowed)
        if unknown:
            raise InputError(
                f"train_slices.list has slices of volumes not in train.list: {unknown[:3]}"
            )
        for vid in lists["train"]:
            if vid not in groups:
                raise InputError(f"train.list volume {vid} has no slices in train_slices.list")
            items = sorted(groups[vid])
            numbers = [k for k, _ in items]
            if len(set(numbers)) != len(numbers):
                raise InputError(f"train_slices.list lists a slice of {vid} twice")
            imgs, labs = [], []
            for _, name in items:
                img, lab = _h5_read(data / f"{name}.h5")
                if img.ndim != 2:
                    raise InputError(f"{data / name}.h5: a slice file must be 2D, got {img.shape}")
                imgs.append(img)
                labs.append(lab)
            shapes = {i.shape for i in imgs}
            if len(shapes) != 1:
                raise InputError(f"slices of {vid} have different shapes {sorted(shapes)}")
            image = np.stack(imgs)
            if all(lab is not None for lab in labs):
                labels: np.ndarray | None = np.stack(labs)  # type: ignore[arg-type]
            elif any(lab is not None for lab in labs):
                raise InputError(f"some slices of {vid} have labels and some do not")
            else:
                labels = None
            yield _h5_record(vid, image, labels, in_plane, config)
    else:
        for vid in lists[split]:
            image, labels = _h5_read(data / f"{vid}.h5")
            if image.ndim != 3:
                raise InputError(f"{data / vid}.h5: a volume file must be 3D, got {image.shape}")
            yield _h5_record(vid, image, labels, in_plane, config)


def load_acdc_h5(
    root: str | os.PathLike[str],
    split: str = "train",
    config: PreprocessConfig | None = None,
    spacing: float | None = None,
) -> SliceSet:
    """All slices of an ACDC H5 split on the model grid (see :func:`iter_acdc_h5`).

    ``split="train"`` gives the 1312 labelled training slices of the standard split; use
    :func:`split_labelled` to pick the labelled subset and the unlabelled pool from it.
    """
    config = _config(config)
    return _collect(iter_acdc_h5(root, split, config, spacing), config)


# --------------------------------------------------------------------------------------------
# 4D cine with partial labels
# --------------------------------------------------------------------------------------------


def _labelled_pairs(path: Path, n_t: int, n_z: int) -> set[tuple[int, int]]:
    """``(t, z)`` pairs from a Sunnybrook-style ``myocardium_frames_zt`` ([z, t]) list."""
    try:
        meta = json.loads(Path(path).read_text())
        pairs = meta["myocardium_frames_zt"]
        out = {(int(t), int(z)) for z, t in pairs}
    except FileNotFoundError:
        raise InputError(f"{path}: labelled-slices JSON not found") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path}: expected JSON with 'myocardium_frames_zt': [[z, t], ...] ({exc!r})"
        ) from exc
    bad = [(z, t) for t, z in out if not (0 <= t < n_t and 0 <= z < n_z)]
    if bad:
        raise InputError(
            f"{path}: [z, t] pairs outside the study ({n_z} slices x {n_t} frames): {bad[:3]}"
        )
    return out


def iter_cine_nifti(
    image_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str] | None = None,
    labelled_json: str | os.PathLike[str] | None = None,
    config: PreprocessConfig | None = None,
) -> Iterator[VolumeRecord]:
    """Yield one :class:`VolumeRecord` per time frame of a 4D (or 3D) cine study.

    The whole study is normalised together (as ``preprocess_volume`` does for a 4D layer); every
    record shares the study's ``grid`` and ``geometry`` and has ``frame`` set. Labels are
    PARTIAL: a ``(t, z)`` slice is labelled iff it contains myocardium (label 2), or, with
    ``labelled_json``, iff listed in its ``myocardium_frames_zt`` ``[z, t]`` pairs.
    """
    config = _config(config)
    image_path = Path(image_path)
    vol = read_nifti(image_path)
    if vol.is_labels:
        raise InputError(f"{image_path}: looks like a label map; pass the image file")
    data = np.asarray(vol.data, dtype=np.float32)
    spacing = tuple(float(s) for s in vol.geometry.spacing)
    if data.ndim == 3:
        data4 = data[None]
    elif data.ndim == 4:
        data4 = data
    else:
        raise InputError(f"{image_path}: expected a 3D or 4D study, got shape {data.shape}")
    n_t, n_z = data4.shape[:2]
    zyx_spacing = spacing[-3:]

    labels4: np.ndarray | None = None
    if labels_path is not None:
        lab = read_nifti(labels_path).data
        if lab.shape != data.shape:
            raise InputError(
                f"{labels_path}: label shape {lab.shape} differs from image {data.shape}"
            )
        labels4 = np.asarray(lab).astype(np.uint8).reshape(data4.shape)
    elif labelled_json is not None:
        raise InputError("a labelled-slices JSON was given without a label file")

    if labels4 is None:
        labelled = np.zeros((n_t, n_z), bool)
    elif labelled_json is not None:
        labelled = np.zeros((n_t, n_z), bool)
        for t, z in _labelled_pairs(Path(labelled_json), n_t, n_z):
            labelled[t, z] = True
    else:
        labelled = np.any(labels4 == MYOCARDIUM, axis=(2, 3))

    slices, grid = preprocess_volume(data4, spacing[-2:], config)
    masks = np.zeros(slices.shape, np.uint8)
    if labels4 is not None and labelled.any():
        masks = _model_masks(labels4, grid)
        masks[~labelled] = 0

    stem = nifti_stem(image_path)
    for t in range(n_t):
        yield VolumeRecord(
            volume_id=f"{stem}_t{t:02d}" if data.ndim == 4 else stem,
            image=data4[t],
            labels=None if labels4 is None else labels4[t],
            spacing=zyx_spacing,  # type: ignore[arg-type]
            slices=slices[t],
            grid=grid,
            masks=masks[t],
            labelled=labelled[t],
            geometry=vol.geometry,
            frame=t if data.ndim == 4 else None,
        )


def load_cine_nifti(
    image_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str] | None = None,
    labelled_json: str | os.PathLike[str] | None = None,
    config: PreprocessConfig | None = None,
) -> SliceSet:
    """All ``t x z`` slices of a cine study; see :func:`iter_cine_nifti` for the label rule.

    Slices are ordered frame by frame; ``volume_ids`` are ``<stem>_tNN`` (one volume per frame),
    ``slice_index`` the z index.
    """
    config = _config(config)
    return _collect(iter_cine_nifti(image_path, labels_path, labelled_json, config), config)


def find_cine_files(directory: str | os.PathLike[str]) -> tuple[Path, Path | None, Path | None]:
    """``(image, labels or None, labelled JSON or None)`` of a folder holding one cine study.

    The image is the only NIfTI file whose name does not mark a label map; the labels are
    ``<stem>_gt`` (or ``_seg``/``_label(s)``/``_mask``); the JSON is the only ``*.json`` file
    with ``myocardium_frames_zt``.
    """
    directory = Path(directory)
    niftis = sorted(p for p in directory.iterdir() if p.is_file() and is_nifti_path(p))
    label_like = [p for p in niftis if nifti_stem(p).lower().endswith(LABEL_SUFFIXES)]
    images = [p for p in niftis if p not in label_like]
    if len(images) != 1:
        what = "no" if not images else f"{len(images)}"
        raise InputError(
            f"{directory}: {what} NIfTI image(s) found; a cine folder holds exactly one study "
            "(pass the image file instead)"
        )
    image = images[0]
    stem = nifti_stem(image)
    labels = None
    for p in label_like:
        if p.name.lower().startswith(stem.lower() + "_"):
            labels = p
            break
    jsons = []
    for p in sorted(directory.glob("*.json")):
        try:
            if "myocardium_frames_zt" in json.loads(p.read_text()):
                jsons.append(p)
        except (ValueError, OSError):
            continue
    return image, labels, (jsons[0] if len(jsons) == 1 else None)


# --------------------------------------------------------------------------------------------
# layout detection, dispatch
# --------------------------------------------------------------------------------------------


def detect_layout(path: str | os.PathLike[str]) -> Layout:
    """Which supported layout ``path`` is: ``"acdc_h5"``, ``"acdc_nifti"`` or ``"cine_nifti"``.

    * ``acdc_h5``: a folder with ``data/`` and ``train.list``/``val.list``/``test.list``.
    * ``acdc_nifti``: a folder of ``patientNNN`` folders with ``patientNNN_frameXX.nii.gz``
      files (or one such patient folder).
    * ``cine_nifti``: a NIfTI file, or a folder holding exactly one NIfTI image (plus its
      labels and an optional JSON).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: not found")
    if p.is_file():
        if is_nifti_path(p):
            return "cine_nifti"
        raise InputError(f"{p}: not a NIfTI file or a dataset folder")
    if (p / "data").is_dir() and any((p / f"{s}.list").is_file() for s in SPLITS):
        return "acdc_h5"
    try:
        if any(_acdc_frame_files(d) for d in _acdc_patient_folders(p).values()):
            return "acdc_nifti"
    except OSError:
        pass
    try:
        find_cine_files(p)
    except InputError:
        raise InputError(
            f"{p}: unknown dataset layout; expected an ACDC H5 folder (data/ + *.list), a "
            "folder of patientNNN/patientNNN_frameXX.nii.gz, or one cine NIfTI study"
        ) from None
    return "cine_nifti"


def load_dataset(
    path: str | os.PathLike[str],
    split: str = "train",
    config: PreprocessConfig | None = None,
    h5_spacing: float | None = None,
    patients: Iterable[str | int] | None = None,
) -> SliceSet:
    """Load any supported layout (see :func:`detect_layout`).

    ``split`` and ``h5_spacing`` apply to the H5 layout, ``patients`` to ACDC NIfTI folders.
    """
    layout = detect_layout(path)
    if layout == "acdc_h5":
        return load_acdc_h5(path, split=split, config=config, spacing=h5_spacing)
    if layout == "acdc_nifti":
        return load_acdc_nifti(path, patients=patients, config=config)
    p = Path(path)
    if p.is_dir():
        image, labels, meta = find_cine_files(p)
        return load_cine_nifti(image, labels, meta, config=config)
    return load_cine_nifti(p, config=config)


# --------------------------------------------------------------------------------------------
# labelled / unlabelled split
# --------------------------------------------------------------------------------------------


def split_labelled(
    slices: SliceSet,
    n_labelled: int,
    by: str = "images",
    seed: int = 0,
    n_unlabelled: int | None = None,
) -> tuple[SliceSet, SliceSet]:
    """Choose the labelled training subset and the unlabelled pool from a TRAINING set.

    Args:
        slices: training slices (never validation/test ones).
        n_labelled: how many labelled images (``by="images"``), volumes (``by="volumes"``:
            all labelled slices of that many volumes) or patients (``by="patients"``: all
            labelled slices of that many patients, e.g. both ED and ES of ACDC) to keep.
            Chosen at random among the labelled slices/volumes/patients with ``seed``.
        by: ``"images"``, ``"volumes"`` or ``"patients"``.
        seed: the same inputs and seed give the same split.
        n_unlabelled: cap on the unlabelled pool (a seeded random subset); ``None`` = all. A cap
            larger than what is available keeps everything.

    Returns:
        ``(labelled, unlabelled)``: both in the original order. The pool is every other slice of
        ``slices`` with its labels hidden (``labelled=False``, masks zeroed).
    """
    if isinstance(n_labelled, bool) or not isinstance(n_labelled, int | np.integer):
        raise InputError(f"n_labelled must be an integer, got {n_labelled!r}")
    if n_labelled < 0:
        raise InputError(f"n_labelled must be >= 0, got {n_labelled}")
    if n_unlabelled is not None and (
        isinstance(n_unlabelled, bool)
        or not isinstance(n_unlabelled, int | np.integer)
        or n_unlabelled < 0
    ):
        raise InputError(f"n_unlabelled must be an integer >= 0 or None, got {n_unlabelled!r}")
    rng = np.random.default_rng(seed)
    cand = np.flatnonzero(slices.labelled)
    if by == "images":
        if n_labelled > cand.size:
            raise InputError(
                f"asked for {n_labelled} labelled images but only {cand.size} are labelled"
            )
        chosen = np.sort(rng.choice(cand, size=n_labelled, replace=False))
    elif by in ("volumes", "patients"):
        key = (
            slices.volume_ids
            if by == "volumes"
            else np.asarray([patient_id(v) for v in slices.volume_ids], dtype=str)
        )
        groups = list(dict.fromkeys(key[cand].tolist()))
        if n_labelled > len(groups):
            raise InputError(
                f"asked for {n_labelled} labelled {by} but only {len(groups)} have labels"
            )
        picked = rng.choice(len(groups), size=n_labelled, replace=False)
        picked_ids = {groups[i] for i in picked}
        chosen = cand[np.isin(key[cand], list(picked_ids))]
    else:
        raise InputError(f"by must be 'images', 'volumes' or 'patients', got {by!r}")

    rest = np.setdiff1d(np.arange(len(slices)), chosen)
    if n_unlabelled is not None and n_unlabelled < rest.size:
        rest = np.sort(rng.choice(rest, size=int(n_unlabelled), replace=False))
    return slices.subset(chosen), slices.subset(rest).hide_labels()
