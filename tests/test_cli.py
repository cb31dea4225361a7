"""The ``napari-sdnet`` command line (data commands; model commands have their own tests)."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import pytest

from napari_sdnet.cli import main


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "view" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0


def test_parsing_loads_no_heavy_module_and_offers_the_library_choices(modules_loaded_by):
    # `napari-sdnet <cmd> --help` and argument errors must not wait for PyTorch or napari;
    # the choices it offers are the ones the library checks (napari_sdnet.choices)
    loaded = modules_loaded_by("import napari_sdnet.cli as c; c.build_parser()")
    assert not {m.split(".")[0] for m in loaded} & {"torch", "napari", "qtpy"}
    from napari_sdnet import choices
    from napari_sdnet.model import PRESETS
    from napari_sdnet.training import checkpoint, config, recipe

    assert tuple(PRESETS) == choices.PRESET_NAMES
    assert config.MODEL_TYPES is checkpoint.MODEL_TYPES is choices.MODEL_TYPES
    assert config.LR_SCHEDULES is choices.LR_SCHEDULES
    assert recipe.LABELLED_BY is choices.LABELLED_BY
    with pytest.raises(SystemExit):
        main(["train", "--data", ".", "--lr-schedule", "step"])


def test_phantom_command_writes_readable_nifti(tmp_path, capsys):
    assert main(["phantom", "-o", str(tmp_path), "--frames", "3", "--slices", "2",
                 "--size", "48"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out
    images = sorted(tmp_path.glob("*.nii.gz"))
    assert len(images) == 2
    for path in images:
        assert nib.load(path).shape == (48, 48, 2, 3)


def test_bad_input_is_one_line_error(tmp_path, capsys):
    code = main(["phantom", "-o", str(tmp_path), "--size", "3"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("napari-sdnet phantom: error:")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_view_screenshot_runs_the_main_job(tmp_path):
    """`napari-sdnet view --screenshot` opens napari with the sample study (under Xvfb here)."""
    png = tmp_path / "demo.png"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_sdnet.cli", "view", "--screenshot", str(png)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    from skimage.io import imread

    shot = imread(png)
    assert shot.ndim == 3 and shot.shape[0] > 300 and shot.shape[1] > 300
    assert shot[..., :3].std() > 10  # a real picture, not a blank window
