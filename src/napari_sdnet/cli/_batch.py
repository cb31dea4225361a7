"""napari-sdnet batch: cohorts, locally or on a Dask cluster (napari_sdnet.batch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_sdnet.cli._common import _COMMANDS, _progress_bar, _with_one_line_warnings
from napari_sdnet.errors import InputError


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
            args.inputs,
            args.output,
            model=args.model,
            device=args.device,
            workers=args.workers or 1,
            threads=args.threads,
            scheduler=args.scheduler,
            binary=args.binary,
            overwrite=args.overwrite,
            progress=progress,
            on_row=report,
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
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="NIfTI file, DICOM folder, folder "
        "or quoted glob pattern ('cohort/*/sa.nii.gz', '**' spans folders)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUTDIR",
        help="output folder (created if needed)",
    )
    p.add_argument(
        "--model",
        default="bundled",
        help="'bundled' (default) or a .safetensors model file (on a cluster: a path "
        "the workers can read)",
    )
    p.add_argument("--device", default="auto", help="auto|cuda|mps|cpu or cuda:N, per worker")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="local worker processes, each loading the model once (default 1: this process)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="T",
        help="torch threads per worker (default: the cores shared among the workers)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on an existing Dask cluster: scheduler address (tcp://host:8786) or "
        "scheduler file (.json); needs napari-sdnet[cluster]",
    )
    p.add_argument(
        "--binary",
        action="store_true",
        help="myocardium = 1 in the masks (default 2, the ACDC convention)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="redo every input and replace existing masks"
    )
    _COMMANDS["batch"] = _with_one_line_warnings("batch", _cmd_batch)
