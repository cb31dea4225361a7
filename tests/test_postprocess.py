"""Label-map clean-up: one connected component per structure (napari_sdnet.postprocess)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sdnet import api
from napari_sdnet.phantom import make_phantom_volume
from napari_sdnet.postprocess import largest_components


def test_only_the_largest_island_of_each_structure_stays():
    lab = np.zeros((3, 20, 20), np.uint8)
    lab[:, 2:8, 2:8] = 3  # the LV: one blob through all slices
    lab[1, 15:17, 15:17] = 3  # an island of "LV" far away: removed
    lab[:, 9:11, 2:8] = 2  # the myocardium
    lab[0, 18, 0] = 2  # a one-pixel island: removed
    lab[2, 0, 19] = 5  # not a listed value: left alone
    out = largest_components(lab, [1, 2, 3])
    assert out[1, 15:17, 15:17].sum() == 0 and out[0, 18, 0] == 0
    assert (out[:, 2:8, 2:8] == 3).all() and (out[:, 9:11, 2:8] == 2).all()
    assert out[2, 0, 19] == 5
    assert lab[1, 15, 15] == 3  # the input is not changed
    # diagonal neighbours across slices are one component (26-connectivity)
    diag = np.zeros((2, 4, 4), np.uint8)
    diag[0, 0, 0] = diag[1, 1, 1] = 2
    np.testing.assert_array_equal(largest_components(diag, [2]), diag)


def test_frames_of_a_cine_are_cleaned_on_their_own():
    cine = np.zeros((2, 2, 10, 10), np.uint8)
    cine[0, :, 1:3, 1:3] = 3  # frame 0: the big blob top-left
    cine[0, 0, 8, 8] = 3
    cine[1, :, 6:9, 6:9] = 3  # frame 1: the big blob bottom-right, a small one top-left
    cine[1, 0, 1, 1] = 3
    out = largest_components(cine, [3])
    assert out[0, 0, 8, 8] == 0 and out[0, :, 1:3, 1:3].all()
    assert out[1, 0, 1, 1] == 0 and out[1, :, 6:9, 6:9].all()
    from_generator = largest_components(cine, (v for v in [3]))  # values read once, all frames
    np.testing.assert_array_equal(from_generator, out)
    two_d = np.zeros((6, 6), np.uint8)
    two_d[0, 0] = two_d[3:5, 3:5] = 1
    assert largest_components(two_d, [1])[0, 0] == 0


def test_segment_keeps_one_component_per_structure(three_model_file):
    from scipy import ndimage

    model = api.load_model(three_model_file, "cpu")
    vol = make_phantom_volume(n_slices=4, shape=(70, 60), spacing=(1.6, 1.6))
    labels = api.segment(model, vol.image, vol.spacing, precision="fp32").labels()
    for value in (1, 2, 3):
        _, n = ndimage.label(labels == value, structure=np.ones((3, 3, 3), bool))
        assert n <= 1


def _scipy_largest(labels, values):
    """The rule with scipy.ndimage: the reference largest_components is checked against."""
    from scipy import ndimage

    out = labels.copy()
    for value in values:
        components, n = ndimage.label(labels == value, structure=np.ones((3,) * labels.ndim))
        if n > 1:
            sizes = np.bincount(components.ravel())[1:]
            out[(components > 0) & (components != 1 + int(np.argmax(sizes)))] = 0
    return out


def test_same_components_as_scipy_on_random_maps():
    rng = np.random.default_rng(0)
    for shape in ((5, 30, 40), (40, 33), (3, 4, 25, 25)):
        lab = rng.choice(np.array([0, 1, 2, 3], np.uint8), size=shape, p=[0.7, 0.1, 0.1, 0.1])
        ours = largest_components(lab, [1, 2, 3])
        ref = (
            np.stack([_scipy_largest(f, [1, 2, 3]) for f in lab])
            if lab.ndim == 4
            else _scipy_largest(lab, [1, 2, 3])
        )
        np.testing.assert_array_equal(ours, ref)
        assert ours.dtype == lab.dtype
    assert largest_components(np.zeros((2, 3, 3), np.uint8), [1, 2]).sum() == 0
    with pytest.raises(ValueError, match="2D, 3D or 4D"):
        largest_components(np.zeros(4, np.uint8), [1])


def test_native_outputs_equal_restoring_everything():
    """Restoring only the window that can be labelled changes nothing (segment's rule)."""
    from napari_sdnet.preprocess import SliceGrid, restore_probabilities
    from napari_sdnet.segmentation import native_outputs, structure_labels

    rng = np.random.default_rng(3)
    structures = ("rv", "myocardium", "lv")
    yy, xx = np.mgrid[:64, :64]
    logits = np.zeros((2, 3, 4, 64, 64), np.float32)  # (t, z, C + background, S, S)
    for k, (cy, cx) in enumerate(((30, 20), (32, 34), (32, 34))):
        r = np.hypot(yy - cy - rng.normal(0, 2, (2, 3, 1, 1)), xx - cx)
        logits[:, :, k + 1] = 4 * np.exp(-(((r - (6 if k == 1 else 0)) / 6) ** 2))
    logits[0, 0, 3, 2:4, 60:62] = 9  # a stray island of LV: removed by the component rule
    soft = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    model_prob = soft[:, :, 1:]  # (t, z, C, S, S)
    grids = (((70, 90), (1.6, 1.3)), ((40, 41), (3.1, 2.9)), ((150, 130), (0.8, 1.0)))
    for shape, spacing in grids:
        grid = SliceGrid(shape, spacing, size=64, target_spacing=1.7)
        full = restore_probabilities(np.moveaxis(model_prob, -3, 0), grid)
        expected = largest_components(structure_labels(full, structures), [1, 2, 3])
        mask, label_map = native_outputs(model_prob, grid, structures)
        np.testing.assert_array_equal(label_map, expected)
        np.testing.assert_array_equal(mask, (expected == 2).astype(np.uint8))
        one = restore_probabilities(model_prob[:, :, 1], grid)
        mask1, none = native_outputs(model_prob[:, :, 1], grid, ("myocardium",))
        assert none is None
        np.testing.assert_array_equal(mask1, (one >= 0.5).astype(np.uint8))
