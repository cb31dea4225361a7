"""npe2 sample data: the bundled Sunnybrook cine study and a synthetic phantom."""

from __future__ import annotations

from typing import Any

from napari_sdnet._napari._reader import read_layers

LayerData = tuple[Any, dict[str, Any], str]


def sunnybrook_sample() -> list[LayerData]:
    """Sunnybrook SC-HF-I-1 (CC0): 4D cine (20 phases x 12 slices) and its expert contours.

    The contours (2 myocardium, 3 LV cavity) exist on two phases only; elsewhere 0 means
    unlabelled.
    """
    from napari_sdnet.sample import sunnybrook_study

    study = sunnybrook_study()
    image, labels = read_layers([str(study.image), str(study.labels)])
    image[1]["name"] = "SC-HF-I-1 cine"
    labels[1]["name"] = "SC-HF-I-1 expert contours"
    labels[1]["opacity"] = 0.5
    return [image, labels]


def phantom_sample() -> list[LayerData]:
    """A synthetic short-axis cine phantom (8 phases x 6 slices, 128 x 128) and its labels.

    For trying the plugin out and for tests; it proves nothing about real segmentation quality.
    """
    from napari_sdnet._napari._layers import structure_style
    from napari_sdnet._napari._reader import _AXIS_LABELS, _axis_units, robust_contrast_limits
    from napari_sdnet.io.nifti import Geometry
    from napari_sdnet.phantom import make_cine_phantom

    phantom = make_cine_phantom()
    geometry = Geometry(
        affine=phantom.affine,
        spacing=tuple(float(s) for s in phantom.spacing),
        file_shape=tuple(reversed(phantom.image.shape)),
        time_unit="msec",
    )
    meta = {"sdnet_geometry": geometry.to_metadata(), "source_path": None}
    common = {
        "scale": list(phantom.spacing),
        "metadata": meta,
        "axis_labels": _AXIS_LABELS[phantom.image.ndim],
        "units": _axis_units(phantom.image.ndim, "msec"),
    }
    return [
        (
            phantom.image,
            {
                **common,
                "name": "phantom cine",
                "colormap": "gray",
                "contrast_limits": robust_contrast_limits(phantom.image),
            },
            "image",
        ),
        (
            phantom.labels,
            {**common, "name": "phantom labels", "opacity": 0.5, **structure_style("expert")},
            "labels",
        ),
    ]
