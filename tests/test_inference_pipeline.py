"""The predict pipeline around the networks: vectorised resampling, lazy imports, the CLI.

The whole-volume resampling (``preprocess._resample_linear``) must give SciPy's values (the
per-slice ``gaussian_filter`` + ``affine_transform`` it replaced) on any grid, and the same
values for a slice alone or inside a volume.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sdnet import preprocess as pp
from napari_sdnet.preprocess import PreprocessConfig, SliceGrid


def _scipy_resample(arr, out_shape, step, offset, inside, order, cval, anti_aliasing):
    """The per-slice SciPy implementation the vectorised one replaced (the reference)."""
    from scipy import ndimage as ndi

    flat = arr.reshape((-1, *arr.shape[-2:]))
    out = np.empty((flat.shape[0], *out_shape), np.float32)
    sigma = pp._aa_sigma(step) if anti_aliasing else np.zeros(2)
    for i, sl in enumerate(flat):
        src = sl.astype(np.float32)
        if np.any(sigma > 0):
            src = ndi.gaussian_filter(src, sigma=tuple(sigma), mode="nearest")
        out[i] = ndi.affine_transform(
            src, step, offset=offset, output_shape=out_shape, order=order, mode="nearest",
            output=np.float32,
        )  # fmt: skip
    out[:, ~np.outer(*inside)] = cval
    return out.reshape((*arr.shape[:-2], *out_shape))


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_resampling_is_scipys(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(8, 150, 2))
    size = int(rng.integers(8, 130))
    # from strong upsampling to strong downsampling (anti-aliasing sigma up to ~1.5 pixels)
    grid = SliceGrid((h, w), tuple(rng.uniform(0.4, 3.0, 2)), size=size,
                     target_spacing=float(rng.uniform(0.5, 4.0)))  # fmt: skip
    x = rng.normal(size=(2, 3, h, w)).astype(np.float32)
    step, offset = grid._model_to_original()
    for aa in (False, True):
        ours = grid.to_model(x, order=1, cval=-1.0, anti_aliasing=aa)
        ref = _scipy_resample(x, grid.model_shape, step, offset, grid._inside(True), 1, -1.0, aa)
        np.testing.assert_allclose(ours, ref, atol=2e-6)
    # the inverse (from_model crops to the valid model pixels first)
    m = rng.normal(size=(4, size, size)).astype(np.float32)
    back = grid.from_model(m, order=1, cval=0.0)
    rows, cols = grid._inside(True)
    if rows.any() and cols.any():
        r0, r1 = np.flatnonzero(rows)[[0, -1]]
        c0, c1 = np.flatnonzero(cols)[[0, -1]]
        step2, offset2 = grid._original_to_model()
        ref = _scipy_resample(
            m[:, r0 : r1 + 1, c0 : c1 + 1], grid.in_shape, step2,
            offset2 - np.array([r0, c0], float), grid._inside(False), 1, 0.0, False,
        )  # fmt: skip
        np.testing.assert_allclose(back, ref, atol=2e-6)


def test_a_slice_resamples_the_same_alone_or_in_a_volume():
    rng = np.random.default_rng(1)
    vol = rng.random((5, 7, 90, 77)).astype(np.float32)
    grid = SliceGrid((90, 77), (0.7, 0.9), size=64, target_spacing=1.7)
    whole = grid.to_model(vol)
    np.testing.assert_array_equal(whole[3, 4], grid.to_model(vol[3, 4]))
    back = grid.from_model(whole)
    np.testing.assert_array_equal(back[2, 6], grid.from_model(whole[2, 6]))


def test_non_finite_data_and_other_orders_use_scipy():
    grid = SliceGrid((40, 30), (1.0, 1.0), size=32, target_spacing=1.5)
    x = np.random.default_rng(2).random((40, 30)).astype(np.float32)
    x[10, 10] = np.nan
    step, offset = grid._model_to_original()
    ref = _scipy_resample(x, grid.model_shape, step, offset, grid._inside(True), 1, -1.0, True)
    np.testing.assert_array_equal(np.isnan(grid.to_model(x)), np.isnan(ref))
    labels = (np.random.default_rng(3).random((40, 30)) > 0.5).astype(np.uint8)
    nearest = grid.to_model(labels, order=0)
    assert nearest.dtype == np.uint8 and set(np.unique(nearest)) <= {0, 1}


def test_preprocess_volume_still_exact_at_the_clip_values():
    rng = np.random.default_rng(4)
    vol = rng.random((3, 50, 60)).astype(np.float32)
    out, grid = pp.preprocess_volume(vol, (1.0, 1.0), PreprocessConfig(1.0, 64))
    assert out.min() == -1.0 and out.max() == 1.0 and out.dtype == np.float32


def test_the_predict_path_does_not_import_scipy(modules_loaded_by):
    loaded = modules_loaded_by(
        "import numpy as np\n"
        "from napari_sdnet.preprocess import preprocess_volume, restore_probabilities\n"
        "s, g = preprocess_volume(np.random.rand(2, 40, 40), (1.5, 1.5))\n"
        "restore_probabilities(np.clip(s, 0, 1), g)"
    )
    assert "scipy" not in loaded and "scipy.ndimage" not in loaded
    assert "torch" not in loaded


# ---------------------------------------------------------------------------- the CLI


def test_cli_predict_precision(tiny_model_file, tmp_path, capsys):
    import nibabel as nib

    from napari_sdnet.cli import main
    from napari_sdnet.phantom import write_phantom_nifti

    image, _ = write_phantom_nifti(tmp_path, n_frames=2, n_slices=3)
    outs = {}
    for precision in ("fp32", "bf16", "auto"):
        out = tmp_path / f"mask_{precision}.nii.gz"
        argv = ["predict", str(image), "-o", str(out), "--model", tiny_model_file,
                "--device", "cpu", "--precision", precision]  # fmt: skip
        assert main(argv) == 0, capsys.readouterr().err
        outs[precision] = np.asarray(nib.load(out).dataobj)
    assert outs["fp32"].shape == outs["bf16"].shape == nib.load(image).shape
    with pytest.raises(SystemExit):
        main(["predict", str(image), "-o", str(tmp_path / "x.nii.gz"), "--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err
