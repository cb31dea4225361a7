"""Time ``napari-sdnet predict`` on the bundled 4D sample study (240 slices), stage by stage.

Each repeat measures, in this order and on the same threads:

1. **the reference**: the eager fp32 NCHW forward pass of a plain U-Net of the compact preset's
   size (conv3x3-BN-ReLU x2 per level, 8-16-32-64-128 filters, max-pool, transposed-conv up
   path, 1x1 head; 128 x 128 input, batch 16) over 240 slices, in this process, after one
   warm-up batch. It is a fixed yardstick for the machine's speed at that moment: on a shared
   machine only ratios measured in the same run mean something;
2. **end to end**: the real command line in a fresh process (start-up, imports, reading the
   NIfTI, preprocessing, inference, restoring to the input grid, writing the mask and, with
   ``--reconstruction``, the reconstruction): wall time and that child's peak resident memory;
3. **the stages**: a fresh process doing what ``predict`` does with the same public functions,
   timing each stage (interpreter start-up is timed separately, as ``python -c pass``).

The medians over the repeats are printed as a table, with the ratio end-to-end / reference
(``docs/benchmarks.md``, "Predict speed"). Usage::

    .venv/bin/python benchmarks/bench_predict.py [--model bundled|PATH] [--device cpu]
        [--precision auto|fp32|bf16|fp16] [--repeats 3] [--reconstruction]

Record the figures in docs/benchmarks.md together with the machine and load (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_SLICES = 240  # the sample study: 20 phases x 12 slices
REF_SIZE = 128
REF_BATCH = 16
REF_WIDTHS = (8, 16, 32, 64, 128)


# ------------------------------------------------------------------------------ reference
def reference_seconds(threads: int) -> float:
    """The eager fp32 NCHW forward pass of a plain compact-sized U-Net over 240 slices (s)."""
    import torch
    from torch import nn

    def double(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1),
            nn.BatchNorm2d(o),
            nn.ReLU(inplace=True),
            nn.Conv2d(o, o, 3, padding=1),
            nn.BatchNorm2d(o),
            nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = REF_WIDTHS
            self.down = nn.ModuleList(
                double(i, o) for i, o in zip((1, *w[:-2]), w[:-1], strict=True)
            )
            self.bottom = double(w[-2], w[-1])
            self.ups = nn.ModuleList(
                nn.ConvTranspose2d(w[k + 1], w[k], 2, stride=2) for k in reversed(range(4))
            )
            self.convs = nn.ModuleList(double(2 * w[k], w[k]) for k in reversed(range(4)))
            self.head = nn.Conv2d(w[0], 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = []
            for level in self.down:
                x = level(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.bottom(x)
            for up, conv, skip in zip(self.ups, self.convs, reversed(skips), strict=True):
                x = conv(torch.cat([up(x), skip], dim=1))
            return torch.sigmoid(self.head(x))

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        net = UNet().eval()
        x = torch.randn(N_SLICES, 1, REF_SIZE, REF_SIZE)
        with torch.inference_mode():
            net(x[:REF_BATCH])  # warm-up (oneDNN primitive creation)
            start = time.perf_counter()
            for i in range(0, N_SLICES, REF_BATCH):
                net(x[i : i + REF_BATCH])
            return time.perf_counter() - start
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------- stages (child)
def run_stages(args: argparse.Namespace) -> None:
    """Child process: time every stage of ``predict``; prints one JSON line."""
    t: dict[str, float] = {}
    clock = time.perf_counter
    s = clock()
    import numpy as np
    import torch

    t["import torch + numpy"] = clock() - s
    s = clock()
    from napari_sdnet import api
    from napari_sdnet.inference import predict_slices, resolve_precision
    from napari_sdnet.io import read_image
    from napari_sdnet.io.nifti import write_nifti
    from napari_sdnet.preprocess import preprocess_volume, restore_probabilities

    t["import napari_sdnet"] = clock() - s
    s = clock()
    vol = read_image(args.input)
    t["read NIfTI"] = clock() - s
    s = clock()
    model = api.load_model(args.model, args.device)
    t["load model"] = clock() - s
    s = clock()
    slices, grid = preprocess_volume(vol.data, vol.geometry.spacing, model.preprocess)
    t["preprocess"] = clock() - s
    precision = resolve_precision(args.precision, model.device)
    # what the CLI does: its --batch-size (default 16)
    batch = args.batch_size or 16
    size = model.config.image_size
    flat = slices.reshape(-1, size, size)
    wanted = ("mask", "z") if args.reconstruction else ("mask",)
    s = clock()
    out = predict_slices(model.network, flat, batch, precision=precision, outputs=wanted)
    t["inference (networks)"] = clock() - s
    s = clock()
    prob = restore_probabilities(out.probability.reshape(*slices.shape), grid)
    labels = api.to_acdc_labels(prob >= api.THRESHOLD)
    t["restore to input grid"] = clock() - s
    s = clock()
    write_nifti(args.out, labels, vol.geometry, dtype=np.uint8, overwrite=True)
    t["write mask (.nii.gz)"] = clock() - s
    if args.reconstruction:
        from napari_sdnet.inference import decode_latents
        from napari_sdnet.preprocess import restore_image

        s = clock()
        rec = decode_latents(
            model.network, out.probability, out.z, batch_size=batch, precision=precision
        )
        recon = restore_image(rec.reshape(*slices.shape), grid, denormalise=True)
        t["reconstruction (g + restore)"] = clock() - s
        s = clock()
        write_nifti(args.out_recon, recon, vol.geometry, dtype=np.float32, overwrite=True)
        t["write reconstruction"] = clock() - s
    info = {
        "stages": t,
        "precision": precision,
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "n_slices": int(flat.shape[0]),
    }
    print(json.dumps(info))


# ------------------------------------------------------------------------------- parent
# Children cache their bytecode as an installed package does (some sandboxes set
# PYTHONDONTWRITEBYTECODE, which would add the compilation of every module to each start-up).
_CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _timed_child(cmd: list[str]) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, stdout) of a child process (its own peak, from ``wait4``)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=_CHILD_ENV)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd[:4])} ... failed: {err.read().strip()[-2000:]}")
        return wall, usage.ru_maxrss / 1024, out.read()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:  # pragma: no cover
        return "load average unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reconstruction", action="store_true")
    parser.add_argument("--input", type=Path, default=None, help="default: the sample study")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    # internal: the stage-timing child
    parser.add_argument("--_stages", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out-recon", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._stages:
        run_stages(args)
        return

    import torch

    from napari_sdnet.device import cpu_has_native_bf16

    if args.input is None:
        from napari_sdnet.sample import sunnybrook_study

        args.input = Path(sunnybrook_study().image)
    threads = torch.get_num_threads()  # the children's default too (OMP_NUM_THREADS respected)
    print(
        f"machine: {_cpu_name()}, {os.cpu_count()} cores, native bf16: {cpu_has_native_bf16()}, "
        f"python {platform.python_version()}, torch {torch.__version__}, {threads} threads"
    )
    print(
        f"input: {args.input}; model {args.model}, device {args.device}, "
        f"precision {args.precision}; {_load()}"
    )
    rows: list[dict[str, float]] = []
    info: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mask.nii.gz"
        recon = Path(tmp) / "recon.nii.gz"
        cli = [
            sys.executable,
            "-m",
            "napari_sdnet.cli",
            "predict",
            str(args.input),
            "-o",
            str(out),
            "--model",
            args.model,
            "--device",
            args.device,
            "--precision",
            args.precision,
            "--overwrite",
        ]
        if args.batch_size:
            cli += ["--batch-size", str(args.batch_size)]
        if args.reconstruction:
            cli += ["--reconstruction", str(recon)]
        stages_cmd = [
            sys.executable,
            __file__,
            "--_stages",
            "--input",
            str(args.input),
            "--model",
            args.model,
            "--device",
            args.device,
            "--precision",
            args.precision,
            "--out",
            str(out),
            "--out-recon",
            str(recon),
        ]
        if args.batch_size:
            stages_cmd += ["--batch-size", str(args.batch_size)]
        if args.reconstruction:
            stages_cmd += ["--reconstruction"]
        _timed_child(cli)  # warm-up, not timed: bytecode and file caches as in normal use
        for i in range(args.repeats):
            row: dict[str, float] = {}
            load_before = _load()
            row["reference"] = reference_seconds(threads)
            row["end to end"], row["peak MB"], _ = _timed_child(cli)
            row["python start-up"], _, _ = _timed_child([sys.executable, "-c", "pass"])
            _, _, text = _timed_child(stages_cmd)
            info = json.loads(text.strip().splitlines()[-1])
            row.update(info["stages"])
            row["ratio"] = row["end to end"] / row["reference"]
            rows.append(row)
            print(
                f"repeat {i + 1}: reference {row['reference']:.2f} s, end to end "
                f"{row['end to end']:.2f} s, ratio {row['ratio']:.2f}, inference "
                f"{row['inference (networks)']:.2f} s, peak {row['peak MB']:.0f} MB "
                f"({load_before})",
                flush=True,
            )

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    n = info.get("n_slices", N_SLICES)
    print(
        f"\nmedian of {len(rows)} (precision {info.get('precision')}, batch "
        f"{info.get('batch_size')}, {info.get('threads')} threads; {_load()} at the end)\n"
    )
    print("| stage | seconds |")
    print("|---|---|")
    skip = {"reference", "end to end", "peak MB", "ratio"}
    for key in rows[0]:
        if key not in skip:
            extra = f" ({n / med(key):.0f} slices/s)" if key == "inference (networks)" else ""
            print(f"| {key} | {med(key):.3f}{extra} |")
    print(f"| **end to end (`napari-sdnet predict`)** | **{med('end to end'):.2f}** |")
    print(f"| reference: plain U-Net fp32 NCHW forward, 240 slices | {med('reference'):.2f} |")
    ratios = ", ".join(f"{r['ratio']:.2f}" for r in rows)
    print(
        f"\nratio end to end / reference: median {med('ratio'):.2f} "
        f"(per repeat: {ratios}); peak RSS of predict "
        f"{max(r['peak MB'] for r in rows):.0f} MB"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "info": info}, indent=1) + "\n")


if __name__ == "__main__":
    main()
