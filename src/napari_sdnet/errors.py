"""Exceptions whose message is meant for the user.

Every error that bad input can cause (a corrupt file, a 5D array, a constant image, a checkpoint
of the wrong kind, ...) is raised as a subclass of :class:`SDNetError` with a one-line message
that says what is wrong and, where possible, what to do. The CLI prints that line instead of a
traceback; the napari widgets show it as a notification.
"""


class SDNetError(Exception):
    """Base class: the message is user-facing and fits on one line."""


class InputError(SDNetError, ValueError):
    """A file or array that cannot be used (wrong format, dimensionality, values, geometry)."""


class CheckpointError(SDNetError):
    """A model file that is missing, corrupt, of another kind or of a mismatched preset."""
