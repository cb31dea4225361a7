"""The model commands of ``napari-sdnet``: predict, evaluate, finetune, info (tiny preset)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_sdnet import api, models
from napari_sdnet.cli import main
from napari_sdnet.model import SDNet
from napari_sdnet.phantom import make_phantom_volume, write_phantom_nifti


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model file, a 4D phantom (+ labels), a 3D and a 2D image with oblique affines."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = root / "tiny.safetensors"
    api.Model.from_network(SDNet("tiny")).save(model)
    image4, labels4 = write_phantom_nifti(
        root / "cine", n_frames=2, n_slices=3, shape=(37, 53), spacing=(2.0, 1.5)
    )
    vol = make_phantom_volume(n_slices=3, shape=(41, 30), spacing=(1.8, 1.2), seed=4)
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.2, 1.8, 10.0])
    affine[:3, 3] = [12.5, -40.0, 7.0]
    image3 = root / "vol3d.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.image.transpose(2, 1, 0)), affine), image3)
    image2 = root / "slice2d.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.image[1].T), affine), image2)
    return {
        "root": root,
        "model": model,
        "image4": image4,
        "labels4": labels4,
        "image3": image3,
        "image2": image2,
    }


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"napari-sdnet {command}: error:"), err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("which", ["image2", "image3", "image4"])
def test_predict_keeps_shape_and_geometry(files, tmp_path, capsys, which):
    src = files[which]
    out = tmp_path / "mask.nii.gz"
    rec = tmp_path / "rec.nii.gz"
    code = main(
        ["predict", str(src), "-o", str(out), "--model", str(files["model"]),
         "--device", "cpu", "--reconstruction", str(rec)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    img = nib.load(src)
    mask = nib.load(out)
    assert mask.shape == img.shape
    np.testing.assert_allclose(mask.affine, img.affine, atol=1e-6)
    assert mask.header.get_zooms() == pytest.approx(img.header.get_zooms())
    data = np.asarray(mask.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 2}
    r = nib.load(rec)
    assert r.shape == img.shape and r.get_data_dtype() == np.float32
    np.testing.assert_allclose(r.affine, img.affine, atol=1e-6)


def test_predict_matches_the_api(files, tmp_path):
    out = tmp_path / "m.nii.gz"
    assert main(["predict", str(files["image4"]), "-o", str(out), "--model",
                 str(files["model"]), "--binary"]) == 0  # fmt: skip
    from napari_sdnet.io.nifti import read_nifti

    data = np.asarray(nib.load(out).dataobj)
    assert set(np.unique(data)) <= {0, 1}
    from napari_sdnet.onnx_engine import load_predictor

    vol = read_nifti(files["image4"])
    # the model on the engine predict picks (--engine auto: ONNX Runtime fp32 when available)
    model = load_predictor(files["model"], "cpu")
    seg = api.segment(model, vol.data, vol.geometry.spacing, latents=False)
    assert np.array_equal(read_nifti(out).data, seg.mask)


def test_predict_refuses_to_overwrite(files, tmp_path, capsys):
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"keep me")
    args = ["predict", str(files["image3"]), "-o", str(out), "--model", str(files["model"])]
    assert main(args) == 2
    assert "--overwrite" in _one_line_error(capsys, "predict")
    assert out.read_bytes() == b"keep me"
    assert main([*args, "--overwrite"]) == 0
    assert nib.load(out).shape == nib.load(files["image3"]).shape
    capsys.readouterr()  # (this small phantom draws a field-of-view warning)
    # the reconstruction output is checked before any work, too
    rec = tmp_path / "rec.nii.gz"
    rec.write_bytes(b"x")
    out2 = tmp_path / "mask2.nii.gz"
    assert main([*args[:3], str(out2), *args[4:], "--reconstruction", str(rec)]) == 2
    _one_line_error(capsys, "predict")
    assert not out2.exists()


def test_predict_bad_files_are_one_line_errors(files, tmp_path, capsys):
    out = str(tmp_path / "mask.nii.gz")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(np.random.default_rng(0).bytes(3000))
    assert main(["predict", str(corrupt), "-o", out, "--model", str(files["model"])]) == 2
    assert "corrupt.nii.gz" in _one_line_error(capsys, "predict")

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(np.random.default_rng(1).bytes(3000))
    assert main(["predict", str(files["image3"]), "-o", out, "--model", str(junk)]) == 2
    assert "not a napari-sdnet model" in _one_line_error(capsys, "predict")

    pt = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, pt)
    assert main(["predict", str(files["image3"]), "-o", out, "--model", str(pt)]) == 2
    assert ".safetensors" in _one_line_error(capsys, "predict")

    assert main(["predict", str(files["labels4"]), "-o", out, "--model", str(files["model"])]) == 2
    assert "label map" in _one_line_error(capsys, "predict")

    assert main(["predict", str(files["image3"]), "-o", str(tmp_path / "m.png"),
                 "--model", str(files["model"])]) == 2  # fmt: skip
    assert "NIfTI" in _one_line_error(capsys, "predict")
    assert not (tmp_path / "mask.nii.gz").exists()


def test_missing_bundled_model_is_one_line(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models, "bundled_model_path", lambda: tmp_path / "none.safetensors")
    out = str(tmp_path / "mask.nii.gz")
    assert main(["predict", str(files["image3"]), "-o", out]) == 2
    assert "no bundled model is installed yet" in _one_line_error(capsys, "predict")
    assert main(["info", "bundled"]) == 2
    _one_line_error(capsys, "info")


def test_info_prints_the_preset(files, tmp_path, capsys):
    assert main(["info", str(files["model"])]) == 0
    out = capsys.readouterr().out
    assert "preset" in out and "tiny" in out and "model type" in out and "sdnet" in out
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    assert main(["info", str(junk)]) == 2
    _one_line_error(capsys, "info")


def test_evaluate_json(files, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["evaluate", "--data", str(files["image4"]), "--model", str(files["model"]),
                 "--json", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "phantom_4d_t00" in text and "mean myocardium Dice" in text
    data = json.loads(out.read_text())
    assert {"mean_myocardium_dice", "per_volume", "n_volumes", "model", "split"} <= set(data)
    assert data["n_volumes"] == 2 and data["model"] == str(files["model"])
    assert data["model_info"]["preset"] == "tiny"
    assert all({"volume_id", "dice", "n_slices"} <= set(v) for v in data["per_volume"])
    assert main(["evaluate", "--data", str(files["image4"]), "--model", str(files["model"]),
                 "--json", str(out)]) == 2  # fmt: skip
    _one_line_error(capsys, "evaluate")


def test_evaluate_unknown_layout(files, tmp_path, capsys):
    assert main(["evaluate", "--data", str(tmp_path), "--model", str(files["model"])]) == 2
    _one_line_error(capsys, "evaluate")


def test_finetune_writes_a_loadable_model(files, tmp_path, capsys):
    out = tmp_path / "ft.safetensors"
    args = ["finetune", "--model", str(files["model"]), "--image", str(files["image4"]),
            "--labels", str(files["labels4"]), "--steps", "2", "-o", str(out)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    model = api.load_model(out, device="cpu")
    record = model.info.training["finetuned"][-1]
    assert record["steps"] == 2 and record["labelled_slices"] == 6
    assert record["base_model"] == str(files["model"])
    assert record["lr"] == api.FINETUNE_LR  # the widget's and the API's default
    assert record["lr_schedule"] == api.FINETUNE_SCHEDULE == "cosine"
    assert main(args) == 2  # exists
    _one_line_error(capsys, "finetune")
    out2 = tmp_path / "ft_constant.safetensors"
    assert main([*args[:-1], str(out2), "--lr-schedule", "constant"]) == 0
    capsys.readouterr()
    assert api.load_model(out2).info.training["finetuned"][-1]["lr_schedule"] == "constant"
    # without a budget: the API's default step budget, said on stderr
    out3 = tmp_path / "ft_default.safetensors"
    no_budget = [a for a in args if a not in ("--steps", "2")]
    assert main([*no_budget[:-1], str(out3)]) == 0
    assert f"{api.FINETUNE_STEPS} steps" in capsys.readouterr().err
    assert api.load_model(out3).info.training["finetuned"][-1]["steps"] == api.FINETUNE_STEPS
    assert main(["info", str(out)]) == 0
    assert "finetuned" in capsys.readouterr().out


def test_finetune_errors(files, tmp_path, capsys):
    empty = tmp_path / "empty_gt.nii.gz"
    img = nib.load(files["labels4"])
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header), empty)
    base = ["finetune", "--model", str(files["model"]), "--image", str(files["image4"]),
            "--steps", "1"]  # fmt: skip
    assert main([*base, "--labels", str(empty), "-o", str(tmp_path / "a.safetensors")]) == 2
    assert "label 2" in _one_line_error(capsys, "finetune")
    assert main([*base, "--labels", str(files["labels4"]), "-o", str(tmp_path / "a.pt")]) == 2
    assert ".safetensors" in _one_line_error(capsys, "finetune")
    other = tmp_path / "other_gt.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 3, 2), np.uint8), img.affine), other)
    assert main([*base, "--labels", str(other), "-o", str(tmp_path / "b.safetensors")]) == 2
    assert "shape" in _one_line_error(capsys, "finetune")
    assert not list(tmp_path.glob("*.safetensors"))
