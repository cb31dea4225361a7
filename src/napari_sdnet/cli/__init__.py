"""The ``napari-sdnet`` command line: a thin shell over the package's functions.

Every sub-command is one function ``_cmd_<name>(args)`` (in ``_model.py``, ``_train.py``,
``_measure.py``, ``_batch.py``; view/demo/phantom here, shared pieces in ``_common.py``);
errors caused by bad input are raised as :class:`napari_sdnet.errors.SDNetError` and printed
as one line (exit status 2), never as a traceback. Heavy imports (torch, napari) happen inside
the commands so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_sdnet.cli._batch import _add_batch_command
from napari_sdnet.cli._common import _COMMANDS, _with_one_line_warnings
from napari_sdnet.cli._measure import _add_measure_command
from napari_sdnet.cli._model import _add_model_commands
from napari_sdnet.cli._train import _add_train_command
from napari_sdnet.device import DEVICE_CHOICES
from napari_sdnet.errors import InputError, SDNetError


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
    print(f"wrote {written[0]} (ACDC labels, lined up with the sample study)")
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


# --------------------------------------------------------------------------------------------
# train (training/recipe.py: datasets + trainer + checkpoint)
# --------------------------------------------------------------------------------------------


class _Version(argparse.Action):
    """``--version``, with the version looked up only when asked for (see ``__init__``)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        import napari_sdnet

        print(f"{parser.prog} {napari_sdnet.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-sdnet",
        description="SDNet myocardium segmentation for cardiac cine MR (napari plugin and tools).",
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
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
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
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


def _import_nibabel_without_pydicom() -> None:
    """Import nibabel with pydicom hidden from it, in a headless command's own process.

    nibabel imports pydicom (0.14 s: a sixth of ``predict``'s start-up) only to parse DICOM
    header extensions of NIfTI files; this package drops header extensions, so in a process
    the command line owns they are read as raw bytes instead (nibabel's own fallback when
    pydicom is missing). pydicom itself imports as usual afterwards (DICOM input and SEG
    output). Nothing changes when nibabel or pydicom is imported already (e.g. an embedding
    program, the tests)."""
    if "nibabel" in sys.modules or "pydicom" in sys.modules:
        return
    sys.modules["pydicom"] = None  # type: ignore[assignment]  # `import pydicom` now fails
    try:
        import nibabel  # noqa: F401
    finally:
        if "pydicom" in sys.modules and sys.modules["pydicom"] is None:
            del sys.modules["pydicom"]


#: commands that run napari in this process (its plugins may want nibabel unchanged)
_GUI_COMMANDS = ("view", "demo")


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (e.g. called from a worker): leave signals alone
        previous = None
    try:
        if args.command not in _GUI_COMMANDS:
            _import_nibabel_without_pydicom()
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
