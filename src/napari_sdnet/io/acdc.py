"""The ACDC layouts as model-grid slices: NIfTI patient folders and the H5 split.

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

Leakage: :func:`load_acdc_h5` with ``split="train"`` only returns patients of ``train.list`` and
refuses split lists that share a patient; :func:`check_training_only` raises if any volume of a
:class:`~napari_sdnet.io.slices.SliceSet` belongs to a validation/test patient. See
:mod:`napari_sdnet.io.datasets` for the overview.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from napari_sdnet.errors import InputError
from napari_sdnet.io.nifti import read_nifti
from napari_sdnet.io.slices import (
    SliceSet,
    VolumeRecord,
    _collect,
    _config,
    _model_masks,
    patient_id,
)
from napari_sdnet.preprocess import (
    PreprocessConfig,
    SliceGrid,
    _finite_positive,
    preprocess_volume,
)

__all__ = [
    "SPLITS",
    "acdc_split_patients",
    "check_training_only",
    "iter_acdc_h5",
    "iter_acdc_nifti",
    "load_acdc_h5",
    "load_acdc_nifti",
    "read_acdc_split",
]

#: The fixed ACDC H5 splits.
SPLITS: tuple[str, ...] = ("train", "val", "test")

_FRAME_RE = re.compile(r"^(patient\d+)_frame(\d+)\.nii(\.gz)?$", re.IGNORECASE)
_SLICE_RE = re.compile(r"^(.+)_slice_(\d+)$")


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
            if gt_path is not None:
                labels = read_nifti(gt_path).data
                if labels.shape != image.shape:
                    raise InputError(
                        f"{gt_path}: label shape {labels.shape} differs from image {image.shape}"
                    )
            yield _record(vid, image, labels, spacing, slices, grid, geometry=vol.geometry)


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


def _record(
    vid: str,
    image: np.ndarray,
    labels: Any,
    spacing: tuple[float, ...],
    slices: np.ndarray,
    grid: SliceGrid,
    **extra: Any,
) -> VolumeRecord:
    """The record of a preprocessed volume; with ``labels`` (uint8 on its grid) all its slices
    are labelled, with their model-grid masks."""
    labelled = np.zeros(image.shape[0], bool)
    masks = np.zeros(slices.shape, np.uint8)
    if labels is not None:
        labels = np.asarray(labels).astype(np.uint8)
        masks = _model_masks(labels, grid)
        labelled[:] = True
    return VolumeRecord(
        volume_id=vid,
        image=image,
        labels=labels,
        spacing=spacing,  # type: ignore[arg-type]
        slices=slices,
        grid=grid,
        masks=masks,
        labelled=labelled,
        **extra,
    )


def _h5_record(
    vid: str,
    image: np.ndarray,
    labels: np.ndarray | None,
    in_plane: float,
    config: PreprocessConfig,
) -> VolumeRecord:
    slices, grid = preprocess_volume(image, (in_plane, in_plane), config)
    spacing = (1.0, in_plane, in_plane)
    return _record(vid, image, labels, spacing, slices, grid, spacing_known=False)


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
