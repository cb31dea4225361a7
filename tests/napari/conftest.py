"""Fixtures of the tests that run real napari viewers (under Xvfb, started by pytest-xvfb).

The widgets' tests, the reader/writer in a viewer and the session across the docks. A ``tiny``
untrained model (``tiny_model_file``, tests/conftest.py) segments: the masks mean nothing, the
tests check the mechanics.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

PLUGIN = "napari-sdnet"
TIMEOUT_MS = 60_000


@pytest.fixture
def messages(monkeypatch) -> list[tuple[str, str]]:
    """Notifications shown by the widgets, as ``(severity, message)``."""
    import napari.utils.notifications as notifications

    shown: list[tuple[str, str]] = []
    for severity in ("error", "warning", "info"):
        monkeypatch.setattr(
            notifications,
            f"show_{severity}",
            lambda message, _s=severity: shown.append((_s, str(message))),
        )
    return shown


@pytest.fixture
def errors(messages) -> Callable[[], list[str]]:
    """``errors()``: the error notifications shown so far."""
    return lambda: [m for s, m in messages if s == "error"]


@pytest.fixture
def segmenter(qtbot, tiny_model_file):
    """``segmenter(viewer, layer=None, frame=None)``: a docked segmentation widget (tiny model,
    CPU) that has segmented ``layer`` (all frames, or only ``frame`` of a 4D study)."""
    from napari_sdnet._napari._segment_widget import FRAMES_CURRENT, SegmentWidget

    def make(viewer, layer=None, frame=None) -> SegmentWidget:
        widget = SegmentWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Segmentation (test)")
        widget.set_model(tiny_model_file)
        widget.set_device("cpu")
        if frame is not None:
            widget.frames_combo.setCurrentText(FRAMES_CURRENT)
            viewer.dims.set_current_step(0, frame)
        if layer is not None:
            assert widget.segment(layer) is not None, widget.status.text()
            qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
        return widget

    return make


@pytest.fixture(autouse=True)
def _tiny_models_may_get_worse(monkeypatch):
    """The untrained ``tiny`` model of these tests gets "worse" on the painted slices after any
    fine-tuning, which ``api.finetune`` refuses (tests/test_reliability.py tests that rule);
    the widget tests check the mechanics, so the rule is switched off here."""
    from napari_sdnet import finetuning

    monkeypatch.setattr(finetuning, "FINETUNE_CHECK_FROM", 2.0)  # Dice never reaches 2
