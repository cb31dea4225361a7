"""Paper Table 1 on ACDC: U-Net, GAN and SDNet with 284/142/68/34/11 labelled images (issue #8).

The semi-supervised experiment of Chartsias et al. (MICCAI 2018), on the ACDC H5 split in
``../shared/data/acdc_h5``. For every (model, labelled count, seed):

1. ``napari_sdnet.training.recipe.train_model``: ``labelled`` images chosen (with the seed) from
   the TRAINING split only; an unlabelled pool of up to 1200 other training slices, labels
   hidden (never validation or test slices); validation on the 20 volumes of ``val.list``
   after every epoch and at the end of the budget, keeping the best validated weights (early
   stopping after ``patience`` epochs without improvement). The three models share the
   preset, budget (iterations/epochs), learning rate, batch size, seed, augmentation and data:
   ``unet`` trains on the labelled images with the Dice loss only (it never sees the pool),
   ``gan`` adds the mask discriminator, fed with the pool's predicted masks as well, ``sdnet``
   adds the reconstruction and image discriminator. The mask discriminator's "real" masks are
   all masks of the training split, unpaired with the images (as in the paper; ``--real-masks
   labelled`` for the stricter choice).
2. ``napari_sdnet.api.evaluate`` on the 40 volumes of ``test.list``: hard myocardium Dice per
   volume (3D), on each volume's native grid; the run's number is the mean over the volumes.

Each run writes ``OUT/runs/<model>-<count>-s<seed>.json`` (and its ``.safetensors``)
atomically; runs whose JSON exists are skipped, so a killed benchmark resumes where it stopped
(a run that was cut off restarts from the beginning). After every run ``OUT/results.json`` and
``OUT/table1.md`` are rewritten: the measured mean over seeds next to the paper's numbers,
with the number of runs per cell; missing cells are shown as a dash. Several workers may share
one ``OUT`` (e.g. two processes with ``--threads 1`` on two cores): a lock file per run keeps
them from training the same run twice.

Profiles (one command each):

* ``full``: the paper. ``paper`` preset (224 px at 1.37 mm), Adam at a constant lr 1e-4
  (beta1 0.5), batch 4, up to 200 epochs with early stopping after 20 epochs without a better
  validation Dice. An epoch is one pass over the unlabelled pool (300 iterations with 1200
  images; 257 at 284 labelled images, where only 1028 training slices are left for the pool).
  For a GPU: on this project's 2-core CPU a paper-preset iteration takes about 12.5 s.
* ``quick``: ``compact`` preset (128 px at 1.7 mm, as the bundled model), lr 1e-3 with a
  cosine schedule down to 0 at the end of the budget, batch 4, 3000 iterations (10 epochs of
  300 iterations, each followed by validation; patience 20 epochs, so the budget ends first
  and the best validated weights are kept), seed 0. lr 1e-3 instead of the paper's 1e-4
  because at 1e-4 a compact model trained from scratch on a CPU barely starts to segment
  within such a budget; the three models share it. Until 2026-11-26 this profile was 1200
  iterations at a constant rate (now ``--iterations 1200 --lr-schedule constant``, folder
  ``table1-quick-constant-it1200``): SDNet was still improving when that budget ended and
  stayed below the paper at 142 and 284 labelled images (docs/benchmarks.md). See
  ``QUICK_ESTIMATE`` for its measured cost.

Both profiles: H5 pixels taken as 1.5 mm (ACDC's typical in-plane spacing; the H5 files store
none), no augmentation (the paper states none, and its U-Net numbers, e.g. 0.026 Dice with 11
labelled images, are those of a U-Net trained without it; ``--augment`` trains all three
models with on-the-fly augmentation instead, a protocol of its own whose results are in
docs/benchmarks.md too), seeds from ``--seeds``, and the unsupervised and adversarial loss
terms ramped up over the first 300 iterations (``TrainConfig.rampup``; the same for the three
models; the U-Net has no such term). Without the ramp (``runs/table1-quick-noramp``, measured
first) SDNet trained from scratch on 11 labelled images collapsed to empty masks after its
first epoch: the unlabelled terms took over before it segmented at all. Budgets are
iterations or epochs, never seconds, so a result does not depend on the machine's load.

Usage::

    .venv/bin/python benchmarks/bench_table1.py --profile quick --threads 2
    .venv/bin/python benchmarks/bench_table1.py --profile full --device cuda --seeds 0 1 2
    # subsets, e.g. the smallest labelled count only:
    .venv/bin/python benchmarks/bench_table1.py --profile quick --counts 11 --models unet sdnet
    # two workers on two cores, sharing one output folder (each takes the next free run):
    .venv/bin/python benchmarks/bench_table1.py --profile quick --threads 1 &
    .venv/bin/python benchmarks/bench_table1.py --profile quick --threads 1
    # the same protocol with on-the-fly augmentation for all three models (table1-quick-aug):
    .venv/bin/python benchmarks/bench_table1.py --profile quick --augment --threads 1
    # another budget and learning rate for all three models (table1-quick-constant-it1200):
    .venv/bin/python benchmarks/bench_table1.py --profile quick --iterations 1200 \
        --lr-schedule constant --counts 284 142 --threads 1
    # seconds per training iteration of each model type on this machine (no validation):
    .venv/bin/python benchmarks/bench_table1.py --profile quick --measure-speed 100 --threads 1
    # rebuild results.json and table1.md from the finished runs only:
    .venv/bin/python benchmarks/bench_table1.py --profile quick --report
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import socket
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from napari_sdnet import choices
from napari_sdnet.io.files import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "acdc_h5"

MODELS = ("unet", "gan", "sdnet")
MODEL_NAMES = {"unet": "U-Net", "gan": "GAN", "sdnet": "SDNet"}
#: Labelled image counts of the paper's Table 1, in its column order.
COUNTS = (284, 142, 68, 34, 11)
#: Paper Table 1: myocardium Dice on ACDC with 1200 unlabelled images.
PAPER_TABLE1: dict[str, dict[int, float]] = {
    "unet": {284: 0.782, 142: 0.657, 68: 0.581, 34: 0.356, 11: 0.026},
    "gan": {284: 0.787, 142: 0.727, 68: 0.648, 34: 0.365, 11: 0.080},
    "sdnet": {284: 0.771, 142: 0.767, 68: 0.731, 34: 0.678, 11: 0.415},
}
#: Counts at which the issue asks SDNet to beat the U-Net baseline.
BEAT_UNET_AT = (68, 34, 11)
DASH = "\u2014"
RUN_FORMAT = 1


@dataclass(frozen=True)
class Profile:
    """Everything that defines a run except the model, the labelled count and the seed."""

    name: str
    preset: str
    lr: float
    batch_size: int
    iterations: int | None
    epochs: int | None
    patience: int | None
    n_unlabelled: int = 1200
    h5_spacing: float | None = 1.5
    real_masks: str = "all"
    # On-the-fly augmentation for all three models (off: the paper states none).
    augment: bool = False
    # Iterations over which the unsupervised and adversarial terms ramp up (TrainConfig.rampup);
    # the same for the three models (the U-Net has no such term).
    rampup: int = 0
    # Learning rate over the budget (TrainConfig.lr_schedule): "constant" or "cosine".
    lr_schedule: str = "constant"
    seeds: tuple[int, ...] = (0,)
    # Data subsets, for tests on synthetic folders only (None: the whole split).
    max_volumes: int | None = None
    val_volumes: int | None = None

    def protocol(self) -> dict[str, Any]:
        """The settings that must match for runs to share a table (not the name or seeds)."""
        out = asdict(self)
        for key in ("name", "seeds"):
            out.pop(key)
        return out

    @staticmethod
    def complete_protocol(stored: dict[str, Any]) -> dict[str, Any]:
        """``stored`` (a run's recorded protocol) with the settings added to :class:`Profile`
        after it was written filled in with the behaviour before them (``ADDED_SETTINGS``)."""
        return {**ADDED_SETTINGS, **stored}

    def budget_text(self) -> str:
        if self.iterations is not None and self.epochs is None:
            return f"{self.iterations} iterations"
        parts = []
        if self.iterations is not None:
            parts.append(f"at most {self.iterations} iterations")
        if self.epochs is not None:
            parts.append(f"at most {self.epochs} epochs")
        if self.patience is not None:
            parts.append(f"early stopping after {self.patience} epochs without improvement")
        return ", ".join(parts)


#: Profile settings added after runs were recorded, with the value that matches how those
#: older runs were made (a record without the key ran that way).
ADDED_SETTINGS: dict[str, Any] = {"lr_schedule": "constant"}

PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick",
        preset="compact",
        lr=1e-3,
        batch_size=4,
        iterations=3000,
        epochs=None,
        patience=20,
        rampup=300,
        lr_schedule="cosine",
    ),
    "full": Profile(
        name="full",
        preset="paper",
        lr=1e-4,
        batch_size=4,
        iterations=None,
        epochs=200,
        patience=20,
        rampup=300,
    ),
}

#: Measured cost of the quick profile on this project's development machine (2-core Intel Xeon
#: VM, no GPU): the seconds its seed-0 runs recorded (docs/benchmarks.md).
QUICK_ESTIMATE = (
    "Quick profile cost, measured on a 2-core Intel Xeon VM with one thread per run and two "
    "to four runs sharing the two cores (2026-11-26, seed 0): a U-Net run took 6.5-10 "
    "minutes, a GAN run 15-25 and an SDNet run 34-52 (3000 iterations with 10 validations "
    "and the test evaluation); the 15 runs of one seed 5.9 hours of run time in all, about "
    "3 hours of wall time as two workers with --threads 1 each. One process with 2 threads "
    "was not measured."
)


# --------------------------------------------------------------------------------------------
# runs on disk
# --------------------------------------------------------------------------------------------


def variant_name(profile: Profile) -> str:
    """``profile``'s name plus a suffix for each setting changed from the named profile's
    (``quick-aug``, ``quick-constant-it1200``): its table rows and default folder say which
    protocol they are. A profile not in :data:`PROFILES` is compared with the field defaults
    (and its budget is its own)."""
    base = PROFILES.get(profile.name)
    if base is not None:
        ref = asdict(base)
    else:
        ref = {f.name: f.default for f in fields(Profile)} | {"iterations": profile.iterations}
    suffix = "-labelled-masks" if profile.real_masks != ref["real_masks"] else ""
    suffix += "-aug" if profile.augment != ref["augment"] else ""
    suffix += f"-{profile.lr_schedule}" if profile.lr_schedule != ref["lr_schedule"] else ""
    suffix += f"-it{profile.iterations}" if profile.iterations != ref["iterations"] else ""
    return f"{profile.name}{suffix}"


def folder_name(profile: Profile) -> str:
    """The default output folder of ``profile`` (other protocols never share a folder)."""
    return f"table1-{variant_name(profile)}"


def run_name(model: str, count: int, seed: int) -> str:
    return f"{model}-{count}-s{seed}"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (replacing it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text, overwrite=True)


class ProtocolMismatch(RuntimeError):
    """A finished run in the output folder was made with other settings."""


def load_run(path: Path, protocol: dict[str, Any]) -> dict[str, Any] | None:
    """A finished run's record, or ``None`` when ``path`` is missing, unreadable or incomplete.

    Raises :class:`ProtocolMismatch` for a complete record of another protocol: its numbers
    must not be mixed into this table (use another output folder).
    """
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        return None
    try:
        dice = float(record["test"]["mean_myocardium_dice"])
        complete = (
            record["model"] in MODELS
            and isinstance(record["labelled"], int)
            and isinstance(record["seed"], int)
            and record["test"]["n_volumes"] > 0
            and math.isfinite(dice)
        )
    except (KeyError, TypeError, ValueError):
        return None
    if not complete:
        return None
    stored = record.get("protocol")
    if not isinstance(stored, dict) or Profile.complete_protocol(stored) != protocol:
        raise ProtocolMismatch(
            f"{path} was made with other settings ({record.get('protocol')}); this table uses "
            f"{protocol}: choose another output folder"
        )
    return record


def collect_runs(out_dir: Path, protocol: dict[str, Any]) -> list[dict[str, Any]]:
    """Every finished run in ``out_dir/runs`` (incomplete files are ignored)."""
    runs = []
    for path in sorted((out_dir / "runs").glob("*.json")):
        record = load_run(path, protocol)
        if record is not None and path.stem == run_name(
            record["model"], record["labelled"], record["seed"]
        ):
            runs.append(record)
    return runs


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(lock: Path) -> bool:
    """Take the lock file of a run; False when a live process on this host holds it.

    A lock left by a process that no longer runs (killed) is taken over.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                host, pid = lock.read_text().split()
                held = host == socket.gethostname() and _pid_alive(int(pid))
            except (OSError, ValueError):
                held = False
            if held:
                return False
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


# --------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def run_one(
    data_dir: Path,
    profile: Profile,
    model_type: str,
    count: int,
    seed: int,
    out_dir: Path,
    *,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one model, evaluate it on the test split, write and return its record."""
    from napari_sdnet import __version__, api
    from napari_sdnet.training.recipe import train_model
    from napari_sdnet.training.trainer import describe_losses

    name = run_name(model_type, count, seed)
    runs = out_dir / "runs"
    checkpoint = runs / f"{name}.safetensors"
    gen = train_model(
        data_dir,
        preset=profile.preset,
        model_type=model_type,
        labelled=count,
        output=checkpoint,
        overwrite=True,  # a checkpoint without its JSON is from a run that was cut off
        by="images",
        n_unlabelled=profile.n_unlabelled,
        h5_spacing=profile.h5_spacing,
        real_masks=profile.real_masks,
        max_volumes=profile.max_volumes,
        val_volumes=profile.val_volumes,
        iterations=profile.iterations,
        epochs=profile.epochs,
        patience=profile.patience,
        batch_size=profile.batch_size,
        lr=profile.lr,
        seed=seed,
        augment=profile.augment,
        rampup=profile.rampup,
        lr_schedule=profile.lr_schedule,
        device=device,
    )
    start = time.perf_counter()
    history: list[list[float]] = []  # [iteration, validation Dice]
    while True:
        try:
            progress = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if progress.done:
            continue
        every = max(1, (progress.max_iterations or 0) // 10)
        if progress.max_iterations and progress.iteration % every == 0:
            log(
                f"  {name}: iteration {progress.iteration}/{progress.max_iterations} "
                f"({progress.elapsed:.0f} s) {describe_losses(progress.losses)}"
            )
        if progress.val_dice is not None:
            history.append([progress.iteration, round(progress.val_dice, 4)])
            log(
                f"  {name}: iteration {progress.iteration} (epoch {progress.epoch}, "
                f"{progress.elapsed:.0f} s): val Dice {progress.val_dice:.4f}, best "
                f"{progress.best_val_dice:.4f} at {progress.best_iteration}"
            )
    train_seconds = time.perf_counter() - start
    if result.stop_reason == "interrupted":
        raise KeyboardInterrupt
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # U-Net and GAN checkpoints warn that their reconstructor is untrained: expected here.
        warnings.filterwarnings("ignore", message=".*reconstructor was never trained")
        model = api.load_model(checkpoint, device=device)
    ev = api.evaluate(model, data_dir, split="test", h5_spacing=profile.h5_spacing)
    eval_seconds = time.perf_counter() - t0
    training = result.info.training
    desc = result.description
    record = {
        "format": RUN_FORMAT,
        "name": name,
        "model": model_type,
        "labelled": count,
        "seed": seed,
        "profile": profile.name,
        "protocol": profile.protocol(),
        "test": {
            "split": "test",
            "mean_myocardium_dice": round(ev.mean_myocardium_dice, 4),
            "std": round(float(ev.std), 4),
            "n_volumes": ev.n_volumes,
            "per_volume": [
                {"volume_id": v["volume_id"], "dice": round(float(v["dice"]), 4)}
                for v in ev.per_volume
            ],
        },
        "validation": {
            "best_dice": result.info.metrics.get("val_dice"),
            "best_iteration": result.info.metrics.get("val_iteration"),
            "volumes": desc.get("val_volumes"),
            "history": history,
        },
        "training": {
            "iterations": training.get("iterations"),
            "stop_reason": result.stop_reason,
            "seconds": round(train_seconds, 1),
            "device": training.get("device"),
            "labelled_slices": desc.get("labelled"),
            "labelled_volumes": desc.get("labelled_volumes"),
            "labelled_patients": desc.get("labelled_patients"),
            "unlabelled_pool": desc.get("unlabelled"),
            "unlabelled_used": training.get("unlabelled"),
            "real_masks": desc.get("real_masks"),
            "train_volumes": desc.get("train_volumes"),
        },
        "evaluation_seconds": round(eval_seconds, 1),
        "checkpoint": checkpoint.name,
        "machine": machine(),
        "version": __version__,
        "finished": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    write_atomic(runs / f"{name}.json", json.dumps(record, indent=1) + "\n")
    return record


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------


def summarise(runs: Iterable[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """Cells ``{model: {count: {"mean", "std", "n", "seeds"}}}`` over the seeds' test Dice."""
    values: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for r in runs:
        key = (r["model"], int(r["labelled"]))
        values.setdefault(key, []).append((int(r["seed"]), r["test"]["mean_myocardium_dice"]))
    cells: dict[str, dict[int, dict[str, Any]]] = {}
    for (model, count), pairs in sorted(values.items()):
        pairs.sort()
        dice = np.asarray([d for _, d in pairs], float)
        cells.setdefault(model, {})[count] = {
            "mean": round(float(dice.mean()), 4),
            "std": round(float(dice.std(ddof=1)), 4) if len(dice) > 1 else None,
            "n": len(dice),
            "seeds": [s for s, _ in pairs],
        }
    return cells


def format_cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return DASH
    text = f"{cell['mean']:.3f}"
    if cell.get("std") is not None:
        text += f" \u00b1 {cell['std']:.3f}"
    return f"{text} (n={cell['n']})"


def check_targets(cells: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[int, Any]]:
    """The issue's targets per count: ``True``/``False``, or ``None`` while a cell is missing."""
    sd = cells.get("sdnet", {})
    un = cells.get("unet", {})
    vs_paper = {c: (sd[c]["mean"] >= PAPER_TABLE1["sdnet"][c]) if c in sd else None for c in COUNTS}
    vs_unet = {
        c: (sd[c]["mean"] > un[c]["mean"]) if c in sd and c in un else None for c in BEAT_UNET_AT
    }
    return {"sdnet_at_or_above_paper_sdnet": vs_paper, "sdnet_above_unet": vs_unet}


def _yes_no(value: bool | None) -> str:
    return DASH if value is None else ("yes" if value else "no")


def format_table(
    cells: dict[str, dict[int, dict[str, Any]]],
    profile: Profile,
    counts: Sequence[int] = COUNTS,
    models: Sequence[str] = MODELS,
) -> str:
    """The markdown table: for each model the paper's row and the measured row."""
    head = "| model | source | " + " | ".join(str(c) for c in counts) + " |"
    rule = "|---|---|" + "---|" * len(counts)
    lines = [head, rule]
    for model in models:
        paper = PAPER_TABLE1.get(model, {})
        lines.append(
            f"| {MODEL_NAMES.get(model, model)} | paper | "
            + " | ".join(f"{paper[c]:.3f}" if c in paper else DASH for c in counts)
            + " |"
        )
        measured = cells.get(model, {})
        lines.append(
            f"| {MODEL_NAMES.get(model, model)} | measured ({variant_name(profile)}) | "
            + " | ".join(format_cell(measured.get(c)) for c in counts)
            + " |"
        )
    return "\n".join(lines)


def format_report(
    runs: list[dict[str, Any]],
    profile: Profile,
    expected: Sequence[str] = (),
) -> str:
    cells = summarise(runs)
    targets = check_targets(cells)
    done = {r["name"] for r in runs}
    missing = [n for n in expected if n not in done]
    seconds = sum(r["training"]["seconds"] + r["evaluation_seconds"] for r in runs)
    machines = sorted({f"{r['machine']['cpu']} ({r['training']['device']})" for r in runs})
    p = profile
    lines = [
        f"# Paper Table 1 on ACDC, profile `{variant_name(p)}`",
        "",
        "Myocardium Dice on the 40 test volumes of the ACDC H5 split (hard Dice per volume, "
        "3D, native grid; mean over volumes, then over seeds: mean \u00b1 sample std (n = "
        "runs)). Paper: Chartsias et al. 2018, Table 1 (1200 unlabelled images; its Dice was "
        "computed by the authors' code, soft and per slice).",
        "",
        format_table(cells, profile),
        "",
        "Targets (issue #8):",
        "",
        "| labelled images | " + " | ".join(str(c) for c in COUNTS) + " |",
        "|---|" + "---|" * len(COUNTS),
        "| SDNet >= paper SDNet | "
        + " | ".join(_yes_no(targets["sdnet_at_or_above_paper_sdnet"][c]) for c in COUNTS)
        + " |",
        "| SDNet > U-Net | "
        + " | ".join(
            _yes_no(targets["sdnet_above_unet"][c]) if c in BEAT_UNET_AT else "(not asked)"
            for c in COUNTS
        )
        + " |",
        "",
        f"Protocol: preset `{p.preset}`, {p.budget_text()}, Adam lr {p.lr:g} (beta1 0.5"
        + ("" if p.lr_schedule == "constant" else f", {p.lr_schedule} schedule")
        + f"), ramp-up {p.rampup} iterations, "
        f"batch {p.batch_size}, unlabelled pool up to {p.n_unlabelled} training slices, H5 "
        f"spacing {p.h5_spacing} mm, real masks for D_M: {p.real_masks}, augmentation "
        f"{'on' if p.augment else 'off'}; best validated weights ("
        + (
            "the 20 volumes of val.list"
            if p.val_volumes is None
            else f"the first {p.val_volumes} volumes of val.list"
        )
        + f"); seeds {', '.join(str(s) for s in sorted({r['seed'] for r in runs})) or DASH}.",
        "",
        f"Finished runs: {len(runs)} in all"
        + (
            f" ({len(expected) - len(missing)} of the {len(expected)} this command asked for)"
            if expected
            else ""
        )
        + f"; {seconds / 3600:.2f} hours of training and evaluation in all.",
    ]
    if missing:
        lines.append(f"Missing: {', '.join(missing)}.")
    if machines:
        lines.append(f"Machine: {'; '.join(machines)}.")
    lines += ["", "| run | test Dice | best val Dice (iteration) | iterations | stop | seconds |"]
    lines.append("|---|---|---|---|---|---|")
    for r in sorted(runs, key=lambda r: (MODELS.index(r["model"]), -r["labelled"], r["seed"])):
        v = r["validation"]
        val = DASH if v["best_dice"] is None else f"{v['best_dice']:.4f} ({v['best_iteration']})"
        lines.append(
            f"| {r['name']} | {r['test']['mean_myocardium_dice']:.4f} | {val} | "
            f"{r['training']['iterations']} | {r['training']['stop_reason']} | "
            f"{r['training']['seconds'] + r['evaluation_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, profile: Profile, expected: Sequence[str] = ()) -> dict[str, Any]:
    """Rewrite ``results.json`` and ``table1.md`` from the finished runs in ``out_dir``."""
    runs = collect_runs(out_dir, profile.protocol())
    cells = summarise(runs)
    results = {
        "profile": profile.name,
        "protocol": profile.protocol(),
        "paper": {m: {str(c): v for c, v in row.items()} for m, row in PAPER_TABLE1.items()},
        "measured": {m: {str(c): cell for c, cell in row.items()} for m, row in cells.items()},
        "targets": {
            k: {str(c): v for c, v in row.items()} for k, row in check_targets(cells).items()
        },
        "runs": [
            {
                "name": r["name"],
                "model": r["model"],
                "labelled": r["labelled"],
                "seed": r["seed"],
                "test_dice": r["test"]["mean_myocardium_dice"],
                "test_std": r["test"]["std"],
                "val_dice": r["validation"]["best_dice"],
                "val_iteration": r["validation"]["best_iteration"],
                "iterations": r["training"]["iterations"],
                "stop_reason": r["training"]["stop_reason"],
                "seconds": round(r["training"]["seconds"] + r["evaluation_seconds"], 1),
                "device": r["training"]["device"],
            }
            for r in runs
        ],
        "missing": [n for n in expected if n not in {r["name"] for r in runs}],
        "updated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    write_atomic(out_dir / "results.json", json.dumps(results, indent=1) + "\n")
    write_atomic(out_dir / "table1.md", format_report(runs, profile, expected))
    return results


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------


def plan(
    models: Sequence[str], counts: Sequence[int], seeds: Sequence[int]
) -> list[tuple[str, int, int]]:
    """Run order: seed by seed, the smallest labelled counts first (the paper's point)."""
    return [
        (m, c, s)
        for s in seeds
        for c in sorted(dict.fromkeys(counts))
        for m in MODELS
        if m in models
    ]


def run_benchmark(
    data_dir: Path,
    profile: Profile,
    out_dir: Path,
    *,
    models: Sequence[str] = MODELS,
    counts: Sequence[int] = COUNTS,
    seeds: Sequence[int] | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every missing (model, count, seed) of the plan; return the final results dict."""
    seeds = profile.seeds if seeds is None else tuple(seeds)
    todo = plan(models, counts, seeds)
    expected = [run_name(*t) for t in todo]
    protocol = profile.protocol()
    runs = out_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    collect_runs(out_dir, protocol)  # fails now on runs of another protocol
    write_report(out_dir, profile, expected)
    for i, (model, count, seed) in enumerate(todo, 1):
        name = run_name(model, count, seed)
        if load_run(runs / f"{name}.json", protocol) is not None:
            log(f"[{i}/{len(todo)}] {name}: done already, skipped")
            continue
        lock = runs / f"{name}.lock"
        if not claim(lock):
            log(f"[{i}/{len(todo)}] {name}: another worker is running it, skipped")
            continue
        try:
            # Another worker may have finished it between the check and the claim.
            if load_run(runs / f"{name}.json", protocol) is not None:
                continue
            log(f"[{i}/{len(todo)}] {name}: training ({profile.preset}, {profile.budget_text()})")
            record = run_one(data_dir, profile, model, count, seed, out_dir, device=device, log=log)
        finally:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        t = record["training"]
        log(
            f"[{i}/{len(todo)}] {name}: test Dice {record['test']['mean_myocardium_dice']:.4f} "
            f"({record['test']['n_volumes']} volumes); best val "
            f"{record['validation']['best_dice']} at iteration "
            f"{record['validation']['best_iteration']}; {t['iterations']} iterations "
            f"({t['stop_reason']}) in {t['seconds']:.0f} s + {record['evaluation_seconds']:.0f} s"
        )
        write_report(out_dir, profile, expected)
    return write_report(out_dir, profile, expected)


def measure_speed(
    data_dir: Path,
    profile: Profile,
    models: Sequence[str],
    iterations: int,
    *,
    device: str = "auto",
    warmup: int = 5,
    max_volumes: int | None = 30,
) -> dict[str, float]:
    """Seconds per training iteration of each model type (no validation, the first
    ``warmup`` iterations not counted), with 11 labelled images and an unlabelled pool."""
    from napari_sdnet.training.recipe import train_model

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            gen = train_model(
                data_dir,
                preset=profile.preset,
                model_type=model,
                labelled=11,
                output=Path(tmp) / f"{model}.safetensors",
                n_unlabelled=profile.n_unlabelled,
                h5_spacing=profile.h5_spacing,
                max_volumes=max_volumes,
                val_volumes=0,
                iterations=warmup + iterations,
                epochs=None,
                patience=None,
                batch_size=profile.batch_size,
                lr=profile.lr,
                augment=profile.augment,
                device=device,
            )
            t_start = t_end = None
            for progress in gen:
                if progress.done:
                    continue
                if progress.iteration == warmup:
                    t_start = progress.elapsed
                t_end = progress.elapsed
            assert t_start is not None and t_end is not None
            out[model] = (t_end - t_start) / iterations
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(
            textwrap.fill(text, 79)
            for text in (
                "Profiles: "
                + "; ".join(
                    f"{p.name}: preset {p.preset}, {p.budget_text()}, lr {p.lr:g} "
                    f"({p.lr_schedule}), batch {p.batch_size}"
                    for p in PROFILES.values()
                )
                + ".",
                QUICK_ESTIMATE,
                "Protocol and results: docs/benchmarks.md and this file's docstring.",
            )
        ),
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ACDC H5 folder")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default runs/table1-<profile>)"
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--counts",
        nargs="+",
        type=int,
        choices=COUNTS,
        default=list(COUNTS),
        help="labelled image counts",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=None, help="seeds (default: the profile's, i.e. 0)"
    )
    parser.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument(
        "--real-masks",
        choices=choices.REAL_MASKS,
        default=None,
        help="real masks for the mask discriminator (default: all, as the paper)",
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="train all three models with on-the-fly augmentation (rotation, flips, zoom, "
        "intensity; the paper states none; own output folder, table1-<profile>-aug)",
    )
    parser.add_argument(
        "--lr-schedule",
        choices=choices.LR_SCHEDULES,
        default=None,
        help="learning rate over the budget for all three models (default: the profile's, "
        + ", ".join(f"{p.lr_schedule} for {p.name}" for p in PROFILES.values())
        + "; cosine: down to 0 at the end of the budget; another schedule than the profile's "
        "has its own output folder, table1-<profile>-<schedule>)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        metavar="N",
        help="training budget of all three models in iterations instead of the profile's "
        "(the full profile: a cap beside its epochs); own output folder, "
        "table1-<profile>-it<N>",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="only rebuild results.json and table1.md from the finished runs",
    )
    parser.add_argument(
        "--measure-speed",
        type=int,
        default=None,
        metavar="N",
        help="time N training iterations of each model type and exit",
    )
    args = parser.parse_args(argv)
    import torch

    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be >= 1")
    # settings given on the command line replace the profile's (a protocol of their own)
    overrides = {
        "real_masks": args.real_masks,
        "augment": True if args.augment else None,
        "lr_schedule": args.lr_schedule,
        "iterations": args.iterations,
    }
    profile = replace(
        PROFILES[args.profile], **{k: v for k, v in overrides.items() if v is not None}
    )
    out = args.out or REPO_ROOT / "runs" / folder_name(profile)
    if args.measure_speed is not None:
        speed = measure_speed(
            args.data, profile, args.models, args.measure_speed, device=args.device
        )
        info = {
            "profile": profile.name,
            "preset": profile.preset,
            "iterations": args.measure_speed,
            "seconds_per_iteration": {k: round(v, 4) for k, v in speed.items()},
            "machine": machine(),
        }
        for model, sec in speed.items():
            line = f"{model}: {sec:.3f} s per iteration ({torch.get_num_threads()} threads)"
            if profile.iterations:
                minutes = sec * profile.iterations / 60
                line += f"; {profile.iterations} iterations = {minutes:.1f} min"
            print(line)
        if profile.iterations and set(speed) == set(MODELS):
            total = sum(speed.values()) * profile.iterations * len(COUNTS)
            print(f"training alone, 15 runs (one seed): {total / 3600:.2f} h on this setting")
        write_atomic(
            out / f"speed-{torch.get_num_threads()}threads.json", json.dumps(info, indent=1) + "\n"
        )
        return 0
    try:
        if args.report:
            write_report(out, profile)
        else:
            run_benchmark(
                args.data,
                profile,
                out,
                models=args.models,
                counts=args.counts,
                seeds=args.seeds,
                device=args.device,
                log=lambda s: print(s, flush=True),
            )
    except ProtocolMismatch as exc:
        print(f"bench_table1: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench_table1: interrupted; finished runs are kept, rerun to resume", file=sys.stderr)
        return 130
    print(f"wrote {out / 'results.json'} and {out / 'table1.md'}")
    print((out / "table1.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
