"""Time ``napari-sdnet predict`` on the bundled 4D sample study (240 slices), end to end.

Runs the real command line in a fresh process (reading the NIfTI, preprocessing, inference,
restoring to the input grid, writing the mask and, with ``--reconstruction``, the
reconstruction) and reports wall time and the child's peak resident memory. Usage::

    .venv/bin/python benchmarks/bench_predict.py [--model bundled|PATH] [--device cpu]
        [--repeats 3] [--reconstruction]

Record the figures in docs/benchmarks.md together with the machine (this script prints it).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reconstruction", action="store_true")
    args = parser.parse_args()

    from napari_sdnet.sample import sunnybrook_study

    study = sunnybrook_study()
    exe = [sys.executable, "-m", "napari_sdnet.cli"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            out = Path(tmp) / f"mask{i}.nii.gz"
            cmd = [*exe, "predict", str(study.image), "-o", str(out), "--model", args.model,
                   "--device", args.device]
            if args.reconstruction:
                cmd += ["--reconstruction", str(Path(tmp) / f"recon{i}.nii.gz")]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(f"predict failed: {proc.stderr.strip()}")
            times.append(elapsed)
            print(f"run {i + 1}: {elapsed:.1f} s")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"predict on the sample study (20 x 12 x 144 x 144 = 240 slices), model={args.model}, "
          f"device={args.device}: best {min(times):.1f} s, median "
          f"{sorted(times)[len(times) // 2]:.1f} s; peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
