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
    """Refuse, before any work, an output that cannot be written: an existing file (unless
    ``overwrite``), a missing or read-only folder, a full disk (see
    :func:`napari_sdnet.io.files.check_destination`)."""
    from napari_sdnet.io.files import check_destination

    check_destination(path, overwrite=overwrite, what=what)


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
    from napari_sdnet.io import read_image
    from napari_sdnet.io.nifti import write_nifti

    outputs = [args.output] + ([args.reconstruction] if args.reconstruction else [])
    for out in outputs:
        _check_nifti_output(out, args.overwrite)
        if args.input.exists() and _same_file(out, args.input):
            raise InputError(f"{out}: would overwrite the input image")
    if args.reconstruction and _same_file(args.output, args.reconstruction):
        raise InputError("the mask and the reconstruction need different file names")
    if args.dicom_seg is not None:
        if not args.dicom_seg.name.lower().endswith(".dcm"):
            raise InputError(f"{args.dicom_seg}: a DICOM SEG file name must end in .dcm")
        _check_new_file(args.dicom_seg, args.overwrite, "DICOM SEG")
        if any(_same_file(args.dicom_seg, out) for out in outputs):
            raise InputError(f"{args.dicom_seg}: the DICOM SEG needs its own file name")
    vol = read_image(args.input)
    if vol.is_labels and not args.as_image:
        raise InputError(
            f"{args.input}: looks like a label map, not an image (integers with few values); "
            "if it is an image, pass --as-image"
        )
    image = vol.data.astype(np.float32) if vol.is_labels else vol.data
    dicom = getattr(vol, "dicom", None)
    if args.dicom_seg is not None and dicom is None:
        raise InputError(
            f"{args.input}: --dicom-seg needs a DICOM series as input (a folder or .dcm file); "
            "a DICOM SEG must reference its source images"
        )
    model = api.load_model(args.model, args.device)
    with _progress_bar("segmenting", "slice") as progress:
        seg = api.segment(
            model,
            image,
            vol.geometry.spacing,
            batch_size=args.batch_size,
            progress=progress,
            precision=args.precision,
            latents=args.reconstruction is not None,  # Z only feeds the reconstruction here
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
    if args.dicom_seg is not None and not seg.mask.any():
        print(
            f"napari-sdnet predict: warning: no myocardium found; {args.dicom_seg} not written "
            "(a DICOM SEG needs at least one segment)",
            file=sys.stderr,
        )
    elif args.dicom_seg is not None:
        from napari_sdnet.io.seg import write_dicom_seg

        write_dicom_seg(
            args.dicom_seg, api.to_acdc_labels(seg.mask), dicom, overwrite=args.overwrite
        )
        print(
            f"wrote {args.dicom_seg} (DICOM SEG: segment 'Myocardium', SCT 49848007, "
            f"referencing {dicom.label()})"
        )
    return 0


def _write_json(path: Path, data: dict, overwrite: bool) -> None:
    """Write ``data`` as JSON atomically; if the destination fails at the last moment, the
    file is rescued (:class:`~napari_sdnet.errors.RescuedWrite` names where)."""
    import json

    from napari_sdnet.io.files import write_or_rescue

    text = json.dumps(data, indent=1) + "\n"

    def write(tmp: Path) -> None:
        with open(tmp, "x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    write_or_rescue(path, write, overwrite=overwrite)


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

        def show(p) -> None:
            done = p.iteration if steps is not None else min(p.elapsed, seconds or p.elapsed)
            bar.update(done - bar.n)
            if p.losses:
                bar.set_postfix_str(
                    " ".join(f"{k}={v:.3f}" for k, v in p.losses.items() if k.endswith("loss"))
                )

        new = _drive(gen, show)
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


def _cmd_measure(args: argparse.Namespace) -> int:
    from napari_sdnet import api, cardiac
    from napari_sdnet.io.nifti import read_nifti

    if len(args.inputs) not in (1, 2):
        raise InputError("give one 4D cine, or an ED and an ES volume (in that order)")
    outputs = [p for p in (args.json, args.csv) if p is not None]
    for out in outputs:
        _check_new_file(out, args.overwrite, out.suffix.lstrip(".").upper() or "output")
        if any(p.exists() and _same_file(out, p) for p in args.inputs):
            raise InputError(f"{out}: would overwrite an input")
    if args.json is not None and args.csv is not None and _same_file(args.json, args.csv):
        raise InputError("--json and --csv need different file names")
    two = len(args.inputs) == 2
    if two and (args.ed is not None or args.es is not None):
        raise InputError("--ed/--es choose frames of a 4D cine; with two volumes they are given")
    if args.convention != "acdc" and not args.labels:
        raise InputError("--convention applies to --labels (the model writes ACDC labels)")
    vols = [read_nifti(p) for p in args.inputs]
    for path, vol in zip(args.inputs, vols, strict=True):
        if args.labels and not vol.is_labels:
            raise InputError(
                f"{path}: does not look like a label map (not integers, or more than 32 "
                "values); drop --labels to segment an image"
            )
        if not args.labels and vol.is_labels:
            raise InputError(f"{path}: looks like a label map; pass --labels to measure it")
        if vol.data.ndim != (3 if two else 4):
            what = "an ED and an ES volume must be 3D each" if two else "give a 4D cine, or an ED "
            what += "" if two else "and an ES volume"
            raise InputError(f"{path}: is {vol.data.ndim}D {vol.data.shape}; {what}")
    spacing = [v.geometry.spacing for v in vols]
    time_unit = vols[0].geometry.time_unit
    extra: dict = {"inputs": [str(p) for p in args.inputs]}
    if args.labels:
        extra["labels_from"] = "label files"
        if two:
            result = cardiac.measure_ed_es(
                vols[0].data, vols[1].data, spacing[0], spacing[1], convention=args.convention
            )
        else:
            result = cardiac.measure_labels(
                vols[0].data, spacing[0], ed=args.ed, es=args.es, convention=args.convention,
                time_unit=time_unit,
            )
    else:
        model = api.load_model(args.model, args.device)
        extra["labels_from"] = f"model {model.source} ({model.model_type}, {model.config.name})"
        with _progress_bar("segmenting", "slice") as progress:
            result = api.measure(
                model, vols[0].data, spacing[0], vols[1].data if two else None,
                spacing[1] if two else None, ed=args.ed, es=args.es, time_unit=time_unit,
                batch_size=args.batch_size, progress=progress,
            )
    shape = " and ".join(str(v.data.shape) for v in vols)
    kind = "ED and ES volumes" if two else f"4D cine, {vols[0].data.shape[0]} frames"
    print(f"cardiac function of {', '.join(p.name for p in args.inputs)} ({kind}, {shape})")
    print(f"labels: {extra['labels_from']}; {cardiac.CONVENTION_TEXT[result.convention]}; "
          f"voxel {result.voxel_ml[0] * 1000:.3f} mm^3; no basal-slice rule (every voxel counts)")
    print(result.format_table())
    for note in result.notes:
        print(f"note: {note}")
    for text in result.warnings:
        print(f"napari-sdnet measure: warning: {text}", file=sys.stderr)
    if args.json is not None:
        cardiac.write_json(result, args.json, overwrite=args.overwrite, extra=extra)
        print(f"wrote {args.json}")
    if args.csv is not None:
        cardiac.write_csv(result, args.csv, overwrite=args.overwrite)
        print(f"wrote {args.csv} (per-frame volumes)")
    return 0


def _add_measure_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "measure",
        help="cardiac function: LV/RV volumes, EF, LV mass from a cine (or ED + ES volumes), "
        "segmented by the model or from label maps (--labels)",
        description="Volumes = voxel count x voxel volume; ED/ES = frames of largest/smallest LV "
        "cavity volume (override with --ed/--es); EF = (EDV - ESV) / EDV; LV mass = myocardium "
        "at ED x 1.05 g/ml. See docs/cardiac_function.md.",
    )
    p.add_argument(
        "inputs", nargs="+", type=Path, metavar="NIFTI",
        help="one 4D cine, or an ED and an ES volume in that order (images, or label maps "
        "with --labels)",
    )
    p.add_argument(
        "--labels", action="store_true",
        help="the inputs are label maps (expert or corrected), measured as they are",
    )
    p.add_argument(
        "--convention", choices=("acdc", "mnms", "binary"), default="acdc",
        help="--labels: label values: acdc (1 RV, 2 myocardium, 3 LV; default), mnms (1 LV, "
        "2 myocardium, 3 RV) or binary (1 myocardium)",
    )
    p.add_argument("--ed", type=int, default=None, help="cine: ED frame (0-based; default auto)")
    p.add_argument("--es", type=int, default=None, help="cine: ES frame (0-based; default auto)")
    p.add_argument(
        "--model", default="bundled", help="'bundled' (default) or a .safetensors model file"
    )
    p.add_argument("--device", default="auto", help="auto|cuda|mps|cpu or cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    p.add_argument("--json", type=Path, default=None, help="write the indices to this JSON file")
    p.add_argument("--csv", type=Path, default=None, help="write the per-frame volumes as CSV")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _COMMANDS["measure"] = _with_one_line_warnings("measure", _cmd_measure)


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
        help="segment the myocardium in a 2D/3D/4D NIfTI image or a DICOM cine series (mask "
        "with the input's geometry)",
    )
    p.add_argument(
        "input",
        type=Path,
        help="image (.nii or .nii.gz, 2D, 3D or 4D cine) or a DICOM series (folder or .dcm file)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="mask file (.nii.gz)")
    model_options(p)
    p.add_argument(
        "--binary", action="store_true", help="myocardium = 1 (default 2, the ACDC convention)"
    )
    p.add_argument(
        "--as-image",
        action="store_true",
        help="segment the input even if it looks like a label map (e.g. a uint8 image with "
        "few grey levels)",
    )
    p.add_argument(
        "--reconstruction",
        type=Path,
        default=None,
        help="also write the SDNet reconstruction (float32, the input's intensity units)",
    )
    p.add_argument(
        "--dicom-seg",
        type=Path,
        default=None,
        metavar="OUT.dcm",
        help="DICOM input: also write the mask as a DICOM Segmentation referencing the series",
    )
    from napari_sdnet.device import PRECISION_CHOICES

    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="auto",
        help="inference precision (default auto: bf16 on CPUs with native bf16, fp16 on CUDA, "
        "else fp32; masks agree with fp32 at Dice >= 0.995)",
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
        help="ACDC H5 split folder, ACDC NIfTI patient folder(s), a cine NIfTI with <name>_gt, "
        "or a DICOM series folder holding a DICOM SEG of its contours",
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


def _positive_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
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


def _drive(gen, on_progress):
    """Run a training generator to its return value, calling ``on_progress`` on each report.

    Ctrl-C (or SIGTERM while :func:`_stop_on_signals` is not watching) is thrown into the
    generator, which stops, saves what it has and returns (train_model does)."""
    try:
        while True:
            try:
                progress = next(gen)
            except StopIteration as stop:
                return stop.value
            on_progress(progress)
    except KeyboardInterrupt:
        try:
            gen.throw(KeyboardInterrupt)
        except StopIteration as stop:
            return stop.value
        raise


#: Exit status of a training stopped by a signal: 128 + the signal's number, as shells do.
_STOP_STATUS = {"interrupted": 130, "terminated": 143}


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[Callable[[], str | None]]:
    """While active, SIGTERM (cluster time limit, ``timeout``, ``docker stop``) and a first
    Ctrl-C ask the work to stop at the next step (``stop()`` returns the reason) instead of
    killing it; a second Ctrl-C interrupts at once. Handlers are restored afterwards."""
    import signal

    reason: list[str] = []

    def on_term(signum, frame) -> None:
        reason.append("terminated")

    def on_int(signum, frame) -> None:
        if reason:
            raise KeyboardInterrupt
        reason.append("interrupted")
        print(
            "\nnapari-sdnet: stopping after this step (Ctrl-C again to stop at once)",
            file=sys.stderr,
        )

    try:
        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, on_term),
            signal.SIGINT: signal.signal(signal.SIGINT, on_int),
        }
    except ValueError:  # not the main thread: signals stay as they are
        yield lambda: None
        return
    try:
        yield lambda: reason[0] if reason else None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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


def _cmd_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_sdnet.batch import run_batch

    if args.scheduler is not None and args.workers is not None:
        raise InputError("--workers is for local runs; with --scheduler the cluster's workers run")

    def report(row: dict) -> None:
        if row.get("status") == "error":
            error = row.get("error") or ""
            text = error if error.startswith(row["file"]) else f"{row['file']}: {error}"
            tqdm.write(f"napari-sdnet batch: failed: {text}", file=sys.stderr)

    with _progress_bar("batch", "study") as progress:
        summary = run_batch(
            args.inputs, args.output, model=args.model, device=args.device,
            workers=args.workers or 1, threads=args.threads, scheduler=args.scheduler,
            binary=args.binary, overwrite=args.overwrite, progress=progress, on_row=report,
        )
    print(f"batch: {summary.text()}")
    print(f"wrote {summary.csv_path} ({summary.total} rows); masks in {summary.outdir}")
    return 1 if summary.failed else 0


def _add_batch_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="segment and measure a cohort: one mask per input and measurements.csv; resumable, "
        "local worker processes or a Dask cluster (--scheduler)",
        description="Inputs: NIfTI files, DICOM series folders, folders and glob patterns of them. "
        "Writes OUTDIR/<stem>_seg.nii.gz per input and OUTDIR/measurements.csv (one row per "
        "input: status, error, volumes, ED/ES, EF, LV mass). A rerun skips finished inputs and "
        "retries failed ones. Exit status 1 when some input failed. See docs/batch.md.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI file, DICOM folder, folder "
                   "or quoted glob pattern ('cohort/*/sa.nii.gz', '**' spans folders)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR",
                   help="output folder (created if needed)")
    p.add_argument("--model", default="bundled",
                   help="'bundled' (default) or a .safetensors model file (on a cluster: a path "
                   "the workers can read)")
    p.add_argument("--device", default="auto", help="auto|cuda|mps|cpu or cuda:N, per worker")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local worker processes, each loading the model once (default 1: this "
                   "process)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="torch threads per worker (default: the cores shared among the workers)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on an existing Dask cluster: scheduler address (tcp://host:8786) or "
                   "scheduler file (.json); needs napari-sdnet[cluster]")
    p.add_argument("--binary", action="store_true",
                   help="myocardium = 1 in the masks (default 2, the ACDC convention)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo every input and replace existing masks")
    _COMMANDS["batch"] = _with_one_line_warnings("batch", _cmd_batch)


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
    _add_measure_command(sub)
    _add_batch_command(sub)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` runs (temporary files go)."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (e.g. called from a worker): leave signals alone
        previous = None
    try:
        return int(_COMMANDS[args.command](args) or 0)
    except SDNetError as exc:
        print(f"napari-sdnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, _Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        print(f"napari-sdnet {args.command}: {what}; nothing more was written", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `napari-sdnet info M | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
