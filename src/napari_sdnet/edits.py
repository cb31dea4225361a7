"""Bookkeeping of the slices a user corrected on a mask (no Qt, no napari).

The fine-tuning widget lists the slices of ``<image> myocardium`` that the user corrected: the
labelled training slices. This module decides which slices those are, from what a labels layer
reports and from the data themselves, so the rules are tested without a viewer:

* a slice is keyed by its leading indices: ``(t, z)`` in a 4D study, ``(z,)`` in 3D, ``()``
  for a 2D image (:data:`SliceKey`);
* :func:`painted_slices` reads napari 0.9's ``Labels.events.paint`` payload (brush, eraser,
  fill and polygon atoms, and ``data_setitem`` tuples);
* :func:`changed_slices` compares two arrays slice by slice (what any edit changed);
* :class:`EditedSlices` keeps the list: a slice is *corrected* while it differs from the mask
  the plugin wrote (its ``baseline``), whatever made the change (brush, fill, eraser, a
  direct ``layer.data`` assignment, napari's undo), or when the user added it by hand (a
  slice the model already got right); a slice the user removed stays off the list until it is
  edited again;
* :func:`training_labels` turns the listed slices into the labels fine-tuning trains on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sdnet.choices import labels_text

__all__ = [
    "EditedSlices",
    "SliceKey",
    "TrainingLabels",
    "changed_slices",
    "painted_slices",
    "slice_text",
    "training_labels",
]

SliceKey = tuple[int, ...]


def slice_text(key: SliceKey) -> str:
    """``"t=2, z=3"``, ``"z=3"`` or ``"the image"``."""
    if len(key) == 2:
        return f"t={key[0]}, z={key[1]}"
    if len(key) == 1:
        return f"z={key[0]}"
    return "the image"


def painted_slices(atoms: Any, ndim: int) -> tuple[set[SliceKey], set[int]] | None:
    """Slices and label values in a napari 0.9 ``Labels.events.paint`` payload, or None when
    the payload is not understood (the caller then compares data)."""
    lead = ndim - 2
    keys: set[SliceKey] = set()
    values: set[int] = set()
    try:
        for atom in atoms:
            if hasattr(atom, "slice_key") and not lead:  # a 2D image: its one slice
                keys.add(())
                values.add(int(atom.new_value))
            elif hasattr(atom, "slice_key"):  # brush, eraser, fill, polygon
                ranges = []
                for s in atom.slice_key[:lead]:
                    if isinstance(s, slice):
                        ranges.append(range(int(s.start), int(s.stop)))
                    else:
                        ranges.append(range(int(s), int(s) + 1))
                grid = np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, lead)
                keys.update(tuple(int(v) for v in row) for row in grid)
                values.add(int(atom.new_value))
            else:  # data_setitem: (indices, old values, new values)
                indices, _old, new = atom
                if lead:
                    rows = np.unique(np.stack([np.asarray(i) for i in indices[:lead]], -1), axis=0)
                    keys.update(tuple(int(v) for v in row) for row in rows)
                else:
                    keys.add(())
                values.update(int(v) for v in np.unique(np.asarray(new)))
    except (TypeError, ValueError, AttributeError, IndexError):
        return None
    if lead == 0 and keys:
        keys = {()}
    return keys, values


def changed_slices(
    before: np.ndarray, after: np.ndarray, keys: Iterable[SliceKey] | None = None
) -> set[SliceKey]:
    """The slices (leading indices) where ``after`` differs from ``before``; only ``keys`` are
    looked at when given. Arrays of different shapes: every slice of ``after`` counts."""
    after = np.asarray(after)
    lead = after.ndim - 2
    if before is None or np.shape(before) != after.shape:
        return set(np.ndindex(*after.shape[:lead])) if lead else {()}
    if keys is not None:
        return {k for k in keys if len(k) == lead and not np.array_equal(before[k], after[k])}
    if not lead:
        return set() if np.array_equal(before, after) else {()}
    diff = (after != before).reshape(-1, *after.shape[-2:]).any(axis=(1, 2))
    return {
        tuple(int(i) for i in np.unravel_index(k, after.shape[:lead])) for k in np.flatnonzero(diff)
    }


@dataclass
class EditedSlices:
    """The corrected slices of one mask (see the module docstring).

    ``baseline``: the mask as the plugin wrote it (None: nothing to compare with, every edit
    reported by a paint event counts). ``added``: slices added by hand; ``removed``: slices
    taken off the list by hand (until they are edited again).
    """

    baseline: np.ndarray | None = None
    changed: set[SliceKey] = field(default_factory=set)
    added: set[SliceKey] = field(default_factory=set)
    removed: set[SliceKey] = field(default_factory=set)

    @property
    def keys(self) -> list[SliceKey]:
        """The listed slices, sorted."""
        return sorted((self.changed | self.added) - self.removed)

    def reset(self, baseline: np.ndarray | None, keep: Iterable[SliceKey] = ()) -> None:
        """A new baseline (the plugin wrote the mask); ``keep``: slices that stay listed."""
        self.baseline = None if baseline is None else np.array(baseline, copy=True)
        self.changed, self.added, self.removed = set(), set(keep), set()

    def set_keys(self, keys: Iterable[SliceKey], data: np.ndarray | None = None) -> None:
        """List exactly ``keys`` (e.g. restored by Undo); ``data`` refreshes what differs."""
        keys = {tuple(k) for k in keys}
        if data is not None:
            self.changed = changed_slices(self.baseline, data)
        self.added = keys - self.changed
        self.removed = self.changed - keys

    def update(self, data: np.ndarray, keys: Iterable[SliceKey] | None = None) -> set[SliceKey]:
        """Look at ``data`` again (at ``keys`` only, if given): a slice is listed while it
        differs from the baseline. ``keys`` are slices just edited: one the user removed from
        the list comes back. Returns the slices that were looked at and differ or differed."""
        data = np.asarray(data)
        if keys is not None:
            keys = set(keys)
        if self.baseline is None:
            touched = set(keys or ())
            self.changed |= touched
        else:
            now = changed_slices(self.baseline, data, keys)
            looked = keys if keys is not None else self.changed | now
            touched = now | (looked & self.changed)
            self.changed = (self.changed - looked) | now
        if keys is not None:  # edited again: listed again
            self.removed -= touched & self.changed
        return touched

    def touch(self, keys: Iterable[SliceKey]) -> None:
        """List ``keys`` as edited now (a paint event, which napari sends before it writes);
        :meth:`update` checks them against the data later."""
        keys = {tuple(k) for k in keys}
        self.changed |= keys
        self.removed -= keys

    def add(self, key: SliceKey) -> None:
        key = tuple(key)
        self.added.add(key)
        self.removed.discard(key)

    def remove(self, key: SliceKey) -> None:
        key = tuple(key)
        self.added.discard(key)
        self.removed.add(key)


@dataclass
class TrainingLabels:
    """Labels for fine-tuning built from the listed slices (see :func:`training_labels`)."""

    labels: np.ndarray
    empty: list[SliceKey]  # listed slices with no pixel of the values (they count as unlabelled)
    other_values: list[int]  # other label values found on the listed slices (ignored)
    n_listed: int = 0
    values: tuple[int, ...] = (2,)

    def problem(self) -> str:
        """Why fine-tuning cannot start ("" when it can)."""
        if self.n_listed and len(self.empty) < self.n_listed:
            return ""
        what = labels_text(self.values)
        return f"no edited slice has any {what} pixel: paint the {what} on at least one slice"

    def warnings(self) -> list[str]:
        """What to tell the user before training: ignored values, slices without the values."""
        out = []
        if self.other_values:
            out.append(
                f"the edited slices hold label(s) {self.other_values}: only the "
                f"{labels_text(self.values)} count(s), the other values are treated as background"
            )
        if self.empty and not self.problem():
            held = " or ".join(f"label {v}" for v in self.values)
            out.append(
                f"{len(self.empty)} listed slice(s) hold no {held} and count as "
                "unlabelled: " + ", ".join(slice_text(k) for k in self.empty[:5])
            )
        return out


def training_labels(
    mask: np.ndarray, keys: Iterable[SliceKey], values: int | Sequence[int]
) -> TrainingLabels:
    """Only ``values`` (the labels the model segments: 2, the myocardium, or 1, 2, 3) on the
    listed slices of ``mask``; 0 elsewhere."""
    mask = np.asarray(mask)
    keys = list(keys)
    wanted = (int(values),) if isinstance(values, int | np.integer) else tuple(map(int, values))
    labels = np.zeros(mask.shape, np.uint8)
    empty: list[SliceKey] = []
    other: set[int] = set()
    for key in keys:
        here = mask[key]
        keep = np.isin(here, wanted)
        labels[key] = np.where(keep, here, 0)
        if not keep.any():
            empty.append(key)
        other.update(int(v) for v in np.unique(here) if v != 0 and v not in wanted)
    return TrainingLabels(labels, empty, sorted(other), len(keys), wanted)
