"""Time one preview change of the latent mixer on the CPU (bundled ``compact`` model).

The sample study (4D, 20 x 12 x 144 x 144) is segmented once; then a cycle of changes like a
user's (M slice, Z slice, null mask, zero Z, interpolation t, one Z slider) is timed:

1. headless, per torch thread count: :func:`napari_sdnet.latent.mix_z` +
   :func:`napari_sdnet.latent.mix` onto the input grid in the image's units, i.e. what the
   widget computes for one change (decoding one 128 x 128 slice and mapping it back);
2. with ``--widget`` (needs a display, e.g. ``xvfb-run``): the real "Latent mixer" in a
   napari viewer: the widget's own measure (compute + writing the preview layer) and the wall
   time of the control change plus one pass of the Qt event loop (the canvas redraw included);
   the heat map's redraw (after a pause, see ``HEAT_DELAY_MS``) is timed on its own.

Usage::

    .venv/bin/python benchmarks/bench_latent.py [--changes 50] [--threads 1 2]
    xvfb-run -a .venv/bin/python benchmarks/bench_latent.py --widget

Record the figures in docs/benchmarks.md ("Latent mixer preview") with the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np


def _summary(times_ms: list[float]) -> str:
    q = np.percentile(times_ms, [50, 90])
    return (
        f"median {q[0]:.1f} ms, p90 {q[1]:.1f} ms, max {max(times_ms):.1f} ms "
        f"({len(times_ms)} changes)"
    )


def _changes(n: int, n_slices: int) -> list[dict]:
    """A cycle of changes a user makes (each one differs from the previous)."""
    out = []
    for i in range(n):
        kind = i % 6
        out.append(
            {
                "kind": ("M slice", "Z slice", "null mask", "zero Z", "interpolate", "Z slider")[
                    kind
                ],
                "m": (i * 5) % n_slices,
                "z": (i * 7 + 3) % n_slices,
                "null": kind == 2,
                "zero": kind == 3,
                "t": (i % 10) / 10 if kind == 4 else 0.0,
                "k": i % 16,
                "offset": 0.05 * ((i % 9) - 4) if kind == 5 else 0.0,
            }
        )
    return out


def headless(model, seg, n_changes: int, threads: int) -> list[float]:
    import torch

    from napari_sdnet import latent

    torch.set_num_threads(threads)
    frame = 0
    n_slices = seg.z.shape[1]
    times = []
    for ch in [None, *_changes(n_changes, n_slices)]:  # the first one warms up
        ch = ch or _changes(1, n_slices)[0]
        start = time.perf_counter()
        z_src = latent.latent_slice(seg, (frame, ch["z"]))
        toward = latent.latent_slice(seg, (frame, (ch["z"] + 4) % n_slices)).z
        z = latent.mix_z(
            z_src.z, toward=toward, t=ch["t"], zero=ch["zero"], offsets={ch["k"]: ch["offset"]}
        )
        m = None if ch["null"] else latent.latent_slice(seg, (frame, ch["m"]))
        out = latent.mix(model, m, z, grid=seg.grid, denormalise=True)
        times.append((time.perf_counter() - start) * 1e3)
        assert out.shape == seg.mask.shape[-2:]
    return times[1:]


def widget(model, seg, image_data, scale, n_changes: int, threads: int) -> tuple[list, list]:
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_sdnet._napari._latent_widget import LatentWidget
    from napari_sdnet._napari._state import get_state

    torch.set_num_threads(threads)
    viewer = napari.Viewer(show=True)
    image = viewer.add_image(image_data, name="sample", scale=scale)
    state = get_state(viewer)
    state.model = model
    record = state.new_record(image)
    record.segmentation = seg
    record.model_source = model.source
    w = LatentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Latent mixer")
    state.record_changed.emit(record)
    app = QApplication.instance()
    app.processEvents()
    w.timings_ms.clear()
    wall, heat = [], []
    n_slices = seg.z.shape[1]
    for ch in _changes(n_changes, n_slices):
        start = time.perf_counter()
        if ch["kind"] == "M slice":
            w.mask_chooser.slice.setValue(ch["m"])
        elif ch["kind"] == "Z slice":
            w.z_chooser.slice.setValue(ch["z"])
        elif ch["kind"] == "null mask":
            w.null_mask.setChecked(not w.null_mask.isChecked())
        elif ch["kind"] == "zero Z":
            w.zero_z.setChecked(not w.zero_z.isChecked())
        elif ch["kind"] == "interpolate":
            w.t_slider.setValue(round(ch["t"] * 100) or 50)
        else:
            slider = w.z_sliders[ch["k"]]
            slider.setValue(10 if slider.value() != 10 else -10)
        app.processEvents()
        wall.append((time.perf_counter() - start) * 1e3)
        # the heat map is redrawn HEAT_DELAY_MS after the last change: time that redraw alone
        if w._heat_timer.isActive():
            w._heat_timer.stop()
            start = time.perf_counter()
            w.heat_canvas.draw()
            app.processEvents()
            heat.append((time.perf_counter() - start) * 1e3)
    own = list(w.timings_ms)
    viewer.close()
    kinds = [ch["kind"] for ch in _changes(n_changes, n_slices)]
    per_kind = {
        k: statistics.median(t for c, t in zip(kinds, wall, strict=True) if c == k)
        for k in dict.fromkeys(kinds)
    }
    print(
        "  change + event loop, median by kind: "
        + ", ".join(f"{k} {v:.0f} ms" for k, v in per_kind.items())
    )
    if heat:
        print(f"  heat-map redraw after a Z slice change: {_summary(heat)}")
    return own, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--widget", action="store_true", help="also time the napari widget")
    args = parser.parse_args()

    import torch

    from napari_sdnet import api
    from napari_sdnet.io.nifti import read_nifti
    from napari_sdnet.sample import sunnybrook_study

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, torch {torch.__version__}"
    )
    model = api.load_model("bundled", device="cpu")
    vol = read_nifti(sunnybrook_study().image)
    torch.set_num_threads(max(args.threads))
    seg = api.segment(model, vol.data, vol.geometry.spacing)
    print(f"model {model}; study {vol.data.shape}")
    for n in args.threads:
        times = headless(model, seg, args.changes, n)
        print(f"headless, {n} thread(s): {_summary(times)}")
    if args.widget:
        from napari_sdnet._napari._latent_widget import PREVIEW_THREADS

        # the widget decodes with PREVIEW_THREADS whatever the process-wide setting
        n = max(args.threads)
        own, wall = widget(model, seg, vol.data, vol.geometry.spacing, args.changes, n)
        print(f"widget (torch {n} threads, previews {PREVIEW_THREADS}):")
        print(f"  compute + layer update: {_summary(own)}")
        print(f"  change + event loop (preview drawn): {_summary(wall)}")
        print(f"  mean of the latter {statistics.fmean(wall):.1f} ms")


if __name__ == "__main__":
    main()
