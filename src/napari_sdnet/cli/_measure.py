"""napari-sdnet measure: cardiac function from a cine or ED + ES volumes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_sdnet.cli._common import (
    _COMMANDS,
    _check_new_file,
    _progress_bar,
    _same_file,
    _with_one_line_warnings,
)
from napari_sdnet.errors import InputError


def _cmd_measure(args: argparse.Namespace) -> int:
    from napari_sdnet import api, cardiac
    from napari_sdnet.io import read_image

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
    vols = [read_image(p) for p in args.inputs]  # NIfTI files or DICOM series folders
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
                vols[0].data,
                spacing[0],
                ed=args.ed,
                es=args.es,
                convention=args.convention,
                time_unit=time_unit,
            )
    else:
        model = api.load_model(args.model, args.device)
        extra["labels_from"] = f"model {model.source} ({model.model_type}, {model.config.name})"
        with _progress_bar("segmenting", "slice") as progress:
            result = api.measure(
                model,
                vols[0].data,
                spacing[0],
                vols[1].data if two else None,
                spacing[1] if two else None,
                ed=args.ed,
                es=args.es,
                time_unit=time_unit,
                batch_size=args.batch_size,
                progress=progress,
            )
    shape = " and ".join(str(v.data.shape) for v in vols)
    kind = "ED and ES volumes" if two else f"4D cine, {vols[0].data.shape[0]} frames"
    print(f"cardiac function of {', '.join(p.name for p in args.inputs)} ({kind}, {shape})")
    print(
        f"labels: {extra['labels_from']}; {cardiac.CONVENTION_TEXT[result.convention]}; "
        f"voxel {result.voxel_ml[0] * 1000:.3f} mm^3; no basal-slice rule (every voxel counts)"
    )
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
        "inputs",
        nargs="+",
        type=Path,
        metavar="NIFTI",
        help="one 4D cine, or an ED and an ES volume in that order (images, or label maps "
        "with --labels)",
    )
    p.add_argument(
        "--labels",
        action="store_true",
        help="the inputs are label maps (expert or corrected), measured as they are",
    )
    p.add_argument(
        "--convention",
        choices=("acdc", "mnms", "binary"),
        default="acdc",
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
