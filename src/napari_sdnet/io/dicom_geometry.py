"""The geometry of a DICOM series (:mod:`napari_sdnet.io.dicom`): its headers as read, and the
layout of its images, ordered into phases and slices, with the RAS voxel-to-world affine and
the spacing (the checks of orientation, spacing, shear and missing slices or phases)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sdnet.errors import InputError

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ORIENTATION_TOL = 1e-3  # direction cosines
_POSITION_TOL_MM = 0.01
_SPACING_RTOL = 0.01
_SHEAR_TOL_DEG = 1.0  # slice origins may lie this far off the slice normal (rounding)


@dataclass
class _Header:
    path: Path
    ds: Any  # pydicom Dataset without pixel data


@dataclass
class _Series:
    uid: str
    headers: list[_Header] = field(default_factory=list)

    @property
    def first(self) -> Any:
        return self.headers[0].ds

    def name(self) -> str:
        ds = self.first
        return _series_name(
            _int_or_none(ds.get("SeriesNumber")),
            str(ds.get("SeriesDescription", "") or ""),
            str(ds.get("Modality", "") or ""),
        )


def _series_name(number: int | None, description: str, modality: str) -> str:
    parts = ["series", str(number) if number is not None else "(no number)"]
    if description:
        parts.append(repr(description))
    if modality:
        parts.append(f"({modality})")
    return " ".join(parts)


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# series layout
# --------------------------------------------------------------------------------------------
@dataclass
class _Layout:
    series: _Series
    grid: list[list[_Header]]  # [t][z]
    affine: np.ndarray  # RAS
    spacing: tuple[float, ...]  # napari order
    trigger_times: np.ndarray | None  # (t, z)
    rows: int
    columns: int


def _floats(ds: Any, key: str, n: int, where: Path) -> np.ndarray:
    try:
        values = np.array([float(v) for v in ds.get(key)], dtype=np.float64)
    except (TypeError, ValueError):
        values = np.array([])
    if values.shape != (n,) or not np.all(np.isfinite(values)):
        raise InputError(f"{where}: invalid or missing {key}")
    return values


def _layout(series: _Series, where: Path) -> _Layout:
    headers = series.headers
    label = series.name()
    orients = [_floats(h.ds, "ImageOrientationPatient", 6, h.path) for h in headers]
    # the most common orientation is the stack's; the others are reported
    rounded = [tuple(np.round(o, 3)) for o in orients]
    ref = orients[rounded.index(max(set(rounded), key=rounded.count))]
    bad = [i for i, o in enumerate(orients) if np.max(np.abs(o - ref)) > _ORIENTATION_TOL]
    if bad:
        n_other = len({tuple(np.round(orients[i], 3)) for i in bad})
        raise InputError(
            f"{where}: {label} mixes slice orientations ({len(bad)} of {len(headers)} images "
            f"in {n_other} other orientation(s), e.g. {headers[bad[0]].path.name}); a cine stack "
            "has one orientation (localizers or several stacks in one series?)"
        )
    sizes = {(int(h.ds.Rows), int(h.ds.Columns)) for h in headers}
    if len(sizes) > 1:
        raise InputError(f"{where}: {label} mixes image sizes {sorted(sizes)}")
    spacings = [_floats(h.ds, "PixelSpacing", 2, h.path) for h in headers]
    if any(not np.allclose(s, spacings[0], rtol=1e-4, atol=1e-6) for s in spacings):
        found = sorted({tuple(np.round(s, 4)) for s in spacings})
        raise InputError(f"{where}: {label} mixes pixel spacings {found} (mm)")
    row_spacing, col_spacing = (float(v) for v in spacings[0])
    if not (row_spacing > 0 and col_spacing > 0):
        raise InputError(f"{where}: {label} has PixelSpacing {spacings[0].tolist()}")
    rows, columns = sizes.pop()

    row_dir = ref[:3] / np.linalg.norm(ref[:3])
    col_dir = ref[3:] / np.linalg.norm(ref[3:])
    normal = np.cross(row_dir, col_dir)
    positions = np.array([_floats(h.ds, "ImagePositionPatient", 3, h.path) for h in headers])
    dist = positions @ normal

    # cluster positions along the normal
    order = np.argsort(dist, kind="stable")
    clusters: list[list[int]] = []
    for i in order:
        if clusters and abs(dist[i] - dist[clusters[-1][0]]) <= _POSITION_TOL_MM:
            clusters[-1].append(int(i))
        else:
            clusters.append([int(i)])
    for c in clusters:
        if np.max(np.abs(positions[c] - positions[c[0]])) > 0.1:
            raise InputError(
                f"{where}: {label} has images in the same slice plane at different in-plane "
                f"positions ({headers[c[0]].path.name}, ...); mixed stacks?"
            )
    n_z = len(clusters)
    centres = np.array([positions[c[0]] for c in clusters])
    if n_z > 1:
        gaps = np.diff(dist[[c[0] for c in clusters]])
        step_mm = float(np.median(gaps))
        uneven = np.abs(gaps - step_mm) > max(_SPACING_RTOL * step_mm, _POSITION_TOL_MM * 10)
        if np.any(uneven):
            k = int(np.flatnonzero(uneven)[0])
            ratio = gaps[k] / step_mm
            if round(ratio) >= 2 and abs(ratio - round(ratio)) < 0.1:
                raise InputError(
                    f"{where}: {label}: {round(ratio) - 1} slice(s) missing between slice "
                    f"positions {k + 1} and {k + 2} of {n_z} (gap {gaps[k]:.2f} mm, the others "
                    f"{step_mm:.2f} mm apart)"
                )
            raise InputError(
                f"{where}: {label} has uneven slice spacing (gaps from {gaps.min():.2f} to "
                f"{gaps.max():.2f} mm); it is not one regular stack"
            )
        step_vec = (centres[-1] - centres[0]) / (n_z - 1)
        # the origins should advance along the normal; a sheared stack (gantry tilt, or
        # slices shifted in plane) has no NIfTI qform and is refused
        cos = abs(float(step_vec @ normal)) / float(np.linalg.norm(step_vec))
        shear = float(np.degrees(np.arccos(min(1.0, cos))))
        if shear > _SHEAR_TOL_DEG:
            raise InputError(
                f"{where}: {label}: the slice origins advance {shear:.1f} degrees off the slice "
                f"normal (a sheared stack, e.g. gantry tilt; at most {_SHEAR_TOL_DEG:g} is "
                "accepted); resample it to an orthogonal stack first"
            )
    else:
        thickness = series.first.get("SpacingBetweenSlices") or series.first.get("SliceThickness")
        try:
            step_mm = abs(float(thickness))
        except (TypeError, ValueError):
            step_mm = 0.0
        if not step_mm > 0:
            step_mm = 1.0
        step_vec = normal * step_mm

    # phases per position, by trigger time
    has_times = all("TriggerTime" in h.ds and h.ds.TriggerTime not in (None, "") for h in headers)
    per_z: list[list[int]] = []
    times_z: list[list[float]] = []
    for c in clusters:

        def key(i: int) -> tuple[float, int]:
            t = float(headers[i].ds.TriggerTime) if has_times else 0.0
            return (t, _int_or_none(headers[i].ds.get("InstanceNumber")) or 0)

        members = sorted(c, key=key)
        if has_times:
            t_values = [float(headers[i].ds.TriggerTime) for i in members]
            dup = [j for j in range(1, len(t_values)) if abs(t_values[j] - t_values[j - 1]) < 1e-6]
            if dup:
                a, b = members[dup[0] - 1], members[dup[0]]
                raise InputError(
                    f"{where}: {label}: {headers[a].path.name} and {headers[b].path.name} lie at "
                    f"the same position and trigger time ({t_values[dup[0]]:g} ms); the series "
                    "mixes acquisitions (e.g. magnitude and phase images)"
                )
            times_z.append(t_values)
        per_z.append(members)
    counts = [len(m) for m in per_z]
    n_t = max(counts)
    if min(counts) != n_t:
        short = [k for k, n in enumerate(counts) if n != n_t]
        raise InputError(
            f"{where}: {label}: phases missing: slice position(s) "
            f"{', '.join(str(k + 1) for k in short[:5])} of {n_z} have "
            f"{', '.join(str(counts[k]) for k in short[:5])} image(s), the others {n_t}"
        )
    if n_t > 1 and not has_times:
        raise InputError(
            f"{where}: {label} has {n_t} images per slice position but no TriggerTime to order "
            "the phases by"
        )
    declared = _int_or_none(series.first.get("CardiacNumberOfImages"))
    if n_t > 1 and declared is not None and declared > n_t:
        warnings.warn(
            f"{label}: CardiacNumberOfImages says {declared} phases, the files hold {n_t} per "
            "slice position; opening the phases present",
            UserWarning,
            stacklevel=3,
        )

    grid = [[headers[per_z[z][t]] for z in range(n_z)] for t in range(n_t)]
    trigger = np.array(times_z, dtype=np.float64).T if has_times else None  # (t, z)
    if n_t > 1:
        assert trigger is not None
        steps = (trigger[-1] - trigger[0]) / (n_t - 1)
        dt = float(np.median(steps))
        if not dt > 0:
            raise InputError(f"{where}: {label}: trigger times do not increase ({dt:g} ms)")
    else:
        dt = None

    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # NIfTI i = DICOM column index
    lps[:3, 1] = col_dir * row_spacing  # NIfTI j = DICOM row index
    lps[:3, 2] = step_vec
    lps[:3, 3] = centres[0]
    affine = _LPS_TO_RAS @ lps
    # the voxel size along the slice axis is the plane spacing (along the normal), not the
    # distance between slice origins: |det(affine)| = dz * dy * dx also for a slight shear
    spatial = (step_mm, row_spacing, col_spacing)
    spacing = ((dt,) + spatial) if dt is not None else spatial
    return _Layout(series, grid, affine, spacing, trigger, rows, columns)
