"""Per-structure accuracy and cardiac function of a model against the targets of issues #16/#17.

    .venv/bin/python benchmarks/bench_structures.py --model runs/v3/sdnet_compact_acdc3.safetensors
    .venv/bin/python benchmarks/bench_structures.py --state runs/v3/stage1.resume.safetensors

Measures, with the project's own API (never used for selection; the test split and the
Sunnybrook study are evaluation only):

* the ACDC H5 test split (40 volumes): per-volume 3D Dice of each structure (``api.evaluate``);
* the raw ACDC NIfTI test patients 001, 022, 024 (ED and ES) in their original geometry: Dice of
  each structure through ``api.segment`` and the cardiac function against the expert labels
  (LV EF error in points, LV mass and EDV errors in %);
* the Sunnybrook study (another vendor), its contoured frames.

``--state`` evaluates the best weights kept in a stopped training's state file (a segmenter of
three structures on the compact preset), e.g. to follow a long run. Needs ``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SDNET_SHARED_DATA", ROOT.parent / "shared" / "data"))
TEST_PATIENTS = ("patient001", "patient022", "patient024")
LABELS = {"rv": 1, "myocardium": 2, "lv": 3}


def model_from_state(path: Path, preset: str = "compact"):
    """The best weights of a training state as an ``api.Model`` (three structures)."""
    import torch

    from napari_sdnet import api
    from napari_sdnet.model import SDNet, get_preset
    from napari_sdnet.training.checkpoint import CheckpointInfo, load_train_state

    state, recipe = load_train_state(path)
    structures = tuple(recipe.get("structures") or ("myocardium",))
    config = get_preset(recipe.get("preset", preset)).replace(structures=structures)
    net = SDNet(config)
    which = "best/" if state.meta.get("has_best") else "model/"
    weights = {k[len(which) :]: v for k, v in state.tensors.items() if k.startswith(which)}
    net.load_state_dict(weights)
    net.eval()
    info = CheckpointInfo.for_model(
        config, model_type="unet", training={"h5_spacing": recipe.get("h5_spacing")}
    )
    label = f"{path.name} (iteration {state.meta['iteration']}, kept {state.meta['best_iter']})"
    return api.Model(network=net, info=info, device=torch.device("cpu"), source=label)


def _error(pred: dict, truth: dict, key: str, relative: bool) -> float | None:
    if pred.get(key) is None or truth.get(key) is None:
        return None
    diff = pred[key] - truth[key]
    return diff / truth[key] * 100 if relative else diff


def nifti_test(model) -> dict:
    from napari_sdnet import api, cardiac
    from napari_sdnet.io.nifti import read_nifti

    dice: dict[str, list[float]] = {k: [] for k in LABELS}
    rows = []
    for pid in TEST_PATIENTS:
        frames = sorted((DATA / "acdc_nifti" / pid).glob(f"{pid}_frame??.nii.gz"))
        pred, truth, spacing = [], [], []
        for path in frames:
            vol = read_nifti(path)
            gt = read_nifti(str(path).replace(".nii.gz", "_gt.nii.gz")).data
            labels = api.segment(model, vol.data, vol.geometry.spacing, precision="fp32").labels()
            pred.append(labels)
            truth.append(gt)
            spacing.append(vol.geometry.spacing)
            for name, value in LABELS.items():
                if name in model.config.structures:
                    a, b = labels == value, gt == value
                    dice[name].append(2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum())))
        p = cardiac.measure_ed_es(pred[0], pred[1], spacing[0], spacing[1]).indices()
        t = cardiac.measure_ed_es(truth[0], truth[1], spacing[0], spacing[1]).indices()

        rows.append(
            {
                "patient": pid,
                "lv_ef_error_points": _error(p, t, "lv_ef_percent", relative=False),
                "lv_mass_error_percent": _error(p, t, "lv_mass_g", relative=True),
                "lv_edv_error_percent": _error(p, t, "lv_edv_ml", relative=True),
            }
        )

    def mean_abs(key: str) -> float | None:
        values = [abs(r[key]) for r in rows if r[key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "dice": {k: float(np.mean(v)) for k, v in dice.items() if v},
        "patients": rows,
        "mean_abs_lv_ef_error_points": mean_abs("lv_ef_error_points"),
        "mean_abs_lv_mass_error_percent": mean_abs("lv_mass_error_percent"),
        "mean_abs_lv_edv_error_percent": mean_abs("lv_edv_error_percent"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a model file, or 'bundled'")
    source.add_argument("--state", type=Path, help="a training state (*.resume.safetensors)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"no shared data at {DATA}", file=sys.stderr)
        return 2
    import torch

    from napari_sdnet import api

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    model = model_from_state(args.state) if args.state else api.load_model(args.model, "cpu")
    out = {"model": model.source, "structures": list(model.config.structures)}
    h5 = api.evaluate(model, DATA / "acdc_h5", split="test", h5_spacing=1.5)
    out["acdc_h5_test"] = {"myocardium": h5.mean_myocardium_dice, **h5.mean_structure_dice()}
    out["acdc_nifti_test"] = nifti_test(model)
    sb = api.evaluate(model, DATA / "sunnybrook" / "SCD0000101_4d.nii.gz")
    out["sunnybrook"] = {"myocardium": sb.mean_myocardium_dice, **sb.mean_structure_dice()}
    print(json.dumps(out, indent=1, default=lambda x: None))
    if args.json is not None:
        from napari_sdnet.io.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n", overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
