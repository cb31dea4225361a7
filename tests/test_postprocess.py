"""Label-map clean-up: one connected component per structure (napari_sdnet.postprocess)."""

from __future__ import annotations

import numpy as np

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
