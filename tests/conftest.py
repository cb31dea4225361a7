"""Shared fixtures.

Real data lives beside the project in ``../shared/data`` (never inside the repository). Tests
that need it use the ``shared_data`` fixture and skip cleanly when it is absent, e.g. in a
user's fresh clone. ``SDNET_SHARED_DATA`` points elsewhere if needed.
"""

from __future__ import annotations

import os
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
