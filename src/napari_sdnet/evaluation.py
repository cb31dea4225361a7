"""Evaluation of a model on labelled data: per-volume 3D Dice on the native grids
(:func:`evaluate`, :class:`EvaluationResult`). Re-exported by :mod:`napari_sdnet.api`."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sdnet.choices import ACDC_LABELS
from napari_sdnet.errors import InputError
from napari_sdnet.generators import run
from napari_sdnet.io.slices import MYOCARDIUM
from napari_sdnet.models import Model, _as_model
from napari_sdnet.preprocess import PreprocessConfig
from napari_sdnet.segmentation import (
    ProgressCallback,
    _check_batch_size,
    _predict_iter,
    native_outputs,
)

if TYPE_CHECKING:
    from napari_sdnet.io.slices import VolumeRecord


@dataclass
class EvaluationResult:
    """Myocardium Dice of a model on a dataset, computed on each volume's NATIVE grid.

    Attributes:
        per_volume: one dict per evaluated volume: ``volume_id``, ``dice`` (3D hard Dice over
            the labelled slices), ``n_slices`` (labelled slices evaluated), ``n_slices_total``,
            ``frame`` (cine studies), and for a model of several structures
            ``dice_structures`` (RV cavity, myocardium, LV cavity: label 1, 2, 3; None for a
            structure the volume's labels do not hold at all, e.g. no RV contours) .
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

    def mean_structure_dice(self) -> dict[str, float]:
        """Mean per-volume (3D) hard Dice of every structure the model segments (a model of
        several structures; ``{}`` for a myocardium-only model)."""
        names = list(
            dict.fromkeys(k for v in self.per_volume for k in v.get("dice_structures", {}))
        )
        out = {}
        for name in names:
            values = [v["dice_structures"][name] for v in self.per_volume]
            values = [x for x in values if x is not None]
            out[name] = float(np.mean(values)) if values else float("nan")
        return out

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
            "mean_structure_dice": {k: num(v) for k, v in self.mean_structure_dice().items()},
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
            prob = run(_predict_iter(model, rec.slices, batch_size))[0]
            structures = model.config.structures
            mask, label_map = native_outputs(prob, rec.grid, structures)
            pred = mask.astype(bool)
            gt = np.asarray(rec.labels) == MYOCARDIUM
            entry: dict[str, Any] = {
                "volume_id": rec.volume_id,
                "dice": hard_dice(pred[labelled], gt[labelled]),
                "n_slices": int(labelled.sum()),
                "n_slices_total": int(labelled.size),
            }
            if rec.frame is not None:
                entry["frame"] = int(rec.frame)
            if label_map is not None:
                truth = np.asarray(rec.labels)
                # a structure with no labelled voxel in the volume (e.g. Sunnybrook has no RV
                # contours) cannot be scored there: None, left out of the means
                entry["dice_structures"] = {
                    name: hard_dice(
                        label_map[labelled] == ACDC_LABELS[name],
                        truth[labelled] == ACDC_LABELS[name],
                    )
                    if np.any(truth[labelled] == ACDC_LABELS[name])
                    else None
                    for name in structures
                }
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
