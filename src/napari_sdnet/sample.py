"""Paths of the sample data bundled with the package (no napari needed).

The sample study is a heart-centred crop of the public-domain Sunnybrook SC-HF-I-1 cine series;
see ``napari_sdnet/data/README.md`` for its provenance, licence (CC0) and citation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

_STEM = "sunnybrook_sc-hf-i-1"


@dataclass(frozen=True)
class SampleStudy:
    """File paths of the bundled sample study."""

    image: Path
    labels: Path
    labelled_json: Path

    def labelled_frames(self) -> list[tuple[int, int]]:
        """The ``(z, t)`` pairs whose myocardium is contoured (other frames are unlabelled)."""
        info = json.loads(self.labelled_json.read_text())
        return [(int(z), int(t)) for z, t in info["myocardium_frames_zt"]]


def sunnybrook_study() -> SampleStudy:
    """The bundled Sunnybrook SC-HF-I-1 study (4D cine, x-y-z-t = 144 x 144 x 12 x 20)."""
    root = Path(str(files("napari_sdnet") / "data"))
    study = SampleStudy(
        image=root / f"{_STEM}_cine.nii.gz",
        labels=root / f"{_STEM}_cine_gt.nii.gz",
        labelled_json=root / f"{_STEM}_labelled.json",
    )
    missing = [p for p in (study.image, study.labels, study.labelled_json) if not p.is_file()]
    if missing:
        from napari_sdnet.errors import SDNetError

        raise SDNetError(
            f"bundled sample data is missing ({', '.join(str(p) for p in missing)}); "
            "reinstall napari-sdnet"
        )
    return study
