"""The result of :mod:`napari_sdnet.cardiac`: :class:`CardiacFunction` (volumes, ED/ES, EF, LV
mass, with its tables, JSON and CSV), the volume curve and the files it is written to, and the
label conventions and constants the measuring shares with it."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sdnet.io.files import atomic_write_text, check_destination

#: structure keys, in display order
STRUCTURES: tuple[str, ...] = ("lv", "rv", "myocardium")
STRUCTURE_NAMES: dict[str, str] = {"lv": "LV cavity", "rv": "RV cavity", "myocardium": "myocardium"}
#: label value of each structure, per convention
LABEL_CONVENTIONS: dict[str, dict[str, int]] = {
    "acdc": {"rv": 1, "myocardium": 2, "lv": 3},
    "mnms": {"lv": 1, "myocardium": 2, "rv": 3},
    "binary": {"myocardium": 1},
}
CONVENTION_TEXT: dict[str, str] = {
    "acdc": "ACDC (1 RV, 2 myocardium, 3 LV)",
    "mnms": "M&Ms / UK Biobank (1 LV, 2 myocardium, 3 RV)",
    "binary": "binary (1 myocardium)",
}
#: g/ml, the usual myocardial tissue density
MYOCARDIAL_DENSITY = 1.05
#: EF (%) outside this range comes with a warning
EF_PLAUSIBLE = (0.0, 90.0)


def _frames_text(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    out: list[str] = []
    idx = sorted(int(i) for i in indices)
    start = prev = None
    for i in [*idx, None]:
        if start is not None and (i is None or i != prev + 1):
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return ", ".join(out)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------------- result
@dataclass(eq=False)
class CardiacFunction:
    """Cardiac function measured from a label map (see the module docstring for the rules).

    Attributes:
        mode: ``"cine"`` (a 4D cine), ``"ed_es"`` (an ED and an ES volume) or ``"volume"``
            (one 3D phase).
        phases: a label per measured phase (``"0"`` ... for a cine, ``"ED"``/``"ES"``).
        frames: the frame index of each phase (None for two volumes).
        slice_counts: per structure, per phase, the voxel count of every slice ``(Z,)``.
        volumes: per structure, per phase, ml (None: unlabelled in that phase / absent).
        status: per structure, ``"present"`` or why it is absent.
        ed, es: the phase index of ED and ES (None when undetermined).
        ed_rule, es_rule: how they were chosen.
        voxel_ml: the voxel volume of each phase (ml).
        spacing: the spatial spacing ``(dz, dy, dx)`` (mm) of each phase.
        time_step_ms: the cine's frame interval in ms (None if unknown).
        convention: the label convention (``acdc``, ``mnms``, ``binary``).
        notes, warnings: messages for the user; warnings flag implausible results.
    """

    mode: str
    phases: tuple[str, ...]
    frames: tuple[int | None, ...]
    slice_counts: dict[str, tuple[np.ndarray, ...]]
    volumes: dict[str, tuple[float | None, ...]]
    status: dict[str, str]
    ed: int | None
    es: int | None
    ed_rule: str
    es_rule: str
    voxel_ml: tuple[float, ...]
    spacing: tuple[tuple[float, float, float], ...]
    time_step_ms: float | None = None
    convention: str = "acdc"
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    # -- structures --------------------------------------------------------------------------
    def present(self, structure: str) -> bool:
        return self.status.get(structure) == "present"

    @property
    def ed_frame(self) -> int | None:
        """ED as a frame index of the cine (None for two volumes or undetermined)."""
        return None if self.ed is None else self.frames[self.ed]

    @property
    def es_frame(self) -> int | None:
        return None if self.es is None else self.frames[self.es]

    def _at(self, structure: str, phase: int | None) -> float | None:
        if phase is None or not self.present(structure):
            return None
        return self.volumes[structure][phase]

    def edv(self, structure: str) -> float | None:
        """Volume (ml) at ED."""
        return self._at(structure, self.ed)

    def esv(self, structure: str) -> float | None:
        """Volume (ml) at ES."""
        return self._at(structure, self.es)

    def sv(self, structure: str) -> float | None:
        ed, es = self.edv(structure), self.esv(structure)
        return None if ed is None or es is None else ed - es

    def ef(self, structure: str) -> float | None:
        """Ejection fraction in percent."""
        ed, sv = self.edv(structure), self.sv(structure)
        return None if sv is None or not ed else 100.0 * sv / ed

    @property
    def lv_mass_g(self) -> float | None:
        """Myocardial volume at ED x 1.05 g/ml."""
        myo = self.edv("myocardium")
        return None if myo is None else myo * MYOCARDIAL_DENSITY

    # -- tables ------------------------------------------------------------------------------
    def indices(self) -> dict[str, Any]:
        """The headline numbers (the keys of ``napari-sdnet measure --json``)."""
        out: dict[str, Any] = {}
        for s in ("lv", "rv"):
            out[f"{s}_edv_ml"] = self.edv(s)
            out[f"{s}_esv_ml"] = self.esv(s)
            out[f"{s}_sv_ml"] = self.sv(s)
            out[f"{s}_ef_percent"] = self.ef(s)
        out["lv_mass_g"] = self.lv_mass_g
        out["myocardium_ed_ml"] = self.edv("myocardium")
        out["myocardium_es_ml"] = self.esv("myocardium")
        out["ed_frame"] = self.ed_frame
        out["es_frame"] = self.es_frame
        return out

    def index_rows(self) -> list[tuple[str, str]]:
        """``(name, value)`` rows for display; absent structures say so."""
        rows = [
            ("ED", self.phase_text(self.ed, self.ed_rule)),
            ("ES", self.phase_text(self.es, self.es_rule)),
        ]
        for s in ("lv", "rv"):
            name = "LV" if s == "lv" else "RV"
            if not self.present(s):
                rows.append((f"{name} volumes, EF", self.status[s]))
                continue
            rows += [
                (f"{name} EDV (ml)", _fmt(self.edv(s))),
                (f"{name} ESV (ml)", _fmt(self.esv(s))),
                (f"{name} SV (ml)", _fmt(self.sv(s))),
                (f"{name} EF (%)", _fmt(self.ef(s))),
            ]
        if self.present("myocardium"):
            rows += [
                ("LV mass (g)", _fmt(self.lv_mass_g)),
                ("myocardium at ED (ml)", _fmt(self.edv("myocardium"))),
                ("myocardium at ES (ml)", _fmt(self.esv("myocardium"))),
            ]
        else:
            rows.append(("LV mass, myocardium", self.status["myocardium"]))
        return rows

    def phase_text(self, phase: int | None, rule: str) -> str:
        if phase is None:
            return f"undetermined ({rule})"
        if self.frames[phase] is not None:
            where = f"frame {self.frames[phase]}"
        else:
            where = "the volume" if self.mode == "volume" else f"the {self.phases[phase]} volume"
        return f"{where} ({rule})" if rule else where

    def per_frame_rows(self) -> list[dict[str, Any]]:
        """One row per phase: ``phase, frame, time_ms, lv_ml, rv_ml, myocardium_ml, ed, es``."""
        rows = []
        for i, label in enumerate(self.phases):
            t = None
            if self.time_step_ms is not None and self.frames[i] is not None:
                t = self.frames[i] * self.time_step_ms
            row: dict[str, Any] = {"phase": label, "frame": self.frames[i], "time_ms": t}
            for s in STRUCTURES:
                row[f"{s}_ml"] = self._at(s, i)
            row["ed"] = i == self.ed
            row["es"] = i == self.es
            rows.append(row)
        return rows

    def per_slice_rows(self) -> list[dict[str, Any]]:
        """One row per phase and slice: ``phase, frame, slice, lv_ml, rv_ml, myocardium_ml``."""
        rows = []
        for i, label in enumerate(self.phases):
            n_slices = len(next(iter(self.slice_counts.values()))[i])
            for z in range(n_slices):
                row: dict[str, Any] = {"phase": label, "frame": self.frames[i], "slice": z}
                for s in STRUCTURES:
                    ok = self._at(s, i) is not None
                    ml = float(self.slice_counts[s][i][z] * self.voxel_ml[i])
                    row[f"{s}_ml"] = ml if ok else None
                rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-friendly (None for absent values)."""
        return {
            **self.indices(),
            "mode": self.mode,
            "n_phases": len(self.phases),
            "ed_rule": self.ed_rule,
            "es_rule": self.es_rule,
            "label_convention": CONVENTION_TEXT.get(self.convention, self.convention),
            "structures": {s: self.status[s] for s in STRUCTURES},
            "voxel_volume_ml": list(self.voxel_ml),
            "spacing_mm": [list(s) for s in self.spacing],
            "time_step_ms": self.time_step_ms,
            "myocardial_density_g_per_ml": MYOCARDIAL_DENSITY,
            "basal_slice_rule": "none: every labelled voxel counts",
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            "per_frame": self.per_frame_rows(),
            "per_slice": self.per_slice_rows(),
        }

    def csv_text(self) -> str:
        """The per-frame volumes as CSV (empty cells for absent / unlabelled)."""
        buf = io.StringIO()
        rows = self.per_frame_rows()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        return buf.getvalue()

    def format_table(self, per_frame: bool = True) -> str:
        """A readable summary for a terminal."""
        lines = [f"{name:<24} {value}" for name, value in self.index_rows()]
        if per_frame and len(self.phases) > 1:
            lines.append("")
            lines.append(f"{'phase':>6} {'LV (ml)':>9} {'RV (ml)':>9} {'myo (ml)':>9}")
            for row in self.per_frame_rows():
                mark = " ED" if row["ed"] else (" ES" if row["es"] else "")
                if row["ed"] and row["es"]:
                    mark = " ED ES"
                lines.append(
                    f"{row['phase']:>6} {_fmt(row['lv_ml']):>9} {_fmt(row['rv_ml']):>9} "
                    f"{_fmt(row['myocardium_ml']):>9}{mark}"
                )
        return "\n".join(lines)


# ------------------------------------------------------------------------------ the curve
#: curve colours (matplotlib names)
COLOURS = {"lv": "tab:red", "rv": "tab:blue", "myocardium": "0.35"}


def plot_volume_curve(result: CardiacFunction, ax: Any) -> Any:
    """Draw the volume-time curve (LV, RV, dashed myocardium; ED and ES marked) on a
    matplotlib ``Axes`` (no pyplot, no Qt: the widget hands its own axes). Returns ``ax``."""
    r = result
    x = np.arange(len(r.phases))
    for s in STRUCTURES:
        if r.present(s):
            y = [math.nan if v is None else v for v in r.volumes[s]]
            ax.plot(
                x,
                y,
                marker=".",
                color=COLOURS[s],
                label=STRUCTURE_NAMES[s],
                linestyle="--" if s == "myocardium" else "-",
                linewidth=1.2,
            )
    absent = [STRUCTURE_NAMES[s] for s in ("lv", "rv") if not r.present(s)]
    if absent:
        ax.text(
            0.02,
            0.04,
            f"absent: {', '.join(absent)}",
            fontsize=7,
            transform=ax.transAxes,
            color="0.3",
        )
    for idx, name in ((r.ed, "ED"), (r.es, "ES")):
        if idx is not None:
            ax.axvline(idx, color="0.5", linestyle=":", linewidth=1)
            ax.text(idx, 1.01, name, fontsize=7, ha="center", transform=ax.get_xaxis_transform())
    if r.mode == "cine":
        ax.set_xticks(x if len(x) <= 12 else x[:: math.ceil(len(x) / 10)])
    else:
        ax.set_xticks(x, list(r.phases))
    if any(r.present(s) for s in STRUCTURES):
        ax.legend(fontsize=7, loc="upper right", framealpha=0.6)
    ax.set_xlabel("frame" if r.mode == "cine" else "phase", fontsize=8)
    ax.set_ylabel("volume (ml)", fontsize=8)
    ax.tick_params(labelsize=7)
    return ax


# ---------------------------------------------------------------------------------- writing
def _write_text(path: str | os.PathLike[str], text: str, overwrite: bool, what: str) -> Path:
    check_destination(path, overwrite=overwrite, what=what)
    return atomic_write_text(path, text, overwrite=overwrite)


def write_json(
    result: CardiacFunction,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write :meth:`CardiacFunction.to_dict` (plus ``extra``, e.g. the inputs) atomically."""
    data = {**result.to_dict(), **(extra or {})}
    return _write_text(path, json.dumps(data, indent=1) + "\n", overwrite, "JSON")


def write_csv(
    result: CardiacFunction, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write the per-frame volumes (:meth:`CardiacFunction.csv_text`) atomically."""
    return _write_text(path, result.csv_text(), overwrite, "CSV")
