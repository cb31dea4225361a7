"""The live loss plot of the fine-tuning widget (matplotlib's Qt canvas).

Two panels sharing the step axis, each titled with what it shows in words: the Dice loss on
the corrected slices (what fine-tuning fits), and the reconstruction error on the corrected
and on the other slices (what keeps the model from forgetting the study). Each curve is drawn
smoothed (an exponential moving average) over its raw values, drawn faint. The legend sits
below the panels, never over a curve. Redrawn shortly after the last step (not on each one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sdnet._napari._dock import PlotCanvas

#: the trainer's loss keys, in words (the plotted ones first)
LOSS_NAMES = {
    "dice_loss": "Dice loss, corrected slices",
    "recon_l1": "reconstruction error, corrected slices",
    "unl_recon_l1": "reconstruction error, other slices",
    "labelled": "total loss, corrected slices",
    "unlabelled": "total loss, other slices",
    "discriminators": "adversarial (discriminator) loss",
}
PLOTTED = ("dice_loss", "recon_l1", "unl_recon_l1")
COLOURS = {"dice_loss": "#d62728", "recon_l1": "#1f77b4", "unl_recon_l1": "#ff7f0e"}
PLOT_DELAY_MS = 300  # the plot is redrawn at most this often while training
SMOOTHING = 0.8  # weight of the past in the moving average


def loss_text(losses: dict[str, float]) -> str:
    """The plotted losses in words: ``"Dice loss, corrected slices 0.512; ..."``."""
    keys = [k for k in PLOTTED if k in losses] or sorted(losses)
    return "; ".join(f"{LOSS_NAMES.get(k, k)} {float(losses[k]):.3g}" for k in keys)


def smoothed(values: Any, weight: float = SMOOTHING) -> np.ndarray:
    """Exponential moving average, started at the first value."""
    out = np.empty(len(values), float)
    acc = None
    for i, v in enumerate(values):
        acc = float(v) if acc is None else weight * acc + (1 - weight) * float(v)
        out[i] = acc
    return out


class LossPlot(PlotCanvas):
    """The canvas, the loss history (``{key: [(step, value), ...]}``) and its drawing."""

    def __init__(self) -> None:
        super().__init__((3.6, 2.6), 210, PLOT_DELAY_MS)
        self.timer.timeout.disconnect()
        self.timer.timeout.connect(self.draw_now)
        self.setToolTip("losses while fine-tuning: raw (faint) and smoothed")
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.draw_now()

    def clear(self) -> None:
        self.history = {}
        self.draw_now()

    def add(self, step: int, losses: dict[str, float]) -> None:
        for key in PLOTTED:
            if key in losses:
                self.history.setdefault(key, []).append((int(step), float(losses[key])))
        if not self.timer.isActive():
            self.timer.start()

    def draw_now(self) -> None:
        """Redraw from ``history``."""
        fig = self.figure_
        fig.clear()
        if not self.history:
            ax = fig.add_subplot(1, 1, 1)
            ax.text(0.5, 0.5, "losses appear here while fine-tuning", ha="center",
                    va="center", fontsize=8, transform=ax.transAxes)
            ax.set_axis_off()
            self.draw_idle()
            return
        dice_ax, recon_ax = fig.subplots(2, 1, sharex=True)
        handles = []
        for ax, keys in ((dice_ax, ("dice_loss",)), (recon_ax, ("recon_l1", "unl_recon_l1"))):
            for key in keys:
                points = self.history.get(key)
                if not points:
                    continue
                steps, values = zip(*points, strict=True)
                colour = COLOURS[key]
                ax.plot(steps, values, linewidth=0.6, alpha=0.3, color=colour)
                (line,) = ax.plot(steps, smoothed(values), linewidth=1.4, color=colour,
                                  label=LOSS_NAMES[key])
                handles.append(line)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        dice_ax.set_title("Dice loss (corrected slices)", fontsize=8)
        recon_ax.set_title("reconstruction error", fontsize=8)
        recon_ax.set_xlabel("step", fontsize=8)
        fig.legend(handles=handles, loc="lower center", ncol=1, fontsize=7, frameon=False)
        fig.subplots_adjust(left=0.14, right=0.97, top=0.92, bottom=0.36, hspace=0.55)
        self.draw_idle()
