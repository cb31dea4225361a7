"""The ``napari-sdnet`` command line: a thin shell over the package's functions.

Every sub-command is one function ``_cmd_<name>(args)``; errors caused by bad input are raised
as :class:`napari_sdnet.errors.SDNetError` and printed as one line (exit status 2), never as a
traceback. Heavy imports (torch, napari) happen inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from napari_sdnet import __version__, choices
from napari_sdnet.errors import CheckpointError, InputError, SDNetError

_COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def _cmd_view(args: argparse.Namespace) -> int:
    from napari_sdnet._napari.launch import launch_viewer

    launch_viewer(
        paths=[str(p) for p in args.files],
        sample=not args.files,
        screenshot=args.screenshot,
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if not args.headless:
        from napari_sdnet._napari.launch import launch_viewer

        launch_viewer(paths=None, sample=True, model=args.model, device=args.device)
        return 0
    if args.output is None:
        raise InputError("--headless needs -o/--output DIR")
    import os
    import shutil
    import subprocess

    no_display = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if no_display:
        # napari draws with OpenGL, which needs an X server: run the same command under Xvfb
        xvfb = shutil.which("xvfb-run")
        if xvfb is None or os.environ.get("SDNET_DEMO_UNDER_XVFB"):
            raise InputError(
                "no display: napari needs an X server; install xvfb (xvfb-run) or set DISPLAY"
            )
        argv = ["demo", "--headless", "-o", str(args.output), "--model", str(args.model)]
        argv += ["--device", args.device, "--frames", args.frames]
        argv += ["--overwrite"] if args.overwrite else []
        env = {**os.environ, "SDNET_DEMO_UNDER_XVFB": "1"}
        screen = ["-s", "-screen 0 1600x1000x24"]
        cmd = [xvfb, "-a", *screen, sys.executable, "-m", "napari_sdnet.cli", *argv]
        return subprocess.call(cmd, env=env)
    from napari_sdnet._napari.launch import run_headless_demo

    frames = "current frame" if args.frames == "current" else "all frames"
    written = run_headless_demo(
        args.output, args.model, args.device, overwrite=args.overwrite, frames=frames
    )
    print(f"wrote {written[0]} (myocardium = 2, lined up with the sample study)")
    print(f"wrote {written[1]} (screenshot of the napari window)")
    return 0


def _cmd_phantom(args: argparse.Namespace) -> int:
    from napari_sdnet.phantom import write_phantom_nifti

    image_path, labels_path = write_phantom_nifti(
        args.output,
        n_frames=args.frames,
        n_slices=args.slices,
        shape=(args.size, args.size),
        spacing=(args.spacing, args.spacing),
        seed=args.seed,
    )
    print(f"wrote {image_path}\nwrote {labels_path}")
    return 0


# --------------------------------------------------------------------------------------------
# model commands: predict, evaluate, finetune, info (thin shells over napari_sdnet.api)
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _one_line_warnings(command: str) -> Iterator[None]:
    """Show Python warnings as ``napari-sdnet CMD: warning: ...`` lines on stderr."""
    import warnings

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        print(f"napari-sdnet {command}: warning: {text}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def _with_one_line_warnings(
    command: str, func: Callable[[argparse.Namespace], int]
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with _one_line_warnings(command):
            return func(args)

    return run


@contextlib.contextmanager
def _progress_bar(desc: str, unit: str) -> Iterator[Callable[[int, int | None], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr (only on a terminal)."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False)

    def update(done: int, total: int | None) -> None:
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def _check_new_file(path: Path, overwrite: bool, what: str) -> None:
    """Refuse an existing output (unless ``overwrite``) or a missing folder before any work."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a {what} file name")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: file exists; refusing to overwrite (pass --overwrite)")
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")


def _check_nifti_output(path: Path, overwrite: bool) -> None:
    from napari_sdnet.io.nifti import is_nifti_path

    if not is_nifti_path(path):
        raise InputError(f"{path}: output must be a NIfTI file name ending in .nii.gz or .nii")
    _check_new_file(path, overwrite, "NIfTI")


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_sdnet import api
    from napari_sdnet.io.nifti import read_nifti, write_nifti

    outputs = [args.output] + ([args.reconstruction] if args.reconstruction else [])
    for out in outputs:
        _check_nifti_output(out, args.overwrite)
        if args.input.exists() and _same_file(out, args.input):
            raise InputError(f"{out}: would overwrite the input image")
    if args.reconstruction and _same_file(args.output, args.reconstruction):
        raise InputError("the mask and the reconstruction need different file names")
    vol = read_nifti(args.input)
    if vol.is_labels:
        raise InputError(f"{args.input}: looks like a label map, not an image")
    model = api.load_model(args.model, args.device)
    with _progress_bar("segmenting", "slice") as progress:
        seg = api.segment(
            model, vol.data, vol.geometry.spacing, batch_size=args.batch_size, progress=progress
        )
    labels = seg.mask if args.binary else api.to_acdc_labels(seg.mask)
    write_nifti(args.output, labels, vol.geometry, dtype=np.uint8, overwrite=args.overwrite)
    flat = seg.mask.reshape(-1, *seg.mask.shape[-2:])
    n_found = int(flat.any(axis=(1, 2)).sum())
    value = 1 if args.binary else api.MYOCARDIUM
    print(
        f"wrote {args.output} (myocardium = {value}; found on {n_found} of {len(flat)} slices, "
        f"shape {vol.data.shape})"
    )
    if args.reconstruction:
        write_nifti(
            args.reconstruction,
            seg.reconstruction_intensity,
            vol.geometry,
            dtype=np.float32,
            overwrite=args.overwrite,
        )
        print(f"wrote {args.reconstruction} (reconstruction, in the input's intensity units)")
    return 0


def _write_json(path: Path, data: dict, overwrite: bool) -> None:
    import json
    import os
    import tempfile

    _check_new_file(path, overwrite, "JSON")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_sdnet import api

    if args.json is not None:
        _check_new_file(args.json, args.overwrite, "JSON")
    model = api.load_model(args.model, args.device)
    with _progress_bar("evaluating", "volume") as progress:
        result = api.evaluate(
            model,
            args.data,
            split=args.split,
            progress=progress,
            batch_size=args.batch_size,
            h5_spacing=args.h5_spacing,
        )
    width = max([len("volume"), *(len(v["volume_id"]) for v in result.per_volume)])
    print(f"{'volume':<{width}}  slices  myocardium Dice")
    for v in result.per_volume:
        print(f"{v['volume_id']:<{width}}  {v['n_slices']:>6}  {v['dice']:.4f}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} volume(s) without labelled slices")
    if result.n_volumes:
        print(
            f"mean myocardium Dice (3D, per volume, native grid): "
            f"{result.mean_myocardium_dice:.4f} +- {result.std:.4f} over {result.n_volumes} "
            f"volume(s) ({result.layout}{', ' + result.split if result.split else ''})"
        )
    else:
        print("no labelled volume found: nothing was evaluated")
    if args.json is not None:
        data = result.to_dict()
        data["data"] = str(args.data)
        data["model_info"] = {
            "preset": model.config.name,
            "model_type": model.model_type,
            "training": model.info.training,
        }
        _write_json(args.json, data, args.overwrite)
        print(f"wrote {args.json}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    import math

    from napari_sdnet import api
    from napari_sdnet.io.nifti import read_nifti

    if args.output.suffix != ".safetensors":
        raise InputError(f"{args.output}: model files end in .safetensors")
    _check_new_file(args.output, args.overwrite, "model")
    seconds, steps = args.seconds, args.steps
    if seconds is None and steps is None:
        steps = api.FINETUNE_STEPS
        print(
            f"napari-sdnet finetune: no --seconds/--steps given; training for {steps} steps",
            file=sys.stderr,
        )
    image = read_nifti(args.image)
    if image.is_labels:
        raise InputError(f"{args.image}: looks like a label map; --image takes the image")
    labels = read_nifti(args.labels)
    if labels.data.shape != image.data.shape:
        raise InputError(
            f"{args.labels}: shape {labels.data.shape} differs from the image's "
            f"{image.data.shape}; the labels must be painted on the image's grid"
        )
    spacing = image.geometry.spacing
    if not all(
        math.isclose(a, b, rel_tol=1e-3)
        for a, b in zip(labels.geometry.spacing[-2:], spacing[-2:], strict=True)
    ):
        raise InputError(
            f"{args.labels}: in-plane voxel size {labels.geometry.spacing[-2:]} differs from the "
            f"image's {spacing[-2:]}"
        )
    model = api.load_model(args.model, args.device)
    gen = api.finetune(
        model,
        image.data,
        labels.data,
        spacing,
        seconds=seconds,
        steps=steps,
        lr=api.FINETUNE_LR if args.lr is None else args.lr,
        lr_schedule=args.lr_schedule or api.FINETUNE_SCHEDULE,
        freeze=tuple(args.freeze),
        device=args.device,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    from tqdm import tqdm

    total = steps if steps is not None else seconds
    unit = "step" if steps is not None else "s"
    with tqdm(
        total=total, desc="fine-tuning", unit=unit, file=sys.stderr, disable=None, leave=False
    ) as bar:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                new = stop.value
                break
            done = p.iteration if steps is not None else min(p.elapsed, seconds or p.elapsed)
            bar.update(done - bar.n)
            if p.losses:
                bar.set_postfix_str(
                    " ".join(f"{k}={v:.3f}" for k, v in p.losses.items() if k.endswith("loss"))
                )
    new.save(args.output, overwrite=args.overwrite)
    record = new.info.training["finetuned"][-1]
    print(
        f"wrote {args.output} (fine-tuned on {record['labelled_slices']} painted slice(s) and "
        f"{record['unlabelled_slices']} unlabelled; {record['steps']} steps in "
        f"{record['seconds']:.1f} s)"
    )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from napari_sdnet import api
    from napari_sdnet.training.checkpoint import read_checkpoint_info

    if str(args.model).strip().lower() == "bundled":
        path = api.bundled_model_path()
        if not path.is_file():
            raise CheckpointError("no bundled model is installed yet; pass a model file")
    else:
        path = Path(args.model)
    try:
        info = read_checkpoint_info(path)
    except CheckpointError:
        if path.suffix.lower() in (".pt", ".pth", ".ckpt", ".pkl"):
            raise CheckpointError(
                f"{path.name}: napari-sdnet reads its own .safetensors model files only; "
                f"{path.suffix} files (PyTorch pickles) are never loaded"
            ) from None
        raise
    print(f"file           : {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(info.summary())
    return 0


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    """The model sub-commands: predict, evaluate, finetune, info."""
    devices = ("auto", "cuda", "mps", "cpu")

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model",
            default="bundled",
            help="'bundled' (default) or a napari-sdnet .safetensors model file",
        )
        p.add_argument(
            "--device", default="auto", help=f"{'|'.join(devices)} or cuda:N (default auto)"
        )
        p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")

    p = sub.add_parser(
        "predict",
        help="segment the myocardium in a 2D/3D/4D NIfTI image (mask with the input's geometry)",
    )
    p.add_argument("input", type=Path, help="image (.nii or .nii.gz), 2D, 3D or 4D cine")
    p.add_argument("-o", "--output", type=Path, required=True, help="mask file (.nii.gz)")
    model_options(p)
    p.add_argument(
        "--binary", action="store_true", help="myocardium = 1 (default 2, the ACDC convention)"
    )
    p.add_argument(
        "--reconstruction",
        type=Path,
        default=None,
        help="also write the SDNet reconstruction (float32, the input's intensity units)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _COMMANDS["predict"] = _with_one_line_warnings("predict", _cmd_predict)

    p = sub.add_parser(
        "evaluate",
        help="per-volume 3D myocardium Dice of a model on a labelled dataset (native grid)",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="ACDC H5 split folder, ACDC NIfTI patient folder(s) or a cine NIfTI with <name>_gt",
    )
    p.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="H5 split (default test)"
    )
    model_options(p)
    p.add_argument(
        "--h5-spacing",
        type=float,
        default=None,
        help="in-plane mm to assume for H5 volumes (default: what the model was trained with "
        "on H5 data, else the model's pixel size)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing JSON file")
    _COMMANDS["evaluate"] = _with_one_line_warnings("evaluate", _cmd_evaluate)

    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on the myocardium (label 2) painted on a few slices of a study",
    )
    p.add_argument(
        "--model", default="bundled", help="'bundled' (default) or a .safetensors model file"
    )
    p.add_argument("--image", type=Path, required=True, help="image (.nii.gz), 2D/3D/4D")
    p.add_argument(
        "--labels",
        type=Path,
        required=True,
        help="labels on the image's grid; slices with myocardium (2) painted are used",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="new model (.safetensors)")
    p.add_argument(
        "--seconds", type=float, default=None, help="time budget (with --steps: a cap)"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="step budget (default without --seconds: api.FINETUNE_STEPS, 150, about a "
        "minute on 2 CPU cores)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: api.FINETUNE_LR, 3e-4)",
    )
    p.add_argument(
        "--lr-schedule",
        choices=choices.LR_SCHEDULES,
        default=None,
        help="cosine (default, api.FINETUNE_SCHEDULE): the rate falls to 0 at the end of the "
        "budget; or constant",
    )
    p.add_argument(
        "--freeze",
        action="append",
        default=[],
        metavar="PREFIX",
        help="parameter-name prefix not to train, e.g. reconstructor (repeatable)",
    )
    p.add_argument(
        "--device", default=None, help="auto|cuda|mps|cpu (default: where the model loads)"
    )
    p.add_argument("--batch-size", type=int, default=4, help="slices per batch (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    _COMMANDS["finetune"] = _with_one_line_warnings("finetune", _cmd_finetune)

    p = sub.add_parser("info", help="describe a model file (preset, model type, data, metrics)")
    p.add_argument("model", help="'bundled' or a .safetensors model file")
    _COMMANDS["info"] = _with_one_line_warnings("info", _cmd_info)


# --------------------------------------------------------------------------------------------
# train (training/recipe.py: datasets + trainer + checkpoint)
# --------------------------------------------------------------------------------------------


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

    gen = train_model(
        args.data,
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
        on_data=on_data,
    )
    bar = tqdm(desc="train", unit="it", file=sys.stderr, disable=None, leave=False)
    last_val = None
    result = None
    try:
        try:
            while True:
                try:
                    progress = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                if progress.done:
                    continue
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
                    bar.write(
                        f"iteration {progress.iteration} (epoch {progress.epoch}): val Dice "
                        f"{progress.val_dice:.4f}{recon}; kept: iteration "
                        f"{progress.best_iteration} (Dice {progress.best_val_dice:.4f})",
                        file=sys.stderr,
                    )
                postfix = describe_losses(progress.losses)
                if last_val is not None:
                    postfix += f" val={last_val:.3f}"
                bar.set_postfix_str(postfix, refresh=False)
        except KeyboardInterrupt:
            # Stop training, but still write the best weights so far.
            try:
                gen.throw(KeyboardInterrupt)
            except StopIteration as stop:
                result = stop.value
    finally:
        bar.close()
    if result is None:  # pragma: no cover - train_model always returns a result
        raise KeyboardInterrupt
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
    return 130 if result.stop_reason == "interrupted" else 0


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
    _COMMANDS["train"] = _with_one_line_warnings("train", _cmd_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-sdnet",
        description="SDNet myocardium segmentation for cardiac cine MR (napari plugin and tools).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "view",
        help="open napari with the plugin (and the bundled sample study when no file is given)",
    )
    p.add_argument("files", nargs="*", type=Path, help="NIfTI files to open (.nii, .nii.gz)")
    p.add_argument(
        "--screenshot",
        type=Path,
        default=None,
        help="save a screenshot of the window to this PNG and exit (works under Xvfb)",
    )
    _COMMANDS["view"] = _cmd_view

    p = sub.add_parser(
        "demo",
        help="the main job: napari with the sample study and the segmentation widget; "
        "--headless segments it and writes the mask and a screenshot",
    )
    p.add_argument(
        "--headless",
        action="store_true",
        help="no window: segment the sample study through the widget, write "
        "DIR/<name>_myocardium.nii.gz and DIR/screenshot.png (uses Xvfb when there is no display)",
    )
    p.add_argument("-o", "--output", type=Path, default=None, help="output folder (--headless)")
    p.add_argument(
        "--model", default="bundled", help="'bundled' (default) or a .safetensors model file"
    )
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    p.add_argument(
        "--frames",
        default="all",
        choices=("all", "current"),
        help="--headless: segment every frame (default) or only the phase shown",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _COMMANDS["demo"] = _with_one_line_warnings("demo", _cmd_demo)

    p = sub.add_parser(
        "phantom", help="write a synthetic short-axis cine phantom and its labels as NIfTI"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    p.add_argument("--frames", type=int, default=8, help="cardiac phases (default 8)")
    p.add_argument("--slices", type=int, default=6, help="short-axis slices (default 6)")
    p.add_argument("--size", type=int, default=128, help="in-plane pixels (default 128)")
    p.add_argument("--spacing", type=float, default=1.5, help="in-plane mm (default 1.5)")
    p.add_argument("--seed", type=int, default=0)
    _COMMANDS["phantom"] = _cmd_phantom
    _add_model_commands(sub)
    _add_train_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(_COMMANDS[args.command](args) or 0)
    except SDNetError as exc:
        print(f"napari-sdnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-sdnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `napari-sdnet info M | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
