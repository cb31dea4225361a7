"""napari-sdnet: SDNet myocardium segmentation for cardiac cine MR, in napari and headless.

The package is layered: ``io``, ``preprocess``, ``phantom``, ``model``, ``training`` and ``api``
are plain NumPy/PyTorch and never import Qt or napari; only ``napari_sdnet._napari`` does.
"""

try:
    from importlib.metadata import version as _version

    __version__ = _version("napari-sdnet")
except Exception:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
