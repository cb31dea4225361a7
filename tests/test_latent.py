"""Latent space exploration (napari_sdnet.latent, re-exported by napari_sdnet.api).

The bundled model on the bundled Sunnybrook sample study (a real CC0 study, in the package):
g(M_i, Z_i) is the segmentation's reconstruction, g(0, Z_i) differs from it mostly inside the
anatomy M holds (the myocardium; with a three-structure M also the cavities), and g(M_j, Z_i)
moves the myocardium to where M_j is. One torch thread (conftest).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sdnet import api, latent
from napari_sdnet.errors import InputError
from napari_sdnet.io.nifti import read_nifti
from napari_sdnet.sample import sunnybrook_study

MIN_AREA = 150  # model-grid pixels: slices with "a reasonable mask"


@pytest.fixture(scope="module")
def model():
    return api.load_model("bundled", device="cpu")


@pytest.fixture(scope="module")
def study():
    return read_nifti(sunnybrook_study().image)


@pytest.fixture(scope="module")
def seg(model, study):
    """Frame 0 of the sample study (12 slices, 3D)."""
    return api.segment(model, study.data[0], study.geometry.spacing[1:])


@pytest.fixture(scope="module")
def seg4d(model, study):
    """Two phases (0 and 8) of six mid slices: a small 4D study."""
    return api.segment(model, study.data[[0, 8], 3:9], study.geometry.spacing)


def _myocardium(s: latent.LatentSlice) -> np.ndarray:
    """The myocardium g sees in a slice's M (bool (S, S)), for one channel or several."""
    hard = s.hard_mask
    return hard if hard.ndim == 2 else hard[s.structures.index("myocardium")]


def _anatomy(s: latent.LatentSlice) -> np.ndarray:
    """Everything M holds (bool (S, S)): the myocardium, or the union of the structures."""
    hard = s.hard_mask
    return hard if hard.ndim == 2 else hard.any(axis=0)


def _good_slices(seg) -> list[int]:
    areas = [_myocardium(latent.latent_slice(seg, i)).sum() for i in range(len(seg.z))]
    return [i for i in range(len(areas)) if areas[i] >= MIN_AREA]


def _tolerance(seg) -> float:
    """bfloat16 (``auto`` on CPUs with native bf16) rounds g(M, Z) to about 8 bits, and by how
    much depends on the batch it runs in: one slice alone vs the whole study."""
    return 1e-4 if seg.precision == "fp32" else 0.03


def test_bundled_model_finds_the_myocardium_on_most_slices(seg):
    # the checks below are only meaningful with real masks on several slices
    assert len(_good_slices(seg)) >= 6


# ----------------------------------------------------------------------------- identity
def test_own_mask_and_z_give_the_segmentation_reconstruction(model, seg):
    tol = _tolerance(seg)
    for idx in latent.slice_indices(seg):
        s = latent.latent_slice(seg, idx)
        np.testing.assert_allclose(latent.mix(model, s, s.z), s.reconstruction, atol=tol)
        np.testing.assert_allclose(
            latent.mix(model, s, s), seg.model_reconstruction[idx], atol=tol
        )
    i = 5
    # on the input grid, in both intensity scales
    on_input = api.mix_slices(model, seg, i, i, on_input_grid=True)
    assert on_input.shape == (144, 144)
    np.testing.assert_allclose(on_input, seg.reconstruction[i], atol=tol)
    intensity = api.mix_slices(model, seg, i, i, on_input_grid=True, denormalise=True)
    scale = float(np.ptp(seg.reconstruction_intensity[i])) / 2  # [-1, 1] -> the image's units
    np.testing.assert_allclose(
        intensity, seg.reconstruction_intensity[i], rtol=1e-4, atol=max(1e-3, tol * scale)
    )
    s = latent.latent_slice(seg, i)
    np.testing.assert_array_equal(latent.mix(model, s, s.z, grid=seg.grid), on_input)


def test_four_d_indices_and_mixing_across_phases(model, seg4d):
    assert latent.slice_indices(seg4d)[:3] == [(0, 0), (0, 1), (0, 2)]
    assert len(latent.slice_indices(seg4d)) == 12
    s = latent.latent_slice(seg4d, (1, 2))
    assert s.index == (1, 2) and s.label == "t=1, z=2"
    np.testing.assert_array_equal(s.z, seg4d.z[1, 2])
    np.testing.assert_allclose(
        latent.mix(model, s, s.z), seg4d.model_reconstruction[1, 2], atol=_tolerance(seg4d)
    )
    # the anatomy of phase 1 with the Z of phase 0 (same slice) is a new image
    other = api.mix_slices(model, seg4d, (1, 2), (0, 2))
    assert other.shape == (128, 128)
    assert np.abs(other - s.reconstruction).mean() > 1e-3


# ------------------------------------------------------------------------------ null mask
def test_null_mask_changes_mostly_the_anatomy_of_m(model, seg):
    good = _good_slices(seg)
    ratios = []
    for i in good:
        s = latent.latent_slice(seg, i)
        full = latent.mix(model, s, s.z)
        null = latent.mix(model, None, s.z)
        np.testing.assert_array_equal(null, api.mix_slices(model, seg, i, i, null_mask=True))
        diff = np.abs(full - null)
        inside = _anatomy(s)
        ratios.append(diff[inside].mean() / diff[~inside].mean())
    assert min(ratios) >= 3.0, ratios


# ------------------------------------------------------------------------------ swapping
@pytest.mark.parametrize(("i", "j"), [(3, 8), (5, 9), (2, 6)])
def test_swapping_masks_moves_the_myocardium(model, seg, i, j):
    a, b = latent.latent_slice(seg, i), latent.latent_slice(seg, j)
    moved = latent.mix(model, b, a.z)  # g(M_j, Z_i)
    own = latent.mix(model, a, a.z)  # g(M_i, Z_i)
    null = latent.mix(model, None, a.z)  # g(0, Z_i)
    # where the two masks disagree (any structure of a several-structure M)
    changed = (a.hard_mask ^ b.hard_mask).reshape(-1, *a.image.shape).any(axis=0)
    assert changed.sum() >= 100
    # what changes is where the two masks disagree ...
    diff = np.abs(moved - own)
    assert diff[changed].mean() >= 3 * diff[~changed].mean()
    # ... and the anatomy is drawn where M_j is (relative to the same Z without any mask)
    drawn = np.abs(moved - null)
    assert drawn[_anatomy(b)].mean() >= 3 * drawn[~_anatomy(b)].mean()
    # inside M_j's myocardium but outside M_i's, g(M_j, Z_i) looks like the myocardium of
    # g(M_i, Z_i)
    new_myo = _myocardium(b) & ~_myocardium(a)
    assert new_myo.sum() >= 20
    own_myo = own[_myocardium(a)].mean()
    # (closer to it than what was there; where that was already about as dark as the
    # myocardium, e.g. the tissue around a basal slice, within 0.1 of it on the [-1, 1] scale)
    before = abs(own[new_myo].mean() - own_myo)
    assert abs(moved[new_myo].mean() - own_myo) < max(before, 0.1)


# ------------------------------------------------------------------------------- Z helpers
def test_z_interpolation_zero_and_offsets(model, seg):
    a, b = latent.latent_slice(seg, 3), latent.latent_slice(seg, 9)
    np.testing.assert_array_equal(latent.interpolate_z(a, b, 0.0), a.z)
    np.testing.assert_allclose(latent.interpolate_z(a.z, b.z, 1.0), b.z, atol=1e-7)
    np.testing.assert_allclose(latent.interpolate_z(a, b, 0.25), 0.75 * a.z + 0.25 * b.z, atol=1e-7)
    z = latent.offset_z(a.z, {0: 0.2, 3: -1.0})
    assert z[0] == pytest.approx(min(a.z[0] + 0.2, 1.0)) and z[3] == 0.0
    np.testing.assert_array_equal(z[4:], a.z[4:])
    assert latent.offset_z(a.z, np.full(16, 5.0)).max() == 1.0
    # order: interpolate, zero, offsets
    mixed = latent.mix_z(a.z, toward=b.z, t=0.5, zero=True, offsets={2: 0.3})
    expected = np.zeros(16, np.float32)
    expected[2] = 0.3
    np.testing.assert_allclose(mixed, expected, atol=1e-7)
    # the decoded images follow Z: half way between two slices' Z lies between their images
    half = api.mix_slices(model, seg, 5, 3, z_toward=9, t=0.5)
    start = api.mix_slices(model, seg, 5, 3)
    end = api.mix_slices(model, seg, 5, 9)
    assert np.abs(half - start).mean() < np.abs(end - start).mean()
    assert np.abs(half - end).mean() < np.abs(end - start).mean()
    # zero Z keeps the anatomy only: the image changes, the mask region still stands out
    zero = api.mix_slices(model, seg, 5, 5, zero_z=True)
    assert np.abs(zero - start).mean() > 0.05
    # Z edits change the image
    edited = api.mix_slices(model, seg, 5, 5, z_offsets={0: -0.5, 1: -0.5, 4: 0.5})
    assert np.abs(edited - latent.latent_slice(seg, 5).reconstruction).mean() > 1e-3


# ------------------------------------------------------------------------------- Figure 3
def test_figure3_panels_and_png(model, seg, tmp_path):
    import matplotlib.image as mpimg

    fig = api.figure3(model, seg, 3, 8, title="sample study, frame 0")
    assert fig.images.shape == (2, 6, 128, 128) and fig.images.dtype == np.float32
    assert fig.labels == ("z=3", "z=8") and fig.columns == latent.FIGURE3_COLUMNS
    a, b = latent.latent_slice(seg, 3), latent.latent_slice(seg, 8)
    for row, (own, other) in enumerate(((a, b), (b, a))):
        np.testing.assert_array_equal(fig.panel(row, "input"), own.image)
        np.testing.assert_array_equal(fig.panel(row, "mask M"), own.mask_image)
        np.testing.assert_allclose(
            fig.panel(row, "g(M, Z)"), own.reconstruction, atol=_tolerance(seg)
        )
        np.testing.assert_allclose(
            fig.panel(row, "g(M other, Z)"), latent.mix(model, other, own.z), atol=1e-5
        )
        np.testing.assert_allclose(
            fig.panel(row, "g(0, Z)"), latent.mix(model, None, own), atol=1e-5
        )
        np.testing.assert_allclose(
            fig.panel(row, "g(M, 0)"), latent.mix(model, own, np.zeros(16)), atol=1e-5
        )

    path = api.save_figure3(fig, tmp_path / "fig3.png")
    assert path == tmp_path / "fig3.png"
    reference = tmp_path / "reference"
    reference.write_bytes(b"")  # the permissions a plain new file gets (umask)
    assert path.stat().st_mode == reference.stat().st_mode
    reference.unlink()
    png = mpimg.imread(path)
    assert png.ndim == 3 and png.shape[1] > 2 * png.shape[0]  # 6 columns, 2 rows
    assert png[..., :3].std() > 0.1  # drawn, not blank
    with pytest.raises(InputError, match="exists"):
        api.save_figure3(fig, path)
    before = path.stat().st_mtime_ns
    api.save_figure3(fig, path, overwrite=True, dpi=60)
    assert path.stat().st_mtime_ns >= before and mpimg.imread(path).shape[0] < png.shape[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig3.png"]  # no temporary left
    with pytest.raises(InputError, match=r"\.png"):
        api.save_figure3(fig, tmp_path / "fig3.jpg")
    with pytest.raises(InputError, match="does not exist"):
        api.save_figure3(fig, tmp_path / "missing" / "fig3.png")


def test_z_heatmap_draws_rows_and_marks_the_current_one(seg):
    from matplotlib.figure import Figure

    figure = Figure()
    ax = figure.subplots()
    labels = [latent.slice_label((i,)) for i in range(len(seg.z))]
    image = latent.draw_z_heatmap(ax, seg.z, labels, current=4, title="Z across slices")
    np.testing.assert_array_equal(image.get_array(), seg.z)
    assert len(ax.patches) == 1 and ax.patches[0].get_y() == pytest.approx(3.5)
    with pytest.raises(InputError, match="row labels"):
        latent.draw_z_heatmap(ax, seg.z, labels[:3])


# ------------------------------------------------------------------------------ bad input
def test_bad_input_is_refused_with_clear_messages(model, seg, seg4d):
    s = latent.latent_slice(seg, 4)
    with pytest.raises(InputError, match=r"Z must have shape \(\.\.\., 16\)"):
        latent.mix(model, s, np.zeros(8))
    with pytest.raises(InputError, match="NaN"):
        latent.mix(model, s, np.full(16, np.nan))
    bad = s.z.copy()
    bad[3] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        latent.interpolate_z(bad, s.z, 0.5)
    with pytest.raises(InputError, match="out of range"):
        latent.latent_slice(seg, 12)
    with pytest.raises(InputError, match="out of range"):
        api.mix_slices(model, seg, 0, -1)
    with pytest.raises(InputError, match=r"use \(t, z\)"):
        latent.latent_slice(seg4d, 3)
    with pytest.raises(InputError, match=r"t=2 is out of range \(0..1\)"):
        latent.latent_slice(seg4d, (2, 0))
    with pytest.raises(InputError, match="must be an integer"):
        latent.latent_slice(seg, True)
    with pytest.raises(InputError, match=r"t must be in \[0, 1\]"):
        latent.interpolate_z(s, s, 1.5)
    with pytest.raises(InputError, match=r"t must be in \[0, 1\]"):
        api.mix_slices(model, seg, 4, 4, z_toward=5, t=float("nan"))
    with pytest.raises(InputError, match="offsets hold NaN"):
        latent.offset_z(s.z, {1: float("nan")})
    with pytest.raises(InputError, match="component 16 is out of range"):
        latent.offset_z(s.z, {16: 0.1})
    with pytest.raises(InputError, match="mask values must be in"):
        latent.mix(model, s.mask * 3.0, s.z)
    with pytest.raises(InputError, match="one model-grid slice"):
        latent.mix(model, seg.model_mask, s.z)
    with pytest.raises(InputError, match="denormalise"):
        latent.mix(model, s, s.z, denormalise=True)


def test_torch_threads_is_restored():
    import torch

    before = torch.get_num_threads()  # 1 in the tests (conftest)
    with latent.torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), latent.torch_threads(before + 1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with latent.torch_threads(None):
        assert torch.get_num_threads() == before


def test_api_reexports_and_no_gui_import(modules_loaded_by):
    for name in ("figure3", "save_figure3", "mix", "mix_slices", "mix_z", "latent_slice"):
        assert getattr(api, name) is getattr(latent, name)
        assert name in api.__all__
    # the headless module pulls in neither Qt nor napari (nor pyplot)
    loaded = modules_loaded_by("import napari_sdnet.api, napari_sdnet.latent")
    gui = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6"}
    assert not {m for m in loaded if m.split(".")[0] in gui or m == "matplotlib.pyplot"}
