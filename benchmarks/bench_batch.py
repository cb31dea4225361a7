"""Studies per hour: `napari-sdnet batch` (1 and 2 workers, optionally a Dask cluster) against
a shell loop of `napari-sdnet predict`, on copies of the bundled sample study, in one run.

Every configuration runs the real command line in a fresh process and writes its masks to its
own folder; the times include each command's start-up (Python, torch, the model), which is what
a cohort pays. The Dask configuration times `batch --scheduler` against a scheduler and two
1-thread workers already running on 127.0.0.1 (an existing cluster, as in production; their
start-up is not counted, their first model load is). Usage::

    nice .venv/bin/python benchmarks/bench_batch.py [--copies 8] [--model bundled] [--no-dask]
        [--json runs/bench_batch.json]

Record the figures in docs/benchmarks.md with the load printed (the machine may be shared).
"""

from __future__ import annotations

import argparse
import csv
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


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("napari-sdnet")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "napari_sdnet.cli"]


def _timed(cmd: list[str] | str, env: dict, shell: bool = False) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, shell=shell)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {cmd}\n{proc.stderr.strip()[-2000:]}")
    return elapsed


def _csv_stats(path: Path) -> dict:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    first: dict[str, bool] = {}
    warm, cold = [], []
    for r in rows:  # each worker's first study also loads the model
        (warm if first.setdefault(r["worker"], False) else cold).append(float(r["seconds"]))
        first[r["worker"]] = True
    peaks = [float(r["worker_peak_mb"]) for r in rows if r["worker_peak_mb"]]
    return {
        "per_study_s_median": statistics.median(warm) if warm else None,
        "first_study_s_median": statistics.median(cold),
        "worker_peak_mb": max(peaks) if peaks else None,
        "workers_seen": len(first),
    }


def _dice(a, b) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-dask", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="rounds (best of them is kept)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import nibabel as nib
    import numpy as np

    from napari_sdnet.sample import sunnybrook_study

    study = Path(sunnybrook_study().image)
    cores = os.cpu_count() or 1
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # each command chooses its own threads
    cli = _cli()
    load_before = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, python "
          f"{platform.python_version()}; load average before {load_before[0]:.2f} "
          f"{load_before[1]:.2f} {load_before[2]:.2f}")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        root = Path(tmp)
        cohort = root / "cohort"
        cohort.mkdir()
        for k in range(args.copies):
            shutil.copy(study, cohort / f"study{k:02d}.nii.gz")
        n = args.copies

        have_dask = False
        if not args.no_dask:
            try:
                import distributed  # noqa: F401

                have_dask = True
            except ImportError:
                print("dask distributed not installed: no Dask figure")
        configs = ["loop", "batch_w1", "batch_w2"] + (["dask_w2"] if have_dask else [])
        walls: dict[str, list[float]] = {c: [] for c in configs}
        loop_out = root / "loop"
        for rnd in range(args.repeats):
            # rotate the order from round to round, so that a busy spell of the (shared)
            # machine does not always fall on the same configuration
            order = configs[rnd % len(configs):] + configs[: rnd % len(configs)]
            for config in order:
                out = root / f"{config}_r{rnd}"
                if config == "loop":  # one `napari-sdnet predict` process per study
                    out.mkdir()
                    script = (
                        f'for f in "{cohort}"/*.nii.gz; do {" ".join(cli)} predict "$f" -o '
                        f'"{out}/$(basename "$f" .nii.gz)_seg.nii.gz" --model {args.model} '
                        f"--device {args.device} || exit 1; done"
                    )
                    t = _timed(["bash", "-c", script], env)
                    if rnd == 0:
                        out.rename(loop_out)
                elif config == "dask_w2":
                    t, stats = _dask_run(root, out, cohort, cli, args, env)
                else:
                    workers = config[-1]
                    cmd = [*cli, "batch", str(cohort), "-o", str(out), "--model", args.model,
                           "--device", args.device, "--workers", workers]
                    t = _timed(cmd, env)
                    stats = _csv_stats(out / "measurements.csv")
                if config != "loop" and (not walls[config] or t < min(walls[config])):
                    results[config] = {**stats}
                walls[config].append(t)
                print(f"round {rnd + 1}: {config}: {t:.1f} s (load {os.getloadavg()[0]:.2f})")
        results = {c: results.get(c, {}) for c in configs}
        for config in configs:
            results[config]["wall_s"] = min(walls[config])
            results[config]["walls_s"] = walls[config]

        # the masks agree with predict's
        dices = []
        for name in ("batch_w1_r0", "batch_w2_r0"):
            for f in sorted((root / name).glob("*_seg.nii.gz")):
                ref = np.asarray(nib.load(loop_out / f.name).dataobj)
                dices.append(_dice(np.asarray(nib.load(f).dataobj), ref))
        input_mb = study.stat().st_size / 1e6
        mask_mb = statistics.mean(p.stat().st_size for p in loop_out.glob("*.nii.gz")) / 1e6

    loop_rate = 3600.0 * n / results["loop"]["wall_s"]
    for r in results.values():
        r["studies_per_hour"] = 3600.0 * n / r["wall_s"]
        r["ratio_to_loop"] = r["studies_per_hour"] / loop_rate
    load_after = os.getloadavg()
    print(f"\n{n} copies of {study.name} ({input_mb:.2f} MB each; mask {mask_mb:.3f} MB), "
          f"model={args.model}, device={args.device}")
    print(f"best of {args.repeats} round(s)")
    print(f"{'configuration':<34} {'wall s':>7} {'studies/h':>10} {'x loop':>7} "
          f"{'s/study':>8} {'1st s':>6} {'peak MB':>8}")
    for key, r in results.items():
        per = r.get("per_study_s_median")
        first = r.get("first_study_s_median")
        peak = r.get("worker_peak_mb")
        print(f"{key:<34} {r['wall_s']:>7.1f} {r['studies_per_hour']:>10.0f} "
              f"{r['ratio_to_loop']:>7.2f} {'' if per is None else f'{per:.2f}':>8} "
              f"{'' if first is None else f'{first:.2f}':>6} "
              f"{'' if peak is None else f'{peak:.0f}':>8}")
    print(f"masks of batch vs predict: Dice min {min(dices):.4f} over {len(dices)} masks")
    print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    stages = _stages(study, args.model, args.device)
    print("one study, warm 1-thread process (best of 3): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "copies": n, "model": args.model, "device": args.device, "cores": cores,
            "load_before": load_before, "load_after": load_after, "input_mb": input_mb,
            "mask_mb": mask_mb, "dice_min_vs_predict": min(dices), "repeats": args.repeats,
            "stages_s": stages,
            "results": results,
        }, indent=1) + "\n")
        print(f"wrote {args.json}")


def _stages(study: Path, model_name: str, device: str) -> dict:
    """Seconds of each step of one study in one warm 1-thread process (what dominates)."""
    code = f"""
import json, time, tempfile, os
import torch
torch.set_num_threads(1)
from napari_sdnet import api
from napari_sdnet.io import read_image
from napari_sdnet.io.nifti import write_nifti
t0 = time.perf_counter(); model = api.load_model({model_name!r}, {device!r})
load = time.perf_counter() - t0
best = {{}}
for _ in range(3):
    t = {{}}
    t0 = time.perf_counter(); vol = read_image({str(study)!r}); t["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    seg = api.segment(model, vol.data, vol.geometry.spacing, latents=False)
    t["segment"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        write_nifti(os.path.join(d, "m.nii.gz"), api.to_acdc_labels(seg.mask), vol.geometry)
        t["write"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    api.measure_segmentation(seg, vol.geometry.spacing, time_unit=vol.geometry.time_unit)
    t["measure"] = time.perf_counter() - t0
    best = {{k: min(v, best.get(k, v)) for k, v in t.items()}}
best["load_model"] = load
print(json.dumps(best))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"stages failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _dask_run(root: Path, out: Path, cohort: Path, cli: list[str], args, env: dict):
    """A fresh scheduler and two 1-thread workers on 127.0.0.1; times `batch --scheduler`."""
    denv = {**env, "OMP_NUM_THREADS": "1"}
    sched_file = out.with_name(out.name + "_scheduler.json")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
        env=denv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                 "--no-dashboard", "--host", "127.0.0.1"],
                env=denv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        t = _timed([*cli, "batch", str(cohort), "-o", str(out), "--model", args.model,
                    "--device", args.device, "--scheduler", address], env)
        return t, _csv_stats(out / "measurements.csv")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
