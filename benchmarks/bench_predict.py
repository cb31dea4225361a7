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

Steps 2 and 3 run once per engine (``--engines``, default ``torch,onnx``: ``predict --engine
torch`` and ``--engine onnx``, the ONNX Runtime engine of :mod:`napari_sdnet.onnx_engine`,
with its graph cached in a temporary ``SDNET_CACHE_DIR``; its "load model" stage includes
hashing the model file, importing onnxruntime and creating the session). For ONNX, each repeat
also times a **first run** with an empty cache (the export, through torch, included).

The medians over the repeats are printed as a table, with the ratio end-to-end / reference
per engine (``docs/benchmarks.md``, "Predict speed"). Usage::

    .venv/bin/python benchmarks/bench_predict.py [--model bundled|PATH] [--device cpu]
        [--precision auto|fp32|bf16|fp16] [--repeats 3] [--reconstruction]
        [--engines torch,onnx]

Record the figures in docs/benchmarks.md together with the machine and load (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
    """Child process: time every stage of ``predict`` on ``args.engine``; one JSON line."""
    t: dict[str, float] = {}
    clock = time.perf_counter
    onnx = args.engine == "onnx"
    s = clock()
    import numpy as np

    if not onnx:
        import torch
    t["import numpy (+ torch)"] = clock() - s
    s = clock()
    from napari_sdnet.io import read_image
    from napari_sdnet.io.nifti import write_nifti
    from napari_sdnet.models import load_model
    from napari_sdnet.onnx_engine import load_predictor
    from napari_sdnet.preprocess import preprocess_volume
    from napari_sdnet.segmentation import native_outputs

    t["import napari_sdnet"] = clock() - s
    s = clock()
    vol = read_image(args.input)
    t["read NIfTI"] = clock() - s
    s = clock()
    if onnx:
        model = load_predictor(args.model, args.device, engine="onnx")
    else:
        model = load_model(args.model, args.device)
    t["load model"] = clock() - s
    s = clock()
    slices, grid = preprocess_volume(vol.data, vol.geometry.spacing, model.preprocess)
    t["preprocess"] = clock() - s
    # what the CLI does: its --batch-size (default 16)
    batch = args.batch_size or 16
    size = model.config.image_size
    flat = slices.reshape(-1, size, size)
    wanted = ("mask", "z") if args.reconstruction else ("mask",)
    s = clock()
    if onnx:
        precision, threads = "fp32", os.environ.get("OMP_NUM_THREADS", "ORT default")
        probability = np.concatenate([m for _, m in model.iter_predict(flat, batch)])
    else:
        from napari_sdnet.inference import predict_slices, resolve_precision

        precision, threads = resolve_precision(args.precision, model.device), None
        out = predict_slices(model.network, flat, batch, precision=precision, outputs=wanted)
        probability = out.probability
    t["inference (networks)"] = clock() - s
    s = clock()
    # what segment does: restore, labels (the largest component per structure), as predict
    structures = model.config.structures
    channels = () if len(structures) == 1 else (len(structures),)
    model_prob = probability.reshape(*slices.shape[:-2], *channels, size, size)
    mask, label_map = native_outputs(model_prob, grid, structures)
    labels = label_map if label_map is not None else (mask * 2).astype(np.uint8)
    t["restore to input grid"] = clock() - s
    s = clock()
    write_nifti(args.out, labels, vol.geometry, dtype=np.uint8, overwrite=True)
    t["write mask (.nii.gz)"] = clock() - s
    if args.reconstruction and not onnx:
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
        "threads": torch.get_num_threads() if threads is None else threads,
        "n_slices": int(flat.shape[0]),
        "torch imported": "torch" in sys.modules,
    }
    print(json.dumps(info))


# ------------------------------------------------------------------------------- parent
# Children cache their bytecode as an installed package does (some sandboxes set
# PYTHONDONTWRITEBYTECODE, which would add the compilation of every module to each start-up).
_CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str, int, str]:
    """(wall s, peak RSS MB, stdout, exit status, stderr) of a child (its peak from ``wait4``)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        rc = os.waitstatus_to_exitcode(status)
        return wall, usage.ru_maxrss / 1024, out.read(), rc, err.read().strip()[-2000:]


def _launcher() -> None:
    """Internal (``--_launcher``): run the commands read from stdin, one JSON ``[cmd, env]`` a
    line, answering each with a JSON line of :func:`_run_child`'s result.

    The children are started from this small process because a child inherits the peak RSS of
    the process it was forked from (Linux keeps the high-water mark across ``exec``): forked
    from the benchmark itself (torch and the reference loaded), every child would report at
    least the benchmark's own peak.
    """
    for line in sys.stdin:
        cmd, env = json.loads(line)
        print(json.dumps(_run_child(cmd, env)), flush=True)


_LAUNCHER: subprocess.Popen | None = None


def _start_launcher() -> None:
    """Start the :func:`_launcher` process (call this before importing torch)."""
    global _LAUNCHER
    _LAUNCHER = subprocess.Popen(
        [sys.executable, __file__, "--_launcher"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_CHILD_ENV,
    )


def _timed_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, stdout) of a child process, run by the launcher."""
    assert _LAUNCHER is not None and _LAUNCHER.stdin is not None and _LAUNCHER.stdout
    _LAUNCHER.stdin.write(json.dumps([cmd, env or _CHILD_ENV]) + "\n")
    _LAUNCHER.stdin.flush()
    wall, peak, out, rc, err = json.loads(_LAUNCHER.stdout.readline())
    if rc != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed: {err}")
    return wall, peak, out


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
    parser.add_argument(
        "--engines", default="torch,onnx", help="comma-separated: torch, onnx (default both)"
    )
    parser.add_argument("--input", type=Path, default=None, help="default: the sample study")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    # internal: the stage-timing child
    parser.add_argument("--_stages", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_launcher", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="torch", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out-recon", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._stages:
        run_stages(args)
        return
    if args._launcher:
        _launcher()
        return
    _start_launcher()  # before torch is imported here: see _launcher

    import torch

    from napari_sdnet.device import cpu_has_native_bf16

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not engines or set(engines) - {"torch", "onnx"}:
        sys.exit(f"--engines: torch and/or onnx, got {args.engines!r}")
    if args.reconstruction and "onnx" in engines:
        sys.exit("--reconstruction runs on torch only: pass --engines torch")
    if args.input is None:
        from napari_sdnet.sample import sunnybrook_study

        args.input = Path(sunnybrook_study().image)
    threads = torch.get_num_threads()  # the children's default too (OMP_NUM_THREADS respected)
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "not installed"
    print(
        f"machine: {_cpu_name()}, {os.cpu_count()} cores, native bf16: {cpu_has_native_bf16()}, "
        f"python {platform.python_version()}, torch {torch.__version__}, onnxruntime "
        f"{ort_version}, {threads} threads"
    )
    print(
        f"input: {args.input}; model {args.model}, device {args.device}, "
        f"precision {args.precision}, engines {', '.join(engines)}; {_load()}"
    )
    rows: list[dict[str, float]] = []
    infos: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mask.nii.gz"
        recon = Path(tmp) / "recon.nii.gz"
        cache = Path(tmp) / "cache"  # the ONNX engine's cache: kept between warm runs
        cold_cache = Path(tmp) / "cold-cache"  # emptied before every first-run measurement
        env = {**_CHILD_ENV, "SDNET_CACHE_DIR": str(cache)}
        cold_env = {**_CHILD_ENV, "SDNET_CACHE_DIR": str(cold_cache)}
        common = ["--model", args.model, "--device", args.device, "--precision", args.precision]
        common += ["--batch-size", str(args.batch_size)] if args.batch_size else []

        def cli(engine: str) -> list[str]:
            cmd = [sys.executable, "-m", "napari_sdnet.cli", "predict", str(args.input)]
            cmd += ["-o", str(out), *common, "--engine", engine, "--overwrite"]
            return cmd + (["--reconstruction", str(recon)] if args.reconstruction else [])

        def stages_cmd(engine: str) -> list[str]:
            cmd = [sys.executable, __file__, "--_stages", "--input", str(args.input), *common]
            cmd += ["--engine", engine, "--out", str(out), "--out-recon", str(recon)]
            return cmd + (["--reconstruction"] if args.reconstruction else [])

        for engine in engines:  # warm-up, not timed: bytecode, file caches, the ONNX cache
            _timed_child(cli(engine), env)
        for i in range(args.repeats):
            row: dict[str, float] = {}
            load_before = _load()
            row["reference"] = reference_seconds(threads)
            for engine in engines:
                wall, peak, _ = _timed_child(cli(engine), env)
                row[f"{engine}: end to end"], row[f"{engine}: peak MB"] = wall, peak
            if "onnx" in engines:
                shutil.rmtree(cold_cache, ignore_errors=True)
                wall, peak, _ = _timed_child(cli("onnx"), cold_env)
                row["onnx: first run (export)"], row["onnx: first run peak MB"] = wall, peak
            row["python start-up"], _, _ = _timed_child([sys.executable, "-c", "pass"])
            for engine in engines:
                _, _, text = _timed_child(stages_cmd(engine), env)
                infos[engine] = json.loads(text.strip().splitlines()[-1])
                row.update({f"{engine}: {k}": v for k, v in infos[engine]["stages"].items()})
                row[f"{engine}: ratio"] = row[f"{engine}: end to end"] / row["reference"]
            rows.append(row)
            print(
                f"repeat {i + 1}: reference {row['reference']:.2f} s; "
                + "; ".join(
                    f"{e}: end to end {row[f'{e}: end to end']:.2f} s, ratio "
                    f"{row[f'{e}: ratio']:.2f}, inference "
                    f"{row[f'{e}: inference (networks)']:.2f} s, peak "
                    f"{row[f'{e}: peak MB']:.0f} MB"
                    for e in engines
                )
                + (
                    f"; onnx first run {row['onnx: first run (export)']:.2f} s"
                    if "onnx" in engines
                    else ""
                )
                + f" ({load_before})",
                flush=True,
            )

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    first = infos[engines[0]]
    n = first.get("n_slices", N_SLICES)
    print(f"\nmedian of {len(rows)} ({_load()} at the end)")
    for engine in engines:
        info = infos[engine]
        print(
            f"  {engine}: precision {info.get('precision')}, batch {info.get('batch_size')}, "
            f"threads {info.get('threads')}, torch imported: {info.get('torch imported')}"
        )
    print("\n| stage | " + " | ".join(engines) + " |")
    print("|---|" + "---|" * len(engines))
    startup = f"{med('python start-up'):.3f}"
    print("| python start-up | " + " | ".join(startup for _ in engines) + " |")
    for stage in infos[engines[0]]["stages"]:
        cells = []
        for engine in engines:
            key = f"{engine}: {stage}"
            if key not in rows[0]:
                cells.append("-")
                continue
            extra = f" ({n / med(key):.0f} slices/s)" if stage == "inference (networks)" else ""
            cells.append(f"{med(key):.3f}{extra}")
        print(f"| {stage} | " + " | ".join(cells) + " |")
    cells = " | ".join(f"**{med(f'{e}: end to end'):.2f}**" for e in engines)
    print(f"| **end to end (`napari-sdnet predict --engine ...`)** | {cells} |")
    if "onnx" in engines:
        cells = " | ".join(
            f"{med('onnx: first run (export)'):.2f}" if e == "onnx" else "-" for e in engines
        )
        print(f"| first run, empty cache (export included) | {cells} |")
    cells = " | ".join(f"{max(r[f'{e}: peak MB'] for r in rows):.0f}" for e in engines)
    print(f"| peak RSS of predict (MB, max) | {cells} |")
    print(f"| reference: plain U-Net fp32 NCHW forward, 240 slices | {med('reference'):.2f} |")
    for engine in engines:
        ratios = ", ".join(f"{r[f'{engine}: ratio']:.2f}" for r in rows)
        print(
            f"\n{engine}: ratio end to end / reference: median {med(f'{engine}: ratio'):.2f} "
            f"(per repeat: {ratios})"
        )
    if "onnx" in engines:
        print(
            f"onnx first run (empty cache): {med('onnx: first run (export)'):.2f} s, ratio "
            f"{statistics.median(r['onnx: first run (export)'] / r['reference'] for r in rows):.2f}"
            f", peak {max(r['onnx: first run peak MB'] for r in rows):.0f} MB"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "info": infos}, indent=1) + "\n")


if __name__ == "__main__":
    main()
