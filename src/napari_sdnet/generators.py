"""One driver for the package's generators (segmentation, fine-tuning, training): they yield
progress and return their result, so the API, the CLI and the widgets report progress, stop
and cancel the same way."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

__all__ = ["run"]

_R = TypeVar("_R")


def run(
    gen: Generator[Any, Any, _R],
    on_progress: Callable[[Any], None] | None = None,
    *,
    interrupt_into: bool = False,
) -> _R:
    """Drive ``gen`` to the end and return its return value (``StopIteration.value``).

    ``on_progress`` gets every yielded report. With ``interrupt_into``, a Ctrl-C
    (``KeyboardInterrupt``) while the generator is suspended is thrown into it, so that a
    generator that handles it (``train_model`` saves the best weights and returns) can finish;
    if it does not return, the interrupt propagates.
    """
    try:
        while True:
            try:
                progress = next(gen)
            except StopIteration as stop:
                return stop.value
            if on_progress is not None:
                on_progress(progress)
    except KeyboardInterrupt:
        if not interrupt_into:
            raise
        try:
            gen.throw(KeyboardInterrupt)
        except StopIteration as stop:
            return stop.value
        raise
