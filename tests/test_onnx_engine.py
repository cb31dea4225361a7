"""The ONNX Runtime engine of ``predict`` (``napari_sdnet.onnx_engine``): export and cache,
the engine rule, agreement with the torch fp32 path, and no torch import when cached."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from napari_sdnet import onnx_engine  # noqa: E402
from napari_sdnet.cli import main  # noqa: E402
from napari_sdnet.errors import InputError  # noqa: E402
from napari_sdnet.models import Model, bundled_model_path, load_model  # noqa: E402
from napari_sdnet.onnx_engine import OnnxModel, load_predictor  # noqa: E402
from napari_sdnet.segmentation import segment  # noqa: E402
from napari_sdnet.training.losses import hard_dice  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder of this test's own."""
    monkeypatch.setenv("SDNET_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@pytest.fixture(scope="module")
def folded_model_file(tmp_path_factory) -> str:
    """A tiny model whose BatchNorm statistics are not the identity (so folding matters)."""
    import torch

    from napari_sdnet.model import SDNet

    torch.manual_seed(1)
    net = SDNet("tiny").eval()
    with torch.no_grad():
        for name, value in net.state_dict().items():
            if name.endswith("running_mean"):
                value.uniform_(-0.3, 0.3)
            elif name.endswith("running_var"):
                value.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("folded") / "folded.safetensors"
    Model.from_network(net).save(path)
    return str(path)


def _phantom(n: int = 6, size: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    ring = np.abs(np.hypot(yy - size / 2, xx - size / 2) - size / 5) < 4
    return (ring * 300.0 + rng.normal(100, 20, (n, size, size))).astype(np.float32)


# ------------------------------------------------------------------------- export and cache
def test_the_export_is_cached_and_reused(folded_model_file, cache, monkeypatch):
    first = load_predictor(folded_model_file, "cpu", engine="onnx")
    assert isinstance(first, OnnxModel)
    assert first.onnx_path == onnx_engine.cache_path(folded_model_file)
    assert first.onnx_path.parent == cache and first.onnx_path.is_file()
    assert first.config.name == "tiny" and first.preprocess.size == 64

    def no_export(model):
        raise AssertionError("exported again although the cache holds the graph")

    monkeypatch.setattr(onnx_engine, "export_mask_onnx", no_export)
    again = load_predictor(folded_model_file, "cpu", engine="auto")
    assert isinstance(again, OnnxModel) and again.onnx_path == first.onnx_path
    assert list(cache.iterdir()) == [first.onnx_path]  # no temporary file left behind


def test_the_key_is_the_model_files_bytes(folded_model_file, tiny_model_file, tmp_path, cache):
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(Path(folded_model_file).read_bytes())
    assert onnx_engine.cache_path(copy) == onnx_engine.cache_path(folded_model_file)
    assert onnx_engine.cache_path(tiny_model_file) != onnx_engine.cache_path(copy)


def test_a_corrupt_cache_file_is_exported_again(folded_model_file, cache):
    path = onnx_engine.cache_path(folded_model_file)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x08\x07 not an onnx graph")
    model = load_predictor(folded_model_file, "cpu", engine="auto")
    assert isinstance(model, OnnxModel) and model.onnx_path == path
    assert path.stat().st_size > 10_000  # the real graph replaced the junk
    seg = segment(model, _phantom(2), (1.5, 1.5), latents=False)
    assert seg.mask.shape == (2, 80, 80)


def test_an_unwritable_cache_means_torch(folded_model_file, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SDNET_CACHE_DIR", str(blocker))  # <file>/onnx cannot be created
    auto = load_predictor(folded_model_file, "cpu", engine="auto")
    assert isinstance(auto, Model)  # no error, torch
    explicit = load_predictor(folded_model_file, "cpu", engine="onnx")
    assert isinstance(explicit, OnnxModel) and explicit.onnx_path is None  # from memory
    seg = segment(explicit, _phantom(2), (1.5, 1.5), latents=False)
    assert seg.precision == "fp32"


def test_a_failed_export_means_torch_or_a_clear_error(folded_model_file, cache, monkeypatch):
    def broken(model):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(onnx_engine, "export_mask_onnx", broken)
    with pytest.warns(UserWarning, match="unsupported operator"):
        assert isinstance(load_predictor(folded_model_file, "cpu", engine="auto"), Model)
    with pytest.raises(InputError, match="unsupported operator.*--engine torch"):
        load_predictor(folded_model_file, "cpu", engine="onnx")
    with pytest.raises(InputError, match="threads"):
        load_predictor(folded_model_file, "cpu", engine="onnx", threads=0)


def test_a_bad_model_file_keeps_its_error(tmp_path, cache):
    from napari_sdnet.errors import CheckpointError

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk" * 100)
    with pytest.raises(CheckpointError, match="not a napari-sdnet model"):
        load_predictor(junk, "cpu", engine="onnx")
    with pytest.raises(CheckpointError, match="not found"):
        load_predictor(tmp_path / "missing.safetensors", "cpu", engine="auto")
    assert not cache.exists() or not any(cache.iterdir())


# ------------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("fixture", ["folded_model_file", "three_model_file"])
def test_masks_agree_with_the_torch_fp32_path(fixture, request, cache):
    path = request.getfixturevalue(fixture)
    image = _phantom(5)
    ort = segment(load_predictor(path, "cpu", engine="onnx"), image, (1.5, 1.5), latents=False)
    ref = segment(load_model(path, "cpu"), image, (1.5, 1.5), precision="fp32", latents=False)
    assert ort.precision == "fp32"
    np.testing.assert_allclose(ort.model_mask, ref.model_mask, atol=1e-4)
    np.testing.assert_allclose(ort.probability, ref.probability, atol=1e-4)
    assert ort.structures == ref.structures
    assert (ort.labels() != ref.labels()).mean() < 1e-3


def test_onnx_masks_agree_with_torch_fp32_on_the_sample_study(cache):
    """The bundled model on the real 240-slice sample study: ONNX Runtime fp32 and the torch
    fp32 path give the same labels (Dice >= 0.999, < 0.01 % of the pixels differ)."""
    from napari_sdnet.io.nifti import read_nifti
    from napari_sdnet.sample import sunnybrook_study

    if not bundled_model_path().is_file():
        pytest.skip("the bundled model is not installed")
    vol = read_nifti(sunnybrook_study().image)
    ort = segment(load_predictor("bundled", "cpu", engine="onnx"), vol.data, vol.geometry.spacing,
                  latents=False)  # fmt: skip
    torch_model = load_model("bundled", "cpu")
    ref = segment(torch_model, vol.data, vol.geometry.spacing, precision="fp32", latents=False)
    assert hard_dice(ort.mask.astype(bool), ref.mask.astype(bool)) >= 0.999
    assert (ort.mask != ref.mask).mean() < 1e-4
    assert np.abs(ort.model_mask - ref.model_mask).max() < 1e-3


# ------------------------------------------------------------------------------ the rule
def test_the_engine_rule(monkeypatch):
    choose = onnx_engine.choose_engine
    monkeypatch.setattr(onnx_engine, "_gpu_visible", lambda: False)
    assert choose("auto", device="cpu") == "onnx"
    assert choose("auto", device="auto") == "onnx"
    assert choose("auto", device="cpu", precision="fp32") == "onnx"
    assert choose("torch", device="cpu") == "torch"
    # Z or a reconstruction, a GPU, bf16/fp16: torch
    assert choose("auto", device="cpu", outputs=("mask", "z")) == "torch"
    assert choose("auto", device="cuda") == "torch"
    assert choose("auto", device="cpu", precision="bf16") == "torch"
    monkeypatch.setattr(onnx_engine, "_gpu_visible", lambda: True)
    assert choose("auto", device="auto") == "torch"
    assert choose("auto", device="cpu") == "onnx"
    with pytest.raises(InputError, match="masks only"):
        choose("onnx", device="cpu", outputs=("mask", "z"))
    with pytest.raises(InputError, match="fp32 only"):
        choose("onnx", device="cpu", precision="bf16")
    with pytest.raises(InputError, match="CPU only"):
        choose("onnx", device="cuda")
    with pytest.raises(InputError, match="unknown engine"):
        choose("tensorrt")


def test_an_onnx_model_refuses_latents(folded_model_file, cache):
    model = load_predictor(folded_model_file, "cpu", engine="onnx")
    with pytest.raises(InputError, match="masks only"):
        segment(model, _phantom(1), (1.5, 1.5))  # latents=True is the default
    with pytest.raises(InputError, match="fp32"):
        segment(model, _phantom(1), (1.5, 1.5), latents=False, precision="bf16")


def test_a_reconstruction_runs_on_torch(folded_model_file, cache, tmp_path, capsys):
    model = load_predictor(folded_model_file, "cpu", engine="auto", outputs=("mask", "z"))
    assert isinstance(model, Model)
    image = tmp_path / "image.nii.gz"
    _write(image, _phantom(3))
    out, recon = tmp_path / "mask.nii.gz", tmp_path / "recon.nii.gz"
    argv = ["predict", str(image), "-o", str(out), "--model", folded_model_file]
    assert main([*argv, "--reconstruction", str(recon)]) == 0
    assert out.is_file() and recon.is_file()
    assert not cache.exists()  # the torch engine exports nothing
    assert main([*argv, "--reconstruction", str(recon), "--engine", "onnx", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--engine onnx cannot be used" in err and "--reconstruction" in err
    assert len(err.splitlines()) == 1


def test_engine_onnx_without_onnxruntime_is_a_clear_error(
    folded_model_file, cache, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    image = tmp_path / "image.nii.gz"
    _write(image, _phantom(2))
    out = tmp_path / "mask.nii.gz"
    argv = ["predict", str(image), "-o", str(out), "--model", folded_model_file]
    assert main([*argv, "--engine", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs the onnxruntime package" in err, err
    assert not out.exists()
    # auto quietly uses torch
    assert isinstance(load_predictor(folded_model_file, "cpu", engine="auto"), Model)
    assert main([*argv, "--engine", "auto"]) == 0 and out.is_file()


def _write(path: Path, data: np.ndarray) -> None:
    from napari_sdnet.io.nifti import Geometry, write_nifti

    write_nifti(path, data, Geometry.from_scale((8.0, 1.5, 1.5), shape=data.shape))


# ------------------------------------------------------------------- no torch when cached
def test_predict_does_not_import_torch_once_cached(folded_model_file, cache, tmp_path):
    """``napari-sdnet predict`` in a fresh interpreter: the first run exports (torch), the
    second runs on the cached graph without importing torch, and both write the same mask."""
    image = tmp_path / "image.nii.gz"
    _write(image, _phantom(4))
    modules = {}
    masks = {}
    for run in ("first", "second"):
        out = tmp_path / f"{run}.nii.gz"
        script = (
            "import json, sys\n"
            "from napari_sdnet.cli import main\n"
            f"rc = main(['predict', {str(image)!r}, '-o', {str(out)!r}, '--model', "
            f"{folded_model_file!r}, '--device', 'cpu'])\n"
            "print(json.dumps([rc, sorted(sys.modules)]))\n"
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        rc, names = json.loads(done.stdout.splitlines()[-1])
        assert rc == 0, done.stderr
        modules[run] = set(names)
        from napari_sdnet.io.nifti import read_nifti

        masks[run] = read_nifti(out).data
    assert "torch" in modules["first"]  # the export needs it
    assert "torch" not in modules["second"], sorted(m for m in modules["second"] if "torch" in m)
    assert "onnxruntime" in modules["second"]
    np.testing.assert_array_equal(masks["first"], masks["second"])
