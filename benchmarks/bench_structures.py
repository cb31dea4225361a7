"""Per-structure accuracy and cardiac function of a model against the targets of issues #16/#17.

    .venv/bin/python benchmarks/bench_structures.py --model runs/v3/sdnet_compact_acdc3.safetensors
    .venv/bin/python benchmarks/bench_structures.py --state runs/v3/stage1.resume.safetensors

Measures, with the project's own API (never used for selection; the test split and the
Sunnybrook study are evaluation only):

* the ACDC H5 test split (40 volumes): per-volume 3D Dice of each structure (``api.evaluate``);
* the raw ACDC NIfTI test patients 001, 022, 024 (ED and ES) in their original geometry: Dice of
  each structure through ``api.segment`` and the cardiac function against the expert labels
  (LV EF error in points, LV mass and EDV errors in %);
* the Sunnybrook study (another vendor), its contoured frames;
* the cardiac function of the 20 ACDC H5 test patients (ED = frame01, ES = frame02): LV EF of
  the model's segmentation against the expert labels' (the H5 files carry no spacing, so an
  assumed 10 x 1.5 x 1.5 mm is used; EF is a ratio of volumes, so it cancels), with the mean
  difference and the Bland-Altman limits of agreement; ``--plot PNG`` draws them.

``--state`` evaluates the best weights kept in a stopped training's state file (a segmenter of
the compact preset), e.g. to follow a long run. Needs ``../shared/data``.
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
    """The best weights of a training state as an ``api.Model`` (its structures and type)."""
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
        config,
        model_type=recipe.get("model_type", "unet"),
        training={"h5_spacing": recipe.get("h5_spacing")},
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
                "lv_ef_model": p.get("lv_ef_percent"),
                "lv_ef_expert": t.get("lv_ef_percent"),
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


def bland_altman(pred: list[float], truth: list[float]) -> dict:
    """Mean difference (bias) and 95 % limits of agreement of ``pred - truth``."""
    diff = np.asarray(pred, float) - np.asarray(truth, float)
    bias, sd = float(diff.mean()), float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    return {
        "n": int(diff.size),
        "mean_difference": bias,
        "sd_difference": sd,
        "limits_of_agreement": [bias - 1.96 * sd, bias + 1.96 * sd],
        "mean_abs_difference": float(np.abs(diff).mean()),
    }


def h5_function(model) -> dict:
    """LV/RV EF of the model against the expert labels on the 20 ACDC H5 test patients."""
    import h5py

    from napari_sdnet import api, cardiac

    names = (DATA / "acdc_h5" / "test.list").read_text().split()
    patients = sorted({n.split("_")[0] for n in names})
    spacing = (10.0, 1.5, 1.5)
    rows = []
    for pid in patients:
        pred, truth = [], []
        for frame in ("frame01", "frame02"):
            with h5py.File(DATA / "acdc_h5" / "data" / f"{pid}_{frame}.h5", "r") as f:
                image, label = f["image"][()], f["label"][()]
            pred.append(api.segment(model, image, spacing, precision="fp32").labels())
            truth.append(label)
        p = cardiac.measure_ed_es(pred[0], pred[1], spacing, spacing).indices()
        t = cardiac.measure_ed_es(truth[0], truth[1], spacing, spacing).indices()
        rows.append(
            {
                "patient": pid,
                **{f"{k}_model": p.get(k) for k in ("lv_ef_percent", "rv_ef_percent")},
                **{f"{k}_expert": t.get(k) for k in ("lv_ef_percent", "rv_ef_percent")},
            }
        )
    out: dict = {"patients": rows}
    for key in ("lv_ef_percent", "rv_ef_percent"):
        pairs = [
            (r[f"{key}_model"], r[f"{key}_expert"])
            for r in rows
            if r[f"{key}_model"] is not None and r[f"{key}_expert"] is not None
        ]
        if pairs:
            out[key] = bland_altman([a for a, _ in pairs], [b for _, b in pairs])
    return out


def plot_bland_altman(h5: dict, nifti: dict, path: Path) -> None:
    """Bland-Altman plot of LV EF (model - expert against their mean), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_sdnet.io.files import atomic_write

    rows = [r for r in h5["patients"] if r["lv_ef_percent_model"] is not None]
    model = np.array([r["lv_ef_percent_model"] for r in rows])
    expert = np.array([r["lv_ef_percent_expert"] for r in rows])
    stats = h5["lv_ef_percent"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.scatter((model + expert) / 2, model - expert, color="tab:blue", label="ACDC H5 test (20)")
    for r in nifti["patients"]:
        if r.get("lv_ef_model") is not None:
            ax.scatter(
                (r["lv_ef_model"] + r["lv_ef_expert"]) / 2,
                r["lv_ef_model"] - r["lv_ef_expert"],
                color="tab:orange",
                marker="s",
                label="001/022/024 via NIfTI" if r is nifti["patients"][0] else None,
            )
    bias, (lo, hi) = stats["mean_difference"], stats["limits_of_agreement"]
    ax.axhline(bias, color="k", label=f"mean difference {bias:+.1f}")
    for v in (lo, hi):
        ax.axhline(v, color="k", linestyle="--")
    diffs = model - expert
    pad = 0.12 * (max(hi, diffs.max()) - min(lo, diffs.min()))
    ax.set_ylim(min(lo, diffs.min()) - pad, max(hi, diffs.max()) + pad)
    edge = ax.get_yaxis_transform()  # x in axes fraction, y in data
    ax.text(0.99, hi, f"+1.96 SD: {hi:+.1f}", va="bottom", ha="right", transform=edge)
    ax.text(0.99, lo, f"-1.96 SD: {lo:+.1f}", va="bottom", ha="right", transform=edge)
    ax.set_xlabel("mean of model and expert LV EF (%)")
    ax.set_ylabel("model - expert LV EF (points)")
    ax.set_title("LV ejection fraction: model vs expert labels (Bland-Altman)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_write(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a model file, or 'bundled'")
    source.add_argument("--state", type=Path, help="a training state (*.resume.safetensors)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--plot", type=Path, default=None, help="Bland-Altman plot of LV EF (PNG)")
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
    out["acdc_h5_test_function"] = h5_function(model)
    if args.plot is not None and "lv_ef_percent" in out["acdc_h5_test_function"]:
        plot_bland_altman(out["acdc_h5_test_function"], out["acdc_nifti_test"], args.plot)
    print(json.dumps(out, indent=1, default=lambda x: None))
    if args.json is not None:
        from napari_sdnet.io.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n", overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
