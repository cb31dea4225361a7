"""Training and evaluation data: the three supported layouts, as model-grid slices.

No Qt and no torch here: everything is NumPy (+ h5py / nibabel for reading).

This module has the cine layout, layout detection, :func:`load_dataset` and the
labelled/unlabelled split, and re-exports the rest: the ACDC layouts live in
:mod:`napari_sdnet.io.acdc`, the slice containers in :mod:`napari_sdnet.io.slices`.

Layouts (see ``docs/data.md``)
------------------------------
``acdc_nifti``, ``acdc_h5``
    ACDC patient folders and the H5 split (:mod:`napari_sdnet.io.acdc`).
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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from napari_sdnet.errors import InputError
from napari_sdnet.io.acdc import (
    SPLITS,
    _acdc_frame_files,
    _acdc_patient_folders,
    acdc_split_patients,
    check_training_only,
    iter_acdc_h5,
    iter_acdc_nifti,
    load_acdc_h5,
    load_acdc_nifti,
    read_acdc_split,
)
from napari_sdnet.io.nifti import LABEL_SUFFIXES, is_nifti_path, nifti_stem, read_nifti
from napari_sdnet.io.slices import (
    MYOCARDIUM,
    SliceSet,
    VolumeRecord,
    _collect,
    _config,
    _model_masks,
    model_grid_labels,
    patient_id,
    structure_channels,
)
from napari_sdnet.preprocess import PreprocessConfig, preprocess_volume

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

Layout = Literal["acdc_h5", "acdc_nifti", "cine_nifti"]


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
