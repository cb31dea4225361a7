"""The ``napari-sdnet`` command line: a thin shell over the package's functions.

Every sub-command is one function ``_cmd_<name>(args)``; errors caused by bad input are raised
as :class:`napari_sdnet.errors.SDNetError` and printed as one line (exit status 2), never as a
traceback. Heavy imports (torch, napari) happen inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from napari_sdnet import __version__
from napari_sdnet.errors import SDNetError

_COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def _cmd_view(args: argparse.Namespace) -> int:
    from napari_sdnet._napari.launch import launch_viewer

    launch_viewer(
        paths=[str(p) for p in args.files],
        sample=not args.files,
        screenshot=args.screenshot,
    )
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
        "phantom", help="write a synthetic short-axis cine phantom and its labels as NIfTI"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    p.add_argument("--frames", type=int, default=8, help="cardiac phases (default 8)")
    p.add_argument("--slices", type=int, default=6, help="short-axis slices (default 6)")
    p.add_argument("--size", type=int, default=128, help="in-plane pixels (default 128)")
    p.add_argument("--spacing", type=float, default=1.5, help="in-plane mm (default 1.5)")
    p.add_argument("--seed", type=int, default=0)
    _COMMANDS["phantom"] = _cmd_phantom
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
