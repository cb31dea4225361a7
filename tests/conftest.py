"""Shared fixtures.

Real data lives beside the project in ``../shared/data`` (never inside the repository). Tests
that need it use the ``shared_data`` fixture and skip cleanly when it is absent, e.g. in a
user's fresh clone. ``SDNET_SHARED_DATA`` points elsewhere if needed.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("SDNET_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set SDNET_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def acdc_nifti(shared_data: Path) -> Path:
    path = shared_data / "acdc_nifti"
    if not path.is_dir():
        pytest.skip(f"ACDC NIfTI patients not found at {path}")
    return path


@pytest.fixture(scope="session")
def acdc_h5(shared_data: Path) -> Path:
    path = shared_data / "acdc_h5"
    if not path.is_dir():
        pytest.skip(f"ACDC H5 layout not found at {path}")
    return path


@pytest.fixture(scope="session")
def sunnybrook(shared_data: Path) -> Path:
    path = shared_data / "sunnybrook"
    if not path.is_dir():
        pytest.skip(f"Sunnybrook study not found at {path}")
    return path


# Tests run tiny models: one PyTorch thread. With one thread per core (PyTorch's default), a
# tiny training step became 30-50x slower whenever another process kept a core busy (Xvfb, a
# CLI subprocess, a second job), which is normal during a test run on 2 cores. The environment
# variable reaches the CLI subprocesses that some tests start.
os.environ["OMP_NUM_THREADS"] = "1"
# The ONNX Runtime engine of `predict` caches exported graphs: keep the tests' out of the
# user's ~/.cache (the variable reaches the CLI subprocesses too).
os.environ["SDNET_CACHE_DIR"] = tempfile.mkdtemp(prefix="sdnet-test-cache-")
atexit.register(shutil.rmtree, os.environ["SDNET_CACHE_DIR"], True)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> str:
    """An untrained ``tiny`` SDNet checkpoint (widget and CLI tests)."""
    import torch

    from napari_sdnet import api
    from napari_sdnet.model import SDNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    api.Model.from_network(SDNet("tiny").eval()).save(path)
    return str(path)


@pytest.fixture(scope="session")
def three_model_file(tmp_path_factory) -> str:
    """An untrained ``tiny`` SDNet of three structures (RV cavity, myocardium, LV cavity)."""
    import torch

    from napari_sdnet import api
    from napari_sdnet.model import SDNet, get_preset

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("three") / "three.safetensors"
    net = SDNet(get_preset("tiny").replace(structures=("rv", "myocardium", "lv"))).eval()
    api.Model.from_network(net).save(path)
    return str(path)


def write_phantom_acdc(root: Path, n_patients: int = 4) -> None:
    """Phantom patients in the ACDC NIfTI layout: patientNNN/patientNNN_frame01/_frame05."""
    import nibabel as nib
    import numpy as np

    from napari_sdnet.phantom import make_phantom_volume

    for p in range(1, n_patients + 1):
        folder = root / f"patient{p:03d}"
        folder.mkdir(parents=True)
        for frame, phase in ((1, 0.0), (5, 0.5)):
            vol = make_phantom_volume(
                phase=phase, n_slices=3, shape=(96, 96), spacing=(2.0, 2.0), seed=p
            )
            affine = np.diag([2.0, 2.0, 10.0, 1.0])
            stem = folder / f"patient{p:03d}_frame{frame:02d}"
            for arr, suffix in ((vol.image.astype(np.float32), ""), (vol.labels, "_gt")):
                img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), affine)
                nib.save(img, f"{stem}{suffix}.nii.gz")


@pytest.fixture(scope="session")
def phantom_acdc(tmp_path_factory) -> Path:
    """Four phantom patients (ED + ES, 3 slices each) in the ACDC NIfTI layout."""
    root = tmp_path_factory.mktemp("phantom_acdc")
    write_phantom_acdc(root)
    return root


@pytest.fixture
def small_mount(tmp_path):
    """``small_mount(options)``: a fresh tmpfs mounted in ``tmp_path`` (e.g. ``"ro"``, or
    ``"size=64k"`` for a disk that fills up); skips where mounting is not allowed."""
    mounted: list[Path] = []

    def make(options: str) -> Path:
        point = tmp_path / f"mount{len(mounted)}"
        point.mkdir()
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()[:80]})")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", str(point)], capture_output=True)


@pytest.fixture
def modules_loaded_by() -> Callable[[str], set[str]]:
    """``modules_loaded_by("import x; ...")``: the names in ``sys.modules`` after running that
    code in a fresh interpreter (what an import or a command really pulls in)."""

    def run(code: str) -> set[str]:
        script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return set(json.loads(out.stdout.splitlines()[-1]))

    return run
