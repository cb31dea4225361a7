"""Cardiac function from a label map: volumes, ED/ES, EF and LV mass (no Qt, no napari).

One code path for every label map, whoever drew it (expert contours, a model's segmentation, a
mask the user corrected in napari): the ``napari-sdnet measure`` command, the napari "Cardiac
function" widget and :mod:`napari_sdnet.api` all call :func:`measure_labels` (a 4D cine or one
3D phase) or :func:`measure_ed_es` (an ED and an ES volume). See ``docs/cardiac_function.md``.

Conventions
-----------
* Labels: ACDC by default (1 RV cavity, 2 myocardium, 3 LV cavity); ``convention="mnms"`` reads
  M&Ms / UK Biobank maps (1 LV, 2 myocardium, 3 RV), ``"binary"`` a 0/1 myocardium mask.
* Volume of a structure = number of its voxels x voxel volume (product of the three spatial
  spacings, mm^3) / 1000 -> ml. The slice axis counts with the slice *spacing* (the NIfTI
  ``pixdim``), as in ACDC. No basal-slice or papillary-muscle rule is applied: every labelled
  voxel counts, and papillary muscles count as whatever they are labelled (ACDC: LV cavity).
* A structure with no voxel anywhere is **absent** (its volumes are ``None``, never 0), with the
  reason: not labelled, or not segmented by the model that made the labels. A structure that is
  present in the study but has no voxel in one frame is "unlabelled on that frame" (``None``
  there; a real cavity never has zero volume): Sunnybrook-style partial labels work as they are.
* ED and ES of a cine: the frames of largest and smallest LV cavity volume (among the frames
  where the LV is labelled; the first such frame on a tie), as the UK Biobank pipeline does.
  With one frame holding an LV cavity (or the same volume on all of them) ES is undetermined
  (None: no ESV, SV or EF, never a 0). Without an LV cavity (e.g. a myocardium-only model), ED
  is the first frame (ECG-triggered cines start at the R wave, end-diastole), or the first
  frame with myocardium when frame 0 has none, and ES is undetermined. ``ed=`` / ``es=``
  override both (ED = ES set by hand is measured, with a warning; a chosen frame where a
  cavity is unlabelled gets a note).
* ED and ES labelled on different slices (count or range) are warned about: normal as the base
  and apex move through the slices, but a slice left unlabelled at one phase biases the EF.
* EF = (EDV - ESV) / EDV x 100; SV = EDV - ESV; LV mass = myocardial volume at ED x 1.05 g/ml.
* Frames are 0-based indices along the file's time axis (ACDC's ``frame01`` is frame 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_sdnet.cardiac_result import COLOURS as COLOURS
from napari_sdnet.cardiac_result import (
    CONVENTION_TEXT,
    EF_PLAUSIBLE,
    LABEL_CONVENTIONS,
    MYOCARDIAL_DENSITY,
    STRUCTURE_NAMES,
    STRUCTURES,
    CardiacFunction,
    _frames_text,
    plot_volume_curve,
    write_csv,
    write_json,
)
from napari_sdnet.errors import InputError

__all__ = [
    "EF_PLAUSIBLE",
    "LABEL_CONVENTIONS",
    "MYOCARDIAL_DENSITY",
    "STRUCTURES",
    "STRUCTURE_NAMES",
    "CardiacFunction",
    "measure_ed_es",
    "measure_labels",
    "measure_segmentation",
    "plot_volume_curve",
    "segmented_structures",
    "write_csv",
    "write_json",
]


_MODES = ("cine", "ed_es", "volume")


# --------------------------------------------------------------------------------- helpers


def _check_convention(convention: str) -> dict[str, int]:
    key = str(convention).strip().lower()
    if key not in LABEL_CONVENTIONS:
        raise InputError(
            f"unknown label convention {convention!r}; choose one of {', '.join(LABEL_CONVENTIONS)}"
        )
    return LABEL_CONVENTIONS[key]


def _check_labels(labels: Any, what: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype.kind == "b":
        raise InputError(
            f"{what}: a boolean mask is ambiguous; pass integer labels (e.g. ACDC 1/2/3) or a "
            "0/1 myocardium mask with convention='binary'"
        )
    if arr.dtype.kind not in "iuf":
        raise InputError(f"{what} must be an integer label map, got dtype {arr.dtype}")
    if arr.size == 0:
        raise InputError(f"{what} are empty (shape {arr.shape})")
    if arr.dtype.kind == "f":
        if not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise InputError(f"{what} hold non-integer values; a label map holds whole numbers")
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "i" and int(arr.min()) < 0:
        raise InputError(f"{what} hold negative values; a label map holds 0, 1, 2, ...")
    return arr


def _spatial_spacing(spacing: Any, ndim: int, what: str) -> tuple[float, ...]:
    """``(dt?, dz, dy, dx)`` -> validated tuple of length ``ndim`` (or 3 spatial values)."""
    if spacing is None:
        raise InputError(f"{what}: a voxel spacing (mm) is needed to measure volumes")
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InputError(f"{what}: spacing must be numbers, got {spacing!r}") from None
    if len(values) not in (3, ndim):
        raise InputError(
            f"{what}: spacing {values} has {len(values)} values; give one per axis ({ndim}) "
            "or the spatial (dz, dy, dx)"
        )
    if not all(math.isfinite(v) and v > 0 for v in values[-3:]):
        raise InputError(f"{what}: voxel spacing {values[-3:]} must be positive mm values")
    return values


def _time_step_ms(dt: float | None, unit: str | None) -> float | None:
    if dt is None or not math.isfinite(dt) or dt <= 0:
        return None
    factor = {"msec": 1.0, "ms": 1.0, "sec": 1000.0, "s": 1000.0, "usec": 1e-3, "us": 1e-3}
    f = factor.get(str(unit or "").lower())
    return None if f is None else dt * f


def _slice_counts(vol: np.ndarray, values: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Voxel counts per slice ``(Z,)`` of each structure in a 3D ``(z, y, x)`` volume."""
    return {s: np.count_nonzero(vol == v, axis=(1, 2)).astype(np.int64) for s, v in values.items()}


def _other_values(vol: np.ndarray, values: Mapping[str, int]) -> set[int]:
    top = int(vol.max())
    if top <= 1 << 16:
        present = np.flatnonzero(np.bincount(vol.ravel().astype(np.intp, copy=False)))
    else:
        present = np.unique(vol)
    return {int(v) for v in present} - {0, *values.values()}


# --------------------------------------------------------------------------------- measuring
def _phase_index(value: Any, n: int, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InputError(f"{name} must be a frame number, got {value!r}")
    if not 0 <= int(value) < n:
        raise InputError(f"{name} frame {value} is outside the cine (frames 0-{n - 1})")
    return int(value)


def _build(
    mode: str,
    volumes3d: Sequence[np.ndarray],
    spacings: Sequence[tuple[float, float, float]],
    frames: tuple[int | None, ...],
    phases: tuple[str, ...],
    *,
    convention: str,
    structures: Sequence[str] | None,
    source: str | None,
    ed: int | None,
    es: int | None,
    time_step_ms: float | None,
) -> CardiacFunction:
    values = _check_convention(convention)
    not_segmented = "not segmented" if not source else f"{source} does not segment it"
    expected = set(STRUCTURES if structures is None else structures)
    unknown = expected - set(STRUCTURES)
    if unknown:
        raise InputError(f"unknown structure(s) {sorted(unknown)}; known: {', '.join(STRUCTURES)}")
    notes: list[str] = []
    warns: list[str] = []

    others: set[int] = set()
    counts: dict[str, list[np.ndarray]] = {s: [] for s in STRUCTURES}
    for vol in volumes3d:
        others |= _other_values(vol, values)
        c = _slice_counts(vol, values)
        for s in STRUCTURES:
            counts[s].append(c.get(s, np.zeros(vol.shape[0], np.int64)))
    if others:
        warns.append(
            f"label value(s) {sorted(others)} are not {CONVENTION_TEXT[convention]} labels and "
            "were ignored; wrong convention?"
        )
    voxel_ml = tuple(float(np.prod(sp)) / 1000.0 for sp in spacings)

    status: dict[str, str] = {}
    volumes: dict[str, tuple[float | None, ...]] = {}
    for s in STRUCTURES:
        totals = [int(c.sum()) for c in counts[s]]
        name = STRUCTURE_NAMES[s]
        if s not in values:
            status[s] = f"absent: {CONVENTION_TEXT[convention]} labels have no {name}"
        elif not any(totals):
            status[s] = (
                f"absent: {not_segmented}"
                if s not in expected
                else f"absent: no voxel labelled {values[s]}"
            )
        else:
            status[s] = "present"
            if s not in expected:
                notes.append(f"{name} found although {not_segmented} (painted by hand?)")
        volumes[s] = tuple(
            (n * v if n else None) if status[s] == "present" else None
            for n, v in zip(totals, voxel_ml, strict=True)
        )
        missing = [i for i, n in enumerate(totals) if n == 0]
        if status[s] == "present" and missing and mode == "cine":
            notes.append(
                f"{name} is unlabelled on {len(missing)} of {len(totals)} frames "
                f"({_frames_text(missing)}): no volume there"
            )
        if status[s] == "present" and missing and mode == "ed_es":
            warns.append(
                f"{name} is labelled in one of the two volumes only ({phases[missing[0]]} has none)"
            )
    only_ones = [status[s] == "present" for s in ("rv", "myocardium", "lv")] == [True, False, False]
    if convention == "acdc" and only_ones:
        warns.append(
            "the labels hold only 0 and 1 (the RV cavity in ACDC); for a binary myocardium "
            "mask use the 'binary' convention"
        )

    # ED / ES
    n = len(phases)
    ed_rule = es_rule = ""
    lv = volumes["lv"]
    labelled_lv = [i for i in range(n) if lv[i] is not None]
    if mode == "ed_es":
        auto_ed, auto_es = 0, 1
        ed_rule = es_rule = "given as input"
    elif mode == "volume":
        auto_ed = auto_es = None
        ed_rule = es_rule = "one phase: pass ed=0 / es=0 to name it"
    elif labelled_lv:
        auto_ed = max(labelled_lv, key=lambda i: (lv[i], -i))
        auto_es = min(labelled_lv, key=lambda i: (lv[i], i))
        ed_rule, es_rule = "largest LV cavity volume", "smallest LV cavity volume"
        if len(labelled_lv) == 1:
            # ED = ES would report ESV = EDV, SV 0 and EF 0 % as if measured
            auto_es = None
            ed_rule = "the only frame with an LV cavity"
            es_rule = "only one frame with an LV cavity; set ES by hand"
            notes.append(
                f"the LV cavity is labelled on frame {frames[auto_ed]} only: ES is undetermined, "
                "so there is no ESV, SV or EF; set ES to override"
            )
        elif lv[auto_ed] == lv[auto_es]:
            auto_es = None
            es_rule = "largest and smallest LV cavity volumes are equal; set ES by hand"
            notes.append(
                f"the LV cavity has the same volume on all {len(labelled_lv)} frames where it is "
                "labelled: ES is undetermined, so there is no ESV, SV or EF; set ES to override"
            )
    else:
        myo = volumes["myocardium"]
        with_myo = [i for i in range(n) if myo[i] is not None]
        auto_ed, auto_es = (with_myo[0] if with_myo else 0), None
        es_rule = "no LV cavity; set it by hand"
        if auto_ed == 0:
            ed_rule = "first frame; no LV cavity"
            notes.append(
                "no LV cavity: ED is taken as frame 0 (an ECG-triggered cine starts at the R "
                "wave, end-diastole) and ES is undetermined; set ED/ES to override"
            )
        else:
            ed_rule = "first frame with myocardium; no LV cavity"
            notes.append(
                f"no LV cavity, and no myocardium on frame 0: ED is taken as frame "
                f"{frames[auto_ed]}, the first frame with myocardium (not frame 0, where there "
                "would be no LV mass) and ES is undetermined; set ED/ES to override"
            )
    if ed is not None:
        auto_ed, ed_rule = ed, "set by the user"
    if es is not None:
        auto_es, es_rule = es, "set by the user"
    by_user = {"ED": ed is not None, "ES": es is not None}
    ed, es = auto_ed, auto_es
    if ed is not None and ed == es and n > 1:  # only a user's choice gives ED = ES
        warns.append(
            f"ED and ES are the same frame ({frames[ed]}), as set by hand: ESV = EDV, so SV is "
            "0 and EF is 0 %"
        )
    for which, phase in (("ED", ed), ("ES", es)):
        if not by_user[which] or phase is None:
            continue
        where = f"frame {frames[phase]}" if frames[phase] is not None else f"the {phases[phase]}"
        for s in ("lv", "rv"):
            if status[s] == "present" and volumes[s][phase] is None:
                notes.append(
                    f"{STRUCTURE_NAMES[s]} is unlabelled on the {which} set by the user "
                    f"({where}): no {s.upper()} {which}V, SV or EF"
                )
        if (
            which == "ED"
            and status["myocardium"] == "present"
            and volumes["myocardium"][phase] is None
        ):
            notes.append(
                f"myocardium is unlabelled on the ED set by the user ({where}): no LV mass"
            )

    missing = [s for s in ("lv", "rv") if s not in expected and status[s] != "present"]
    if missing and structures is not None:
        made = " and ".join(STRUCTURE_NAMES[s] for s in STRUCTURES if s in expected)
        notes.insert(
            0,
            f"{' and '.join(STRUCTURE_NAMES[s] for s in missing)} "
            f"{'is' if len(missing) == 1 else 'are'} absent: {source or 'the label source'} "
            f"segments the {made} only, so there is no EDV, ESV, SV or EF for "
            f"{'it' if len(missing) == 1 else 'them'}",
        )
    result = CardiacFunction(
        mode=mode,
        phases=phases,
        frames=frames,
        slice_counts={s: tuple(counts[s]) for s in STRUCTURES},
        volumes=volumes,
        status=status,
        ed=ed,
        es=es,
        ed_rule=ed_rule,
        es_rule=es_rule,
        voxel_ml=voxel_ml,
        spacing=tuple(tuple(float(v) for v in sp) for sp in spacings),
        time_step_ms=time_step_ms,
        convention=convention,
        notes=notes,
        warnings=warns,
    )
    _plausibility(result)
    return result


#: Why ED and ES on different slices is worth a look, and when it is not a problem.
_DIFFERENT_SLICES = "normal as the base and apex move; a slice left unlabelled biases the EF"


def _plausibility(r: CardiacFunction) -> None:
    """Warnings for implausible results: EF range, slice gaps, single-slice structures, ED and
    ES labelled on different slices."""
    for s in ("lv", "rv"):
        ef = r.ef(s)
        lo, hi = EF_PLAUSIBLE
        if ef is not None and not lo <= ef <= hi:
            r.warnings.append(
                f"{s.upper()} EF {ef:.1f} % is outside {lo:.0f}-{hi:.0f} %: check the labels "
                "(ED/ES frames, missing slices, swapped LV/RV convention)"
            )
    if r.present("lv") and r.ed is not None and r.edv("lv") is not None:
        if not r.present("myocardium"):
            r.notes.append("no myocardium: no LV mass")
    if r.ed is not None and r.es is not None and r.ed != r.es:
        for s in ("lv", "rv"):
            if r._at(s, r.ed) is None or r._at(s, r.es) is None:
                continue
            at_ed = np.flatnonzero(r.slice_counts[s][r.ed])
            at_es = np.flatnonzero(r.slice_counts[s][r.es])
            name = STRUCTURE_NAMES[s]
            if len(at_ed) != len(at_es):
                r.warnings.append(
                    f"{name} labelled on {len(at_ed)} slices at ED but {len(at_es)} at ES: "
                    f"{_DIFFERENT_SLICES}"
                )
            elif (at_ed[0], at_ed[-1]) != (at_es[0], at_es[-1]):
                r.warnings.append(
                    f"{name} labelled on slices {at_ed[0]}-{at_ed[-1]} at ED but "
                    f"{at_es[0]}-{at_es[-1]} at ES: {_DIFFERENT_SLICES}"
                )
    for phase, which in ((r.ed, "ED"), (r.es, "ES")):
        if phase is None or (which == "ES" and phase == r.ed):
            continue
        where = which if r.frames[phase] is None else f"{which} (frame {r.frames[phase]})"
        for s in STRUCTURES:
            if r._at(s, phase) is None:
                continue
            on = np.flatnonzero(r.slice_counts[s][phase])
            name = STRUCTURE_NAMES[s]
            if len(on) == 1:
                r.warnings.append(f"{name} is labelled on one slice only ({on[0]}) at {where}")
            labelled = set(on.tolist())
            gaps = [z for z in range(on[0], on[-1] + 1) if z not in labelled]
            if gaps:
                r.warnings.append(
                    f"{name} has unlabelled slice(s) {_frames_text(gaps)} between labelled "
                    f"slices {on[0]}-{on[-1]} at {where}: missing slices?"
                )
        if which == "ED" and r._at("lv", phase) is not None and r._at("myocardium", phase):
            lv_only = np.flatnonzero(
                (r.slice_counts["lv"][phase] > 0) & (r.slice_counts["myocardium"][phase] == 0)
            )
            if len(lv_only):
                r.warnings.append(
                    f"at {where} the LV cavity is labelled without myocardium on slice(s) "
                    f"{_frames_text(lv_only)}: LV mass may be underestimated"
                )


def measure_labels(
    labels: Any,
    spacing: Sequence[float],
    *,
    ed: int | None = None,
    es: int | None = None,
    convention: str = "acdc",
    structures: Sequence[str] | None = None,
    source: str | None = None,
    time_unit: str | None = None,
) -> CardiacFunction:
    """Measure a 4D cine ``(t, z, y, x)`` or one 3D phase ``(z, y, x)`` label map.

    Args:
        labels: integer label map (napari axis order).
        spacing: per axis (``(dt, dz, dy, dx)`` / ``(dz, dy, dx)``, mm; ``dt`` in ``time_unit``)
            or the spatial ``(dz, dy, dx)``; e.g. ``Geometry.spacing``.
        ed, es: override the ED / ES frame (0-based).
        convention: ``"acdc"`` (default), ``"mnms"`` or ``"binary"``.
        structures: what the label source can produce (None: all three). Absent structures
            outside it are reported as "``source`` does not segment it".
        source: who made the labels, for messages (e.g. ``"the model"``).
        time_unit: the unit of ``dt`` (``msec``, ``sec``; NIfTI ``xyzt_units``), for times.

    Raises:
        InputError: not 3D/4D, non-integer or negative values, bad spacing, ED/ES out of range.
    """
    arr = _check_labels(labels)
    if arr.ndim not in (3, 4):
        raise InputError(
            f"labels must be a 3D (z, y, x) phase or a 4D (t, z, y, x) cine; got shape {arr.shape}"
        )
    sp = _spatial_spacing(spacing, arr.ndim, "labels")
    _check_convention(convention)
    if arr.ndim == 3:
        ed_i, es_i = _phase_index(ed, 1, "ED"), _phase_index(es, 1, "ES")
        return _build(
            "volume",
            [arr],
            [sp[-3:]],
            (None,),
            ("volume",),
            convention=convention,
            structures=structures,
            source=source,
            ed=ed_i,
            es=es_i,
            time_step_ms=None,
        )
    n = arr.shape[0]
    dt = sp[0] if len(sp) == 4 else None
    return _build(
        "cine" if n > 1 else "volume",
        list(arr),
        [sp[-3:]] * n,
        tuple(range(n)),
        tuple(str(i) for i in range(n)),
        convention=convention,
        structures=structures,
        source=source,
        ed=_phase_index(ed, n, "ED"),
        es=_phase_index(es, n, "ES"),
        time_step_ms=_time_step_ms(dt, time_unit),
    )


def measure_ed_es(
    ed_labels: Any,
    es_labels: Any,
    spacing: Sequence[float],
    es_spacing: Sequence[float] | None = None,
    *,
    convention: str = "acdc",
    structures: Sequence[str] | None = None,
    source: str | None = None,
) -> CardiacFunction:
    """Measure an end-diastole and an end-systole 3D ``(z, y, x)`` label map.

    ``spacing`` is the ED volume's ``(dz, dy, dx)`` (mm); ``es_spacing`` the ES volume's
    (default: the same). Other arguments as :func:`measure_labels`; ``ed_frame``/``es_frame``
    are None.
    """
    vols = []
    for arr, what in ((ed_labels, "ED labels"), (es_labels, "ES labels")):
        arr = _check_labels(arr, what)
        if arr.ndim != 3:
            raise InputError(f"{what} must be a 3D (z, y, x) volume; got shape {arr.shape}")
        vols.append(arr)
    sp_ed = _spatial_spacing(spacing, 3, "ED labels")
    sp_es = _spatial_spacing(spacing if es_spacing is None else es_spacing, 3, "ES labels")
    result = _build(
        "ed_es",
        vols,
        [sp_ed[-3:], sp_es[-3:]],
        (None, None),
        ("ED", "ES"),
        convention=convention,
        structures=structures,
        source=source,
        ed=None,
        es=None,
        time_step_ms=None,
    )
    if vols[0].shape[0] != vols[1].shape[0]:
        result.warnings.append(
            f"the ED volume has {vols[0].shape[0]} slices and the ES volume {vols[1].shape[0]}"
        )
    return result


# ----------------------------------------------------------------------- model segmentations
def segmented_structures(segmentation: Any) -> tuple[str, ...]:
    """The structures a :class:`~napari_sdnet.api.Segmentation`'s ``labels()`` can hold.

    A segmentation that declares ``structures`` (a multi-structure model) is taken at its word;
    otherwise a binary mask (values 0/1, today's SDNet models) is the myocardium only and any
    other mask is taken to hold ACDC labels 1/2/3.
    """
    declared = getattr(segmentation, "structures", None)
    if declared:
        return tuple(declared)
    mask = np.asarray(segmentation.mask)
    if mask.size == 0 or int(mask.max()) <= 1:
        return ("myocardium",)
    return STRUCTURES


def _labels_of(segmentation: Any) -> np.ndarray:
    labels = getattr(segmentation, "labels", None)
    return np.asarray(labels() if callable(labels) else segmentation.mask)


def measure_segmentation(
    segmentation: Any,
    spacing: Sequence[float],
    es_segmentation: Any = None,
    es_spacing: Sequence[float] | None = None,
    *,
    ed: int | None = None,
    es: int | None = None,
    time_unit: str | None = None,
) -> CardiacFunction:
    """Measure a model's segmentation (a cine, or an ED and an ES one) in ACDC labels.

    Structures the model does not segment are reported as absent *because* of that (today's
    models: LV and RV cavities); a model whose ``labels()`` hold ACDC 1/2/3 works unchanged.
    """
    structures = segmented_structures(segmentation)
    if es_segmentation is not None:
        structures = tuple(dict.fromkeys((*structures, *segmented_structures(es_segmentation))))
        return measure_ed_es(
            _labels_of(segmentation),
            _labels_of(es_segmentation),
            spacing,
            es_spacing,
            structures=structures,
            source="the model",
        )
    return measure_labels(
        _labels_of(segmentation),
        spacing,
        ed=ed,
        es=es,
        structures=structures,
        source="the model",
        time_unit=time_unit,
    )
