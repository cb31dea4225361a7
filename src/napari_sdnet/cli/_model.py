"""The model commands: predict, evaluate, finetune, info (thin shells over napari_sdnet.api)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from napari_sdnet import choices
from napari_sdnet.cli._common import (
    _COMMANDS,
    _check_new_file,
    _check_nifti_output,
    _drive,
    _progress_bar,
    _same_file,
    _with_one_line_warnings,
    _write_json,
)
from napari_sdnet.device import DEVICE_CHOICES
from napari_sdnet.errors import InputError

#: ``predict --engine`` (the rule: napari_sdnet.onnx_engine.choose_engine)
ENGINE_HELP = (
    "inference engine (default auto: ONNX Runtime, fp32, when only the mask is wanted on the "
    "CPU at precision auto/fp32 and onnxruntime is installed; the model is exported once to "
    "$SDNET_CACHE_DIR/onnx, default ~/.cache/napari-sdnet/onnx, and later runs do not import "
    "torch; torch otherwise: --reconstruction, GPUs, bf16/fp16, or an unwritable cache)"
)


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_sdnet.io import read_image
    from napari_sdnet.io.nifti import write_nifti
    from napari_sdnet.onnx_engine import OnnxModel, load_predictor
    from napari_sdnet.segmentation import segment, to_acdc_labels

    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
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
    # Z only feeds the reconstruction here; the mask alone may run on ONNX Runtime (no torch)
    model = load_predictor(
        args.model,
        args.device,
        engine=args.engine,
        outputs=("mask", "z") if args.reconstruction else ("mask",),
        precision=args.precision,
        threads=args.threads,
    )
    if args.threads is not None and not isinstance(model, OnnxModel):
        import torch

        torch.set_num_threads(args.threads)
    with _progress_bar("segmenting", "slice") as progress:
        seg = segment(
            model,
            image,
            vol.geometry.spacing,
            batch_size=args.batch_size,
            progress=progress,
            precision=args.precision,
            latents=args.reconstruction is not None,
        )
    several = len(seg.structures) > 1
    if args.binary:
        labels, what = seg.mask, "myocardium = 1"
    elif args.myocardium_only or not several:
        labels, what = to_acdc_labels(seg.mask), "myocardium = 2"
    else:
        labels, what = seg.labels(), "ACDC labels: 1 RV cavity, 2 myocardium, 3 LV cavity"
    if not several and not args.binary:
        what += " (this model segments the myocardium only)"
    write_nifti(args.output, labels, vol.geometry, dtype=np.uint8, overwrite=args.overwrite)
    flat = seg.mask.reshape(-1, *seg.mask.shape[-2:])
    n_found = int(flat.any(axis=(1, 2)).sum())
    print(
        f"wrote {args.output} ({what}; myocardium found on {n_found} of {len(flat)} slices, "
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

        seg_labels = to_acdc_labels(seg.mask) if args.myocardium_only else seg.labels()
        write_dicom_seg(args.dicom_seg, seg_labels, dicom, overwrite=args.overwrite)
        names = {1: "RV cavity", 2: "Myocardium", 3: "LV cavity"}
        present = [names[v] for v in (1, 2, 3) if np.any(seg_labels == v)]
        print(
            f"wrote {args.dicom_seg} (DICOM SEG: segments {', '.join(present) or 'none'}; "
            f"referencing {dicom.label()})"
        )
    return 0


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
        for name, value in result.mean_structure_dice().items():
            text = "not labelled in these data" if math.isnan(value) else f"{value:.4f}"
            print(f"mean {name} Dice (3D, per volume): {text}")
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
    from napari_sdnet import api
    from napari_sdnet.io import read_image
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
    image = read_image(args.image)  # a NIfTI file or a DICOM series folder
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
    from napari_sdnet.models import model_file, refuse_pickles
    from napari_sdnet.training.checkpoint import read_checkpoint_info

    path, _ = model_file(args.model)
    with refuse_pickles(path):
        info = read_checkpoint_info(path)
    print(f"file           : {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(info.summary())
    return 0


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    """The model sub-commands: predict, evaluate, finetune, info."""
    devices = DEVICE_CHOICES

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
        "--binary", action="store_true", help="myocardium alone, = 1 (default: ACDC labels)"
    )
    p.add_argument(
        "--myocardium-only",
        action="store_true",
        help="write the myocardium alone (= 2) even when the model also segments the LV and "
        "RV cavities (default: every structure the model has, ACDC labels 1 RV, 2, 3 LV)",
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
    p.add_argument("--engine", choices=choices.ENGINES, default="auto", help=ENGINE_HELP)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for inference (default: OMP_NUM_THREADS, else the physical cores)",
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
        help="fine-tune a model on the labels painted on a few slices of a study (ACDC values: "
        "2 myocardium; 1 RV and 3 LV cavity too for a three-structure model)",
    )
    p.add_argument(
        "--model", default="bundled", help="'bundled' (default) or a .safetensors model file"
    )
    p.add_argument("--image", type=Path, required=True, help="image (.nii.gz), 2D/3D/4D")
    p.add_argument(
        "--labels",
        type=Path,
        required=True,
        help="labels on the image's grid; slices with a structure of the model painted (2; or "
        "1, 2, 3 for a three-structure model) are used",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="new model (.safetensors)")
    p.add_argument("--seconds", type=float, default=None, help="time budget (with --steps: a cap)")
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
