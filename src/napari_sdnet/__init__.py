"""napari-sdnet: SDNet myocardium segmentation for cardiac cine MR, in napari and headless.

The package is layered: ``io``, ``preprocess``, ``phantom``, ``model``, ``training`` and ``api``
are plain NumPy/PyTorch and never import Qt or napari; only ``napari_sdnet._napari`` does.
"""

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    # the installed version, looked up on first use: importlib.metadata costs every start-up
    # of the command line ~40 ms, and most commands never print a version
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from importlib.metadata import version

        value = version("napari-sdnet")
    except Exception:  # pragma: no cover - running from a source tree without install
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value
