"""What every command shares: one-line warnings, progress bars, output checks, JSON,
signals (SIGTERM and Ctrl-C as a clean stop) and the command registry."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from napari_sdnet.errors import InputError
from napari_sdnet.generators import run

_COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


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


def _positive_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _drive(gen, on_progress):
    """Run a training generator to its return value, calling ``on_progress`` on each report;
    Ctrl-C is thrown into it (``train_model`` then saves what it has and returns)."""
    return run(gen, on_progress, interrupt_into=True)


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
