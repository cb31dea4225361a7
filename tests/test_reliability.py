"""Never lose a user's work, never save a broken model (docs/reliability.md).

Each test is one bad input or fault from the reliability catalogue, run through the command
line as a user would (in-process ``main``, or a real subprocess where a signal is involved):
a one-line message, the right exit status, nothing broken written, nothing left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_sdnet import api
from napari_sdnet.cli import main
from napari_sdnet.errors import InputError, TrainingError
from napari_sdnet.model import SDNet
from napari_sdnet.phantom import write_phantom_nifti
from napari_sdnet.training.checkpoint import read_checkpoint_info, train_state_path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    torch.manual_seed(0)
    model = root / "tiny.safetensors"
    api.Model.from_network(SDNet("tiny").eval()).save(model)
    image, labels = write_phantom_nifti(
        root / "cine", n_frames=1, n_slices=3, shape=(64, 64), spacing=(1.5, 1.5)
    )
    return {"root": root, "model": model, "image": image, "labels": labels}


def _one_line_error(capsys, command: str, match: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if f"napari-sdnet {command}:" in line]
    assert lines and lines[-1].startswith(f"napari-sdnet {command}: error:"), err
    assert __import__("re").search(match, lines[-1]), lines[-1]
    return lines[-1]


def _train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--data", str(data), "--preset", "tiny", "--labelled", "4", "--device", "cpu",
        "--threads", "1", "-o", str(out), *extra,
    ]  # fmt: skip


# ------------------------------------------------------------- 1. destinations checked first
def test_unwritable_destinations_fail_before_any_work(files, phantom_acdc, small_mount, capsys):
    readonly = small_mount("ro")
    start = time.perf_counter()
    assert main(_train_argv(phantom_acdc, readonly / "m.safetensors", "--iterations", "50")) == 2
    _one_line_error(capsys, "train", "permission denied|Read-only")
    argv = ["finetune", "--model", str(files["model"]), "--image", str(files["image"])]
    argv += [
        "--labels",
        str(files["labels"]),
        "--steps",
        "50",
        "-o",
        str(readonly / "f.safetensors"),
    ]
    assert main(argv) == 2
    _one_line_error(capsys, "finetune", "permission denied|Read-only")
    argv = ["evaluate", "--data", str(files["image"]), "--model", str(files["model"])]
    assert main([*argv, "--json", str(readonly / "r.json")]) == 2
    _one_line_error(capsys, "evaluate", "permission denied|Read-only")
    argv = ["predict", str(files["image"]), "--model", str(files["model"])]
    assert main([*argv, "-o", str(readonly / "m.nii.gz")]) == 2
    _one_line_error(capsys, "predict", "permission denied|Read-only")
    # refused at once: no data was loaded, nothing trained
    assert time.perf_counter() - start < 20


def test_a_full_disk_at_the_end_of_training_rescues_the_model(
    phantom_acdc, small_mount, tmp_path, monkeypatch, capsys
):
    full = small_mount("size=64k")  # the tiny model's file is larger than this
    rescue = tmp_path / "rescue"
    monkeypatch.setenv("SDNET_RESCUE_DIR", str(rescue))
    out = full / "m.safetensors"
    assert main(_train_argv(phantom_acdc, out, "--iterations", "2")) == 2
    line = _one_line_error(capsys, "train", "No space left on device.*saved to")
    saved = list(rescue.iterdir())
    assert len(saved) == 1 and str(saved[0]) in line
    assert read_checkpoint_info(saved[0]).training["iterations"] == 2
    assert list(full.iterdir()) == []  # no half-written file, no temporary file


def test_evaluate_json_on_a_full_disk_is_rescued(files, small_mount, tmp_path, monkeypatch, capsys):
    full = small_mount("size=8k")
    try:  # the disk fills up after the checks
        with open(full / "filler", "wb") as handle:
            while True:
                handle.write(b"0" * 1024)
                handle.flush()
    except OSError:
        pass
    monkeypatch.setenv("SDNET_RESCUE_DIR", str(tmp_path / "rescue"))
    monkeypatch.setattr("napari_sdnet.io.files._probe", lambda folder: None)
    argv = ["evaluate", "--data", str(files["image"]), "--model", str(files["model"])]
    code = main([*argv, "--json", str(full / "r.json")])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err and "mean myocardium Dice" in captured.out
    (saved,) = (tmp_path / "rescue").iterdir()
    assert str(saved) in captured.err and json.loads(saved.read_text())["per_volume"]


# ------------------------------------------------------------- 2. SIGTERM is an interruption
def test_sigterm_during_training_saves_the_best_and_a_resumable_state(phantom_acdc, tmp_path):
    out = tmp_path / "m.safetensors"
    argv = _train_argv(phantom_acdc, out, "--iterations", "100000", "--patience", "0")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_sdnet.cli", *argv],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    # wait until the data are loaded and a few iterations have run
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("data:"):
            break
    time.sleep(3.0)
    proc.send_signal(signal.SIGTERM)
    out_text, rest = proc.communicate(timeout=120)
    err = "".join(lines) + rest
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "stop: terminated" in err and "--resume" in err
    assert out.is_file() and train_state_path(out).is_file()
    done = read_checkpoint_info(out).training["iterations"]
    assert done >= 1 and read_checkpoint_info(out).training["stop_reason"] == "terminated"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, train_state_path(out).name]
    )
    # and it continues where it stopped
    assert main(_train_argv(phantom_acdc, out, "--iterations", str(done + 2), "--resume")) == 0
    info = read_checkpoint_info(out)
    assert info.training["iterations"] == done + 2
    assert info.training["resumed_from_iteration"] == done
    assert not train_state_path(out).exists()


def test_sigterm_while_writing_leaves_no_temporary_file(files, tmp_path, monkeypatch, capsys):
    """SIGTERM arrives while the mask is half written: status 143, no file, no temp file."""
    real_save = nib.save

    def save_then_killed(img, filename):
        real_save(img, filename)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises in this thread
        time.sleep(5)  # not reached

    monkeypatch.setattr(nib, "save", save_then_killed)
    out = tmp_path / "mask.nii.gz"
    argv = ["predict", str(files["image"]), "--model", str(files["model"]), "-o", str(out)]
    assert main(argv) == 143
    err = capsys.readouterr().err
    assert "terminated" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is not None  # handlers restored after the command


# ------------------------------------------------------------- 3. nothing broken saved or used
def test_a_model_with_nan_weights_is_refused(files, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    state = load_file(str(files["model"]))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 8)
    state[key][0] = float("nan")
    with safe_open(str(files["model"]), framework="pt") as handle:
        metadata = handle.metadata()
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken), metadata=metadata)
    out = tmp_path / "m.nii.gz"
    assert main(["predict", str(files["image"]), "--model", str(broken), "-o", str(out)]) == 2
    _one_line_error(capsys, "predict", "NaN or infinite")
    assert not out.exists()


def test_finetune_with_a_ruinous_rate_saves_nothing(files, tmp_path, capsys):
    out = tmp_path / "f.safetensors"
    argv = ["finetune", "--model", str(files["model"]), "--image", str(files["image"])]
    argv += ["--labels", str(files["labels"]), "--steps", "5", "--lr", "1e6", "-o", str(out)]
    assert main(argv) == 2
    _one_line_error(capsys, "finetune", "diverged|NaN|worse")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_finetune_refuses_a_result_worse_than_its_start(files, monkeypatch):
    """A model that segments the painted slices well and is ruined by fine-tuning (finite
    but broken weights) is refused."""
    from napari_sdnet import finetuning

    scores = iter([0.8, 0.1])
    monkeypatch.setattr(finetuning, "_painted_dice", lambda network, data: next(scores))
    model = api.load_model(files["model"], "cpu")
    image = nib.load(files["image"]).get_fdata().T
    labels = np.asarray(nib.load(files["labels"]).dataobj).T
    with pytest.raises(TrainingError, match="worse on the painted slices.*0.800 -> 0.100"):
        api.run(api.finetune(model, image, labels, (8.0, 1.5, 1.5), steps=2))


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("--lr", "nan", "learning rate"),
        ("--lr=-1e-3", None, "learning rate"),
        ("--lr", "0", "learning rate"),
        ("--lr", "inf", "learning rate"),
        ("--iterations", "0", "iterations"),
        ("--epochs=-3", None, "epochs"),
        ("--seconds", "0", "seconds"),
        ("--seconds", "nan", "seconds"),
    ],
)
def test_train_checks_its_numbers_up_front(phantom_acdc, tmp_path, capsys, option, value, match):
    out = tmp_path / "m.safetensors"
    extra = [option] if value is None else [option, value]
    assert main(_train_argv(phantom_acdc, out, *extra)) == 2
    _one_line_error(capsys, "train", match)
    assert not out.exists()


# ------------------------------------------------------------- 4. honest records
def test_finetuning_a_unet_keeps_it_a_unet(files, tmp_path):
    torch.manual_seed(1)
    unet_file = tmp_path / "unet.safetensors"
    from napari_sdnet.training.checkpoint import CheckpointInfo

    net = SDNet("tiny").eval()
    api.Model.from_network(net, CheckpointInfo.for_model(net.config, model_type="unet")).save(
        unet_file
    )
    with pytest.warns(UserWarning, match="reconstructor was never trained"):
        base = api.load_model(unet_file, "cpu")
    image = nib.load(files["image"]).get_fdata().T
    labels = np.asarray(nib.load(files["labels"]).dataobj).T
    new = api.run(api.finetune(base, image, labels, (8.0, 1.5, 1.5), steps=2))
    assert new.model_type == "unet" and not new.has_trained_reconstructor
    saved = new.save(tmp_path / "f.safetensors")
    with pytest.warns(UserWarning, match="reconstructor was never trained"):
        api.load_model(saved, "cpu")


# ------------------------------------------------------------- 5. files for colleagues
def test_outputs_follow_the_umask(files, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        out = tmp_path / "f.safetensors"
        argv = ["finetune", "--model", str(files["model"]), "--image", str(files["image"])]
        assert main([*argv, "--labels", str(files["labels"]), "--steps", "2", "-o", str(out)]) == 0
        report = tmp_path / "r.json"
        argv = ["evaluate", "--data", str(files["image"]), "--model", str(files["model"])]
        assert main([*argv, "--json", str(report)]) == 0
        mask = tmp_path / "m.nii.gz"
        assert (
            main(["predict", str(files["image"]), "--model", str(files["model"]), "-o", str(mask)])
            == 0
        )
    finally:
        os.umask(old)
    for path in (out, report, mask):
        assert path.stat().st_mode & 0o777 == 0o644, path


# ------------------------------------------------------------- 6. messages that say what is wrong
def test_unreadable_file_says_permission_denied(files, tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked.nii.gz"
    locked.write_bytes(Path(files["image"]).read_bytes())
    locked.chmod(0o000)
    if os.access(locked, os.R_OK):  # root reads anything: make the read fail as it would

        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(locked))

        monkeypatch.setattr(nib, "load", denied)
    out = tmp_path / "m.nii.gz"
    assert main(["predict", str(locked), "--model", str(files["model"]), "-o", str(out)]) == 2
    _one_line_error(capsys, "predict", "permission denied")


def test_a_tiny_spacing_warns_before_an_empty_mask(files):
    model = api.load_model(files["model"], "cpu")
    image = np.random.default_rng(0).normal(size=(2, 256, 256)).astype(np.float32)
    with pytest.warns(UserWarning, match="covers only 26 x 26 mm.*check the spacing"):
        api.segment(model, image, (10.0, 0.1, 0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api.segment(model, image, (10.0, 1.4, 1.4))


def test_an_image_that_looks_like_labels_can_be_segmented(files, tmp_path, capsys):
    raw = np.asarray(nib.load(files["image"]).get_fdata())
    grey = np.round(15 * (raw - raw.min()) / np.ptp(raw)).astype(np.uint8)  # 16 grey levels
    assert len(np.unique(grey)) <= 32
    path = tmp_path / "lowbit.nii.gz"
    nib.save(nib.Nifti1Image(grey, np.diag([1.5, 1.5, 8.0, 1.0])), path)
    out = tmp_path / "m.nii.gz"
    argv = ["predict", str(path), "--model", str(files["model"]), "-o", str(out)]
    assert main(argv) == 2
    _one_line_error(capsys, "predict", "looks like a label map.*--as-image")
    assert main([*argv, "--as-image"]) == 0 and out.is_file()


def test_float64_beyond_float32_is_reported_as_such(files, tmp_path, capsys):
    data = np.random.default_rng(0).normal(size=(32, 32, 2)) * 1e300
    path = tmp_path / "huge.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float64), np.eye(4)), path)
    out = tmp_path / "m.nii.gz"
    assert main(["predict", str(path), "--model", str(files["model"]), "-o", str(out)]) == 2
    _one_line_error(capsys, "predict", "do not fit in float32")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: api.segment(m, [np.zeros((8, 8)), np.zeros((9, 9))]), "ragged"),
        (lambda m: api.segment(m, None), "no image"),
        (lambda m: api.load_model(None), "load_model needs"),
        (lambda m: api.evaluate(m, None), "evaluate needs a dataset"),
        (lambda m: api.evaluate(m, 3), "evaluate needs a dataset"),
    ],
)
def test_api_misuse_raises_the_documented_error(files, call, match):
    model = api.load_model(files["model"], "cpu")
    with pytest.raises(InputError, match=match):
        call(model)
