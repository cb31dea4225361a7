"""napari_sdnet.edits: which slices count as corrected, without a viewer."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from napari_sdnet.edits import (
    EditedSlices,
    changed_slices,
    painted_slices,
    slice_text,
    training_labels,
)


def _mask() -> np.ndarray:
    mask = np.zeros((3, 4, 8, 8), np.uint8)
    mask[:, :, 2:5, 2:5] = 2
    return mask


def test_slice_text_and_changed_slices():
    assert [slice_text(k) for k in ((2, 3), (4,), ())] == ["t=2, z=3", "z=4", "the image"]
    before = _mask()
    after = before.copy()
    after[1, 2, 0, 0] = 2
    after[2, 0, 3, 3] = 0
    assert changed_slices(before, after) == {(1, 2), (2, 0)}
    assert changed_slices(before, after, keys=[(1, 2), (0, 0)]) == {(1, 2)}
    assert changed_slices(before[0, 0], after[0, 0]) == set()
    assert changed_slices(None, after[0]) == {(0,), (1,), (2,), (3,)}


def test_painted_slices_reads_brush_and_setitem_payloads():
    brush = SimpleNamespace(slice_key=(1, slice(2, 4), slice(0, 8), slice(0, 8)), new_value=2)
    setitem = ((np.array([0, 0, 2]), np.array([1, 1, 3]), np.array([0, 1, 2]), np.array([0] * 3)),
               np.zeros(3), np.array([1, 1, 3]))
    keys, values = painted_slices([brush, setitem], 4)
    assert keys == {(1, 2), (1, 3), (0, 1), (2, 3)} and values == {1, 2, 3}
    assert painted_slices([setitem[:2]], 4) is None  # not understood: compare data instead
    assert painted_slices([SimpleNamespace(slice_key=(slice(0, 8),) * 2, new_value=0)], 2) == (
        {()},
        {0},
    )


def test_every_kind_of_edit_and_undo_is_tracked():
    base = _mask()
    edits = EditedSlices()
    edits.reset(base)
    data = base.copy()
    # a brush stroke: listed at once (napari tells before it writes), checked after
    edits.touch([(0, 1)])
    assert edits.keys == [(0, 1)]
    data[0, 1, 0, 0] = 2
    edits.update(data)
    assert edits.keys == [(0, 1)]
    # a stroke that changed nothing leaves the list once checked
    edits.touch([(2, 2)])
    edits.update(data)
    assert edits.keys == [(0, 1)]
    # a fill, an erase and a direct data assignment: all seen by comparing the data
    data[1, 0][data[1, 0] == 0] = 2
    data[2, 3] = 0
    edits.update(data)
    assert edits.keys == [(0, 1), (1, 0), (2, 3)]
    # napari's undo puts a slice back as the model wrote it: off the list
    data[1, 0] = base[1, 0]
    edits.update(data)
    assert edits.keys == [(0, 1), (2, 3)]
    # removed by hand: stays off while nothing new happens on it, back when edited again
    edits.remove((0, 1))
    edits.update(data)
    assert edits.keys == [(2, 3)]
    edits.touch([(0, 1)])
    edits.update(data, [(0, 1)])
    assert edits.keys == [(0, 1), (2, 3)]
    # added by hand (a slice the model got right): listed although unchanged
    edits.add((1, 1))
    edits.update(data)
    assert edits.keys == [(0, 1), (1, 1), (2, 3)]
    # Undo of a fine-tuning lists exactly what it says
    edits.set_keys([(2, 3), (1, 1)], data)
    assert edits.keys == [(1, 1), (2, 3)]


def test_without_a_baseline_only_reported_slices_count():
    edits = EditedSlices()
    edits.reset(None)
    edits.update(_mask(), [(1, 1)])
    assert edits.keys == [(1, 1)]
    edits.update(_mask())  # nothing to compare with: the list stays
    assert edits.keys == [(1, 1)]


def test_training_labels_keep_only_the_myocardium_of_listed_slices():
    mask = _mask()
    mask[0, 0, 0, 0] = 3
    mask[1, 1] = 0
    found = training_labels(mask, [(0, 0), (1, 1)], 2)
    assert set(np.unique(found.labels)) == {0, 2}
    assert found.labels[0, 0].sum() == 2 * 9 and not found.labels[0, 1].any()
    assert found.empty == [(1, 1)] and found.other_values == [3]
    assert found.problem() == ""
    warnings = found.warnings()
    assert "label(s) [3]" in warnings[0] and "t=1, z=1" in warnings[1]
    none = training_labels(mask, [(1, 1)], 2)
    assert "no edited slice has any myocardium" in none.problem()
    assert "no edited slice" in training_labels(mask, [], 2).problem()


def test_training_labels_of_a_three_structure_model_keep_every_structure():
    mask = _mask()
    mask[0, 0, 0, 0] = 3
    mask[0, 0, 0, 1] = 1
    mask[0, 0, 0, 2] = 5  # not a structure of the model
    mask[1, 1] = 0
    mask[1, 1, 4, 4] = 3  # only an LV cavity pixel: still a labelled slice
    found = training_labels(mask, [(0, 0), (1, 1)], (1, 2, 3))
    assert set(np.unique(found.labels[0, 0])) == {0, 1, 2, 3}
    assert found.labels[1, 1].sum() == 3 and found.empty == [] and found.other_values == [5]
    assert found.problem() == ""
    assert "RV cavity, myocardium or LV cavity (labels 1, 2, 3)" in found.warnings()[0]
    none = training_labels(np.zeros_like(mask), [(1, 1)], (1, 2, 3))
    assert "no edited slice has any RV cavity, myocardium or LV cavity" in none.problem()
