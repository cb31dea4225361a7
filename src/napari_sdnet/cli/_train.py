"""napari-sdnet train (training/recipe.py: datasets + trainer + checkpoint)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_sdnet import choices
from napari_sdnet.cli._common import (
    _COMMANDS,
    _STOP_STATUS,
    _check_new_file,
    _drive,
    _positive_float,
    _stop_on_signals,
    _with_one_line_warnings,
)
from napari_sdnet.errors import InputError


def _labelled_count(text: str) -> int | None:
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_sdnet.training.recipe import train_model
    from napari_sdnet.training.trainer import describe_losses

    if not args.resume:
        _check_new_file(args.output, args.overwrite, "model")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)

    def on_data(desc: dict) -> None:
        unlabelled = 0 if args.model_type == "unet" else desc["unlabelled"]
        print(
            f"data: {desc['data']} ({desc['layout']}): {desc['labelled']} labelled slices from "
            f"{desc['labelled_volumes']} volumes, {unlabelled} unlabelled, validation "
            f"{desc['val_slices']} slices of {desc['val_volumes']} volumes",
            file=sys.stderr,
        )
        for text in desc.get("warnings", []):
            print(f"napari-sdnet train: warning: {text}", file=sys.stderr)

    kwargs = dict(
        data_dir=args.data,
        preset=args.preset,
        model_type=args.model_type,
        labelled=args.labelled,
        output=args.output,
        overwrite=args.overwrite,
        by=args.by,
        n_unlabelled=args.unlabelled,
        h5_spacing=args.h5_spacing,
        real_masks=args.real_masks,
        max_volumes=args.max_volumes,
        val_volumes=args.val_volumes,
        patients=args.patients,
        val_patients=args.val_patients,
        split_root=args.split,
        iterations=args.iterations,
        epochs=args.epochs,
        seconds=args.seconds,
        patience=args.patience or None,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        augment=not args.no_augment,
        device=args.device,
        init=args.init,
        freeze=tuple(args.freeze),
        select_on=args.select_on,
        reinit=tuple(args.reinit),
        rampup=args.rampup,
        lr_schedule=args.lr_schedule,
        structures=choices.STRUCTURE_SETS[args.structures],
        scanner_augment=args.scanner_augment,
        base_filters=args.base_filters,
        on_data=on_data,
        resume=args.resume,
        checkpoint_seconds=args.checkpoint_minutes * 60 if args.checkpoint_minutes else None,
    )

    def show(progress) -> None:
        nonlocal last_val
        if progress.done:
            return
        if progress.max_iterations and bar.total != progress.max_iterations:
            bar.total = progress.max_iterations
        bar.update(progress.iteration - bar.n)
        if progress.val_dice is not None:
            last_val = progress.val_dice
            recon = (
                f", reconstruction L1 {progress.val_recon_l1:.4f}"
                if progress.val_recon_l1 is not None
                else ""
            )
            each = progress.val_dice_structures or {}
            parts = " (" + ", ".join(f"{k} {v:.3f}" for k, v in each.items()) + ")" if each else ""
            bar.write(
                f"iteration {progress.iteration} (epoch {progress.epoch}): val Dice "
                f"{progress.val_dice:.4f}{parts}{recon}; kept: iteration "
                f"{progress.best_iteration} (Dice {progress.best_val_dice:.4f})",
                file=sys.stderr,
            )
        postfix = describe_losses(progress.losses)
        if last_val is not None:
            postfix += f" val={last_val:.3f}"
        bar.set_postfix_str(postfix, refresh=False)

    bar = tqdm(desc="train", unit="it", file=sys.stderr, disable=None, leave=False)
    last_val = None
    with _stop_on_signals() as stop:
        gen = train_model(**kwargs, stop=stop)
        try:
            result = _drive(gen, show)
        finally:
            bar.close()
    metrics = result.info.metrics
    iters = result.info.training.get("iterations")
    secs = result.info.training.get("seconds")
    if "val_dice" in metrics:
        best = (
            f"best validation Dice {metrics['val_dice']:.4f} at iteration "
            f"{metrics['val_iteration']}"
        )
    else:
        best = "no validation; last weights"
    print(
        f"trained {iters} iterations in {secs} s (stop: {result.stop_reason}); {best}",
        file=sys.stderr,
    )
    print(f"wrote {result.path}")
    if result.state_path is not None:
        print(
            f"saved the training state to {result.state_path}: continue with the same command "
            "and --resume",
            file=sys.stderr,
        )
    return _STOP_STATUS.get(result.stop_reason, 0)


def _add_train_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (sdnet/unet/gan) on an ACDC H5 split or ACDC NIfTI folders",
        description=(
            "Semi-supervised SDNet training (or the U-Net / GAN baselines). Labelled and "
            "unlabelled slices come from the training patients only; validation patients "
            "drive early stopping, and the best validated weights are written. See "
            "docs/training.md."
        ),
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="ACDC H5 folder (*.list + data/) or a folder of ACDC patientNNN folders",
    )
    p.add_argument(
        "--preset",
        choices=choices.PRESET_NAMES,
        default="paper",
        help="network size (default paper: 224 px at 1.37 mm)",
    )
    p.add_argument(
        "--base-filters",
        type=int,
        default=None,
        metavar="N",
        help="the U-Net's first width (doubling per level) instead of the preset's (compact: "
        "8), to compare model sizes",
    )
    p.add_argument(
        "--structures",
        choices=tuple(choices.STRUCTURE_SETS),
        default="myocardium",
        help="what the model segments: the myocardium (default, the paper's binary mask M) or "
        "all three ACDC structures (RV cavity, myocardium, LV cavity: a 3-channel M)",
    )
    p.add_argument(
        "--model-type",
        choices=choices.MODEL_TYPES,
        default="sdnet",
        help="sdnet (default), or the baselines unet (Dice only) and gan "
        "(U-Net + mask discriminator)",
    )
    p.add_argument(
        "--labelled",
        type=_labelled_count,
        default=None,
        metavar="N|all",
        help="labelled images (or volumes/patients, see --by) to keep; the other "
        "training slices form the unlabelled pool (default all: no pool)",
    )
    p.add_argument(
        "--by",
        choices=choices.LABELLED_BY,
        default="images",
        help="what --labelled counts (default images)",
    )
    p.add_argument(
        "--unlabelled",
        type=int,
        default=None,
        metavar="N",
        help="cap on the unlabelled pool (default: every other training slice)",
    )
    p.add_argument(
        "--real-masks",
        choices=choices.REAL_MASKS,
        default="all",
        help="masks the mask discriminator sees as real: all training-split masks "
        "(default, as the paper) or only the labelled subset's",
    )
    p.add_argument("--iterations", type=int, default=None, help="iteration budget")
    p.add_argument(
        "--epochs",
        type=int,
        default=200,
        help="epoch budget (default 200; an epoch is one pass over the larger stream)",
    )
    p.add_argument("--seconds", type=float, default=None, help="time budget")
    p.add_argument(
        "--patience",
        type=int,
        default=20,
        help="epochs without a better validation Dice before stopping (default "
        "20; 0: never stop early)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="slices per batch (default 4)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="labelled subset, shuffling, augmentation, initialisation (default 0)",
    )
    p.add_argument("--no-augment", action="store_true", help="no data augmentation")
    p.add_argument(
        "--scanner-augment",
        action="store_true",
        help="add scanner/protocol-shift MR augmentation (bias field, random intensity curves, "
        "gamma, blur, sharpening, lower resolution, noise; MONAI) for other vendors",
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="MODEL",
        help="start from this checkpoint's weights (same preset), e.g. a unet pre-training "
        "continued with the SDNet losses",
    )
    p.add_argument(
        "--freeze",
        action="append",
        default=[],
        metavar="PREFIX",
        help="parameter-name prefix not to train (repeatable), e.g. decomposer.down",
    )
    p.add_argument(
        "--reinit",
        action="append",
        default=[],
        metavar="PREFIX",
        help="with --init: parameter-name prefix whose weights start afresh (repeatable), "
        "e.g. reconstructor",
    )
    p.add_argument(
        "--rampup",
        type=int,
        default=0,
        metavar="N",
        help="iterations over which the unsupervised and adversarial loss weights ramp up "
        "from ~0 (default 0: none, as the paper); e.g. one epoch when training from scratch "
        "on very few labels",
    )
    p.add_argument(
        "--lr-schedule",
        choices=choices.LR_SCHEDULES,
        default="constant",
        help="learning rate over the budget: constant (default, as the paper) or cosine "
        "(down to 0 at the end of --iterations/--epochs)",
    )
    p.add_argument(
        "--select-on",
        choices=choices.SELECT_ON,
        default="dice",
        help="which validated weights to keep: best Dice (default) or, for sdnet, lowest "
        "reconstruction L1 (e.g. fitting the reconstructor of a frozen segmenter)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (default: CUDA, then MPS, then CPU), cuda, cuda:N, mps or cpu",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for PyTorch (default: its own choice); 1 is much faster when other "
        "processes keep the cores busy",
    )
    p.add_argument(
        "--h5-spacing",
        type=float,
        default=None,
        metavar="MM",
        help="H5: assumed in-plane spacing of the files (they store none); default: "
        "their pixel is the model's pixel. Use about 1.5 with the tiny preset",
    )
    p.add_argument(
        "--max-volumes",
        type=int,
        default=None,
        metavar="N",
        help="H5: load only the first N volumes of train.list (quick runs)",
    )
    p.add_argument(
        "--val-volumes",
        type=int,
        default=None,
        metavar="N",
        help="H5: validate on the first N volumes of val.list (0: no validation)",
    )
    p.add_argument(
        "--patients",
        nargs="+",
        default=None,
        metavar="ID",
        help="NIfTI: patients to use (e.g. 3 4 patient005; default all)",
    )
    p.add_argument(
        "--val-patients",
        nargs="*",
        default=None,
        metavar="ID",
        help="NIfTI: validation patients (default a seeded 20%%; none given: no validation)",
    )
    p.add_argument(
        "--split",
        type=Path,
        default=None,
        metavar="H5_DIR",
        help="NIfTI: refuse patients that this ACDC H5 split holds out (val/test)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="model file (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the stopped training saved beside -o (OUTPUT.resume.safetensors); "
        "give the same options (the budgets may be raised)",
    )
    p.add_argument(
        "--checkpoint-minutes",
        type=_positive_float,
        default=5.0,
        metavar="MIN",
        help="save the resumable training state every MIN minutes (default 5; also saved on "
        "Ctrl-C and SIGTERM)",
    )
    _COMMANDS["train"] = _with_one_line_warnings("train", _cmd_train)
