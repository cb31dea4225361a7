"""Exceptions whose message is meant for the user.

Every error that bad input can cause (a corrupt file, a 5D array, a constant image, a checkpoint
of the wrong kind, ...) is raised as a subclass of :class:`SDNetError` with a one-line message
that says what is wrong and, where possible, what to do. The CLI prints that line instead of a
traceback; the napari widgets show it as a notification.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


class SDNetError(Exception):
    """Base class: the message is user-facing and fits on one line."""


class InputError(SDNetError, ValueError):
    """A file or array that cannot be used (wrong format, dimensionality, values, geometry)."""


class CheckpointError(SDNetError):
    """A model file that is missing, corrupt, of another kind or of a mismatched preset."""


class TrainingError(SDNetError):
    """Training or fine-tuning that went wrong (diverged, got worse): nothing was saved."""


class RescuedWrite(SDNetError):
    """The destination could not be written, but the result was saved at :attr:`path`.

    Raised after the work is safe: the message names both places, so nothing is lost.
    """

    def __init__(self, destination, path, reason: str) -> None:
        self.destination, self.path, self.reason = destination, path, reason
        super().__init__(
            f"{destination}: cannot write ({reason}); the result was saved to {path} instead"
        )


def dataclass_kwargs(
    data: Any, cls: type, what: str, unknown: str, *, kind: type = Mapping
) -> dict[str, Any]:
    """``dict(data)``, to build the dataclass ``cls`` from, once checked.

    Raises :class:`InputError` when ``data`` is not a ``kind`` (``"<what> must be a mapping"``,
    or ``a dict`` with ``kind=dict``) or has keys that are not fields of ``cls``: the message is
    ``unknown`` formatted with ``names`` (the unknown keys, comma-separated), ``unknown`` and
    ``known`` (sorted lists).
    """
    if not isinstance(data, kind):
        article = "a dict" if kind is dict else "a mapping"
        raise InputError(f"{what} must be {article}, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(data) - known)
    if extra:
        raise InputError(unknown.format(names=", ".join(extra), unknown=extra, known=sorted(known)))
    return dict(data)
