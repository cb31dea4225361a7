"""`napari-sdnet batch` / napari_sdnet.batch: cohorts, resume, bad inputs, local pool and Dask.

Small phantoms and the tiny untrained model keep every test to seconds; one torch thread per
worker (conftest sets OMP_NUM_THREADS=1 for the subprocesses). Dask runs only on 127.0.0.1.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_sdnet import api, batch
from napari_sdnet.errors import InputError

CLI = [sys.executable, "-m", "napari_sdnet.cli"]
SMALL = dict(n_frames=3, n_slices=2, shape=(48, 48), spacing=(3.0, 3.0))


def _phantom(folder: Path, seed: int) -> Path:
    from napari_sdnet.phantom import write_phantom_nifti

    image, _ = write_phantom_nifti(folder, seed=seed, **SMALL)
    return image


@pytest.fixture
def cohort(tmp_path) -> dict:
    """in/s0..s2.nii.gz (4D), in/sub/s0.nii.gz (same stem), in/vol3d.nii.gz (3D), labels to be
    skipped in folder scans, and a corrupt in/bad.nii.gz."""
    src = tmp_path / "src"
    inp = tmp_path / "in"
    (inp / "sub").mkdir(parents=True)
    for k in range(3):
        shutil.copy(_phantom(src / f"p{k}", k), inp / f"s{k}.nii.gz")
    shutil.copy(_phantom(src / "p3", 3), inp / "sub" / "s0.nii.gz")
    shutil.copy(src / "p0" / "phantom_4d_gt.nii.gz", inp / "s0_gt.nii.gz")  # skipped (label name)
    ph = nib.load(inp / "s1.nii.gz")
    vol = np.asarray(ph.dataobj)[..., 1]  # one phase: (x, y, z)
    img3 = nib.Nifti1Image(vol, ph.affine)
    img3.header.set_zooms(ph.header.get_zooms()[:3])
    nib.save(img3, inp / "vol3d.nii.gz")
    (inp / "bad.nii.gz").write_bytes(b"this is not a NIfTI file")
    return {"in": inp, "tmp": tmp_path}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------ inputs, names
def test_expand_inputs_folders_globs_labels_outdir(cohort):
    inp, tmp = cohort["in"], cohort["tmp"]
    out = inp / "results"  # inside an input folder: never read back as input
    out.mkdir()
    shutil.copy(inp / "s1.nii.gz", out / "s1_copy.nii.gz")
    found = batch.expand_inputs([inp, str(inp / "s*.nii.gz"), inp / "s2.nii.gz"], out)
    names = [p.relative_to(inp).as_posix() for p in found]
    # a folder's files, then its subfolders'; label maps skipped in folders and patterns
    assert names == ["bad.nii.gz", "s0.nii.gz", "s1.nii.gz", "s2.nii.gz", "vol3d.nii.gz",
                     "sub/s0.nii.gz"]
    assert all(p.is_absolute() for p in found)
    # an explicitly named label map is kept (it becomes an error row, not silently dropped)
    assert batch.expand_inputs([inp / "s0_gt.nii.gz"]) == [(inp / "s0_gt.nii.gz").absolute()]
    with pytest.raises(InputError, match="matches"):
        batch.expand_inputs([str(tmp / "nothing" / "*.nii.gz")])
    (tmp / "empty").mkdir()
    with pytest.raises(InputError, match="no NIfTI image"):
        batch.expand_inputs([tmp / "empty"])
    # a pattern keeps images only: other files and folders without images are passed over
    (inp / "notes.txt").write_text("not an image")
    (inp / "nothing_here").mkdir()
    assert sorted(batch.expand_inputs([str(inp / "*")], out)) == sorted(found)
    with pytest.raises(InputError, match="matches no NIfTI image"):
        batch.expand_inputs([str(tmp / "emp*")])


def test_mask_names_clash_and_stability(tmp_path):
    a, b, c = (tmp_path / "x" / "s0.nii.gz", tmp_path / "y" / "s0.nii.gz",
               tmp_path / "y" / "s1.nii")
    assert batch.mask_names([a, b, c]) == ["x_s0_seg.nii.gz", "y_s0_seg.nii.gz", "s1_seg.nii.gz"]
    assert batch.mask_names([a]) == ["s0_seg.nii.gz"]
    # names given by an earlier run are kept; a newcomer avoids them
    assert batch.mask_names([a, b], {a: "s0_seg.nii.gz"}) == ["s0_seg.nii.gz", "y_s0_seg.nii.gz"]
    dicom_folder = tmp_path / "patient7" / "cine"
    dicom_folder.mkdir(parents=True)
    assert batch.mask_names([dicom_folder]) == ["cine_seg.nii.gz"]


# ------------------------------------------------------------------------------ in-process
def test_batch_masks_csv_bad_input_and_resume(cohort, tiny_model_file):
    inp, tmp = cohort["in"], cohort["tmp"]
    out = tmp / "out"
    inputs = [inp, inp / "s0_gt.nii.gz"]
    summary = batch.run_batch(inputs, out, model=tiny_model_file, device="cpu")
    assert (summary.total, summary.segmented, summary.skipped, summary.failed) == (7, 5, 0, 2)
    rows = _rows(out / batch.CSV_NAME)
    assert [r["file"] for r in rows] == [str(p) for p in batch.expand_inputs(inputs)]
    assert list(rows[0]) == list(batch.COLUMNS)
    by_name = {Path(r["file"]).relative_to(inp).as_posix(): r for r in rows}

    bad = by_name["bad.nii.gz"]
    assert bad["status"] == "error" and "not a readable NIfTI" in bad["error"]
    assert "\n" not in bad["error"] and not (out / bad["mask"]).exists()
    assert by_name["s0_gt.nii.gz"]["status"] == "error"
    assert "label map" in by_name["s0_gt.nii.gz"]["error"]

    model = api.load_model(tiny_model_file, "cpu")
    for rel in ("s0.nii.gz", "s1.nii.gz", "s2.nii.gz", "sub/s0.nii.gz", "vol3d.nii.gz"):
        row = by_name[rel]
        assert row["status"] == "ok", row
        src = nib.load(inp / rel)
        mask = nib.load(out / row["mask"])
        assert mask.shape == src.shape
        np.testing.assert_allclose(mask.affine, src.affine, atol=1e-6)
        assert mask.get_data_dtype() == np.uint8
        # the mask is the model's segmentation of that input (not of another one)
        from napari_sdnet.io import read_image

        vol = read_image(inp / rel)
        seg = api.segment(model, vol.data, vol.geometry.spacing, latents=False)
        got = np.asarray(mask.dataobj).T
        np.testing.assert_array_equal(got, seg.labels())
        # and its row holds the cardiac function of that segmentation (cardiac.py's numbers)
        fn = api.measure_segmentation(seg, vol.geometry.spacing,
                                      time_unit=vol.geometry.time_unit)
        for s in ("lv", "rv"):  # the tiny model segments the myocardium only: no cavities
            assert row[f"{s}_edv_ml"] == row[f"{s}_ef_percent"] == row[f"{s}_ml"] == ""
        if vol.data.ndim == 4:
            assert row["frames"] == "3" and row["ed_frame"] == "0" and row["es_frame"] == ""
            if fn.lv_mass_g is None:
                assert row["lv_mass_g"] == ""
            else:
                assert float(row["lv_mass_g"]) == pytest.approx(fn.lv_mass_g, abs=1e-3)
                assert float(row["myocardium_ed_ml"]) == pytest.approx(
                    fn.edv("myocardium"), abs=1e-3)
        else:
            assert row["frames"] == "1" and row["ed_frame"] == ""
            expect = fn.volumes["myocardium"][0]
            assert (row["myocardium_ml"] == "" if expect is None
                    else float(row["myocardium_ml"]) == pytest.approx(expect, abs=1e-3))
    assert {by_name["s0.nii.gz"]["mask"], by_name["sub/s0.nii.gz"]["mask"]} == {
        "in_s0_seg.nii.gz", "sub_s0_seg.nii.gz"}
    assert not list(out.glob(".*sdnet-tmp*"))

    # rerun: finished inputs are skipped (masks untouched), the failed ones tried again
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz")}
    again = batch.run_batch(inputs, out, model=tiny_model_file, device="cpu")
    assert (again.segmented, again.skipped, again.failed) == (0, 5, 2)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz")} == stamps
    assert [r["status"] for r in _rows(out / batch.CSV_NAME)] == [r["status"] for r in rows]

    # a changed input is redone; a repaired one now succeeds
    shutil.copy(inp / "s2.nii.gz", inp / "bad.nii.gz")
    time.sleep(0.01)
    os.utime(inp / "s1.nii.gz")
    third = batch.run_batch(inputs, out, model=tiny_model_file, device="cpu")
    assert (third.segmented, third.skipped, third.failed) == (2, 4, 1)
    assert (out / "bad_seg.nii.gz").is_file()


def test_batch_refuses_foreign_masks_and_another_model(cohort, tiny_model_file, tmp_path):
    inp = cohort["in"]
    out = tmp_path / "out2"
    out.mkdir()
    (out / "s1_seg.nii.gz").write_bytes(b"the user's own file")
    summary = batch.run_batch([inp / "s1.nii.gz", inp / "s2.nii.gz"], out,
                              model=tiny_model_file, device="cpu")
    assert summary.failed == 1 and "not written by this batch" in summary.errors[0][1]
    assert (out / "s1_seg.nii.gz").read_bytes() == b"the user's own file"
    # another model into the same folder: refused up-front, unless --overwrite
    other = tmp_path / "other.safetensors"
    import torch

    from napari_sdnet.model import SDNet

    torch.manual_seed(1)
    api.Model.from_network(SDNet("tiny").eval()).save(other)
    with pytest.raises(InputError, match="another model"):
        batch.run_batch([inp / "s2.nii.gz"], out, model=str(other), device="cpu")
    redone = batch.run_batch([inp / "s1.nii.gz", inp / "s2.nii.gz"], out, model=str(other),
                             device="cpu", overwrite=True)
    assert (redone.segmented, redone.failed) == (2, 0)
    assert nib.load(out / "s1_seg.nii.gz").shape == nib.load(inp / "s1.nii.gz").shape


def test_batch_dicom_series_folders_and_lock(tmp_path, tiny_model_file):
    from napari_sdnet.io import read_image
    from test_dicom import write_series  # the synthetic oblique cine series of test_dicom.py

    root = tmp_path / "dicom"
    for k in range(2):
        write_series(root / f"patient{k}" / "cine", n_t=3, n_z=2, seed=k)
    out = tmp_path / "out"
    summary = batch.run_batch([str(root / "*")], out, model=tiny_model_file, device="cpu")
    assert (summary.segmented, summary.failed) == (2, 0), summary.errors
    for k, row in enumerate(summary.rows):
        assert row["mask"] == f"patient{k}_seg.nii.gz" and row["frames"] == 3
        vol = read_image(root / f"patient{k}")
        mask = nib.load(out / row["mask"])
        assert mask.shape == tuple(reversed(vol.data.shape))
        np.testing.assert_allclose(mask.affine, vol.geometry.affine, atol=1e-5)
        assert "field of view" in row["warnings"] or "covers only" in row["warnings"]
    # a second batch on the same folder while one runs is refused
    with batch._locked(out / batch.STATE_DIR):
        with pytest.raises(InputError, match="another napari-sdnet batch"):
            batch.run_batch([str(root / "*")], out, model=tiny_model_file, device="cpu")


# ------------------------------------------------------------------------------ local pool
def test_local_pool_survives_a_dead_worker(cohort, tiny_model_file, tmp_path):
    """Kill one pool worker after the first result: the pool is restarted, the studies that
    were in flight are retried one at a time, and every input still ends ok."""
    inp = tmp_path / "many"
    inp.mkdir()
    for k in range(8):
        shutil.copy(cohort["in"] / f"s{k % 3}.nii.gz", inp / f"c{k}.nii.gz")
    killed: list[int] = []

    def on_row(row: dict) -> None:
        if not killed:
            pid = int(row["worker"].rsplit(":", 1)[1])
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    summary = batch.run_batch([inp], tmp_path / "out", model=tiny_model_file, device="cpu",
                              workers=2, threads=1, on_row=on_row)
    assert killed and summary.failed == 0 and summary.segmented == 8
    # the studies in flight when the worker died were started again (in a new pool)
    journal = tmp_path / "out" / ".sdnet-batch" / "journal.jsonl"
    starts: dict[str, int] = {}
    for line in journal.read_text().splitlines():
        rec = json.loads(line)
        if rec["event"] == "start":
            starts[rec["input"]] = starts.get(rec["input"], 0) + 1
    assert len(starts) == 8 and max(starts.values()) == 2
    for r in summary.rows:
        assert nib.load(tmp_path / "out" / r["mask"]).shape == (48, 48, 2, 3)


# ------------------------------------------------------------------------------ SIGKILL, resume
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as handle:
            state = next(line for line in handle if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return " Z " not in state and "zombie" not in state


def test_resume_after_sigkill(cohort, tiny_model_file, tmp_path):
    inp = tmp_path / "cohort"
    inp.mkdir()
    n = 30
    for k in range(n):
        shutil.copy(cohort["in"] / f"s{k % 3}.nii.gz", inp / f"study{k:02d}.nii.gz")
    out = tmp_path / "out"
    cmd = [*CLI, "batch", str(inp), "-o", str(out), "--model", tiny_model_file,
           "--device", "cpu", "--workers", "2", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = out / ".sdnet-batch" / "journal.jsonl"

    def done_records() -> list[dict]:
        if not journal.is_file():
            return []
        recs = [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]
        return [r for r in recs if r["event"] == "done"]

    deadline = time.monotonic() + 60
    while len(done_records()) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = {r["input"]: r for r in done_records()}
    assert 3 <= len(done) < n, "the batch was not killed midway"
    # the pool workers notice that their driver is gone and exit
    pids = {int(r["row"]["worker"].rsplit(":", 1)[1]) for r in done.values()}
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
    # what is there is whole: every mask in OUTDIR reads back
    for mask in out.glob("*_seg.nii.gz"):
        assert nib.load(mask).get_fdata().shape == (48, 48, 2, 3)
    stamps = {Path(r["input"]).name: (out / r["mask"]).stat().st_mtime_ns for r in done.values()}

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{n} input(s): {n - len(done)} segmented" in rerun.stdout
    assert f"{len(done)} skipped (done before), 0 failed" in rerun.stdout
    rows = _rows(out / batch.CSV_NAME)
    assert len(rows) == n and all(r["status"] == "ok" for r in rows)
    for r in rows:
        name = Path(r["file"]).name
        assert nib.load(out / r["mask"]).shape == (48, 48, 2, 3)
        if name in stamps:  # skipped: not written again
            assert (out / r["mask"]).stat().st_mtime_ns == stamps[name]
    assert not list(out.glob(".*sdnet-tmp*"))
    # each input was started at most twice (killed in flight, then redone), the done ones once
    starts: dict[str, int] = {}
    for line in journal.read_text().splitlines():
        rec = json.loads(line)
        if rec["event"] == "start":
            starts[rec["input"]] = starts.get(rec["input"], 0) + 1
    assert all(starts[i] == 1 for i in done)
    assert len(starts) == n and max(starts.values()) <= 2


def test_sigterm_keeps_what_was_done(cohort, tiny_model_file, tmp_path):
    inp = tmp_path / "cohort"
    inp.mkdir()
    n = 30
    for k in range(n):
        shutil.copy(cohort["in"] / f"s{k % 3}.nii.gz", inp / f"study{k:02d}.nii.gz")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*CLI, "batch", str(inp), "-o", str(out), "--model", tiny_model_file, "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    journal = out / ".sdnet-batch" / "journal.jsonl"
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if journal.is_file() and journal.read_text().count('"event":"done"') >= 2:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == (
        "napari-sdnet batch: terminated (SIGTERM); nothing more was written")
    rows = _rows(out / batch.CSV_NAME)  # written on the way out: done rows, the rest pending
    assert len(rows) == n
    status = [r["status"] for r in rows]
    assert status.count("ok") >= 2 and "pending" in status
    assert set(status) <= {"ok", "pending"}
    for r in rows:  # (a pending study may have its mask already: it is redone next time)
        if r["status"] == "ok":
            assert nib.load(out / r["mask"]).shape == (48, 48, 2, 3)
    assert not list(out.glob(".*sdnet-tmp*"))


# ------------------------------------------------------------------------------ Dask
def test_dask_scheduler_and_two_workers(cohort, tiny_model_file, tmp_path):
    pytest.importorskip("distributed")
    from distributed import Client

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(2):
            # without a nanny (faster to start), but with the allocator setting a nanny gives
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                 "1", "--no-dashboard", "--no-nanny", "--host", "127.0.0.1"],
                env={**env, "MALLOC_TRIM_THRESHOLD_": "65536"},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            out = tmp_path / "out"
            proc = subprocess.run(
                [*CLI, "batch", str(cohort["in"]), "-o", str(out), "--model", tiny_model_file,
                 "--device", "cpu", "--scheduler", address],
                capture_output=True, text=True, timeout=300, env=env,
            )
            loads = client.run(
                lambda: __import__("napari_sdnet.batch", fromlist=["_"])._MODEL_LOADS
            )
            # glibc's thresholds can be set back in a worker started that way (Linux)
            reset = client.run(
                lambda: __import__("napari_sdnet.batch", fromlist=["_"])._undo_dask_malloc_trim()
            )
        assert proc.returncode == 1, proc.stderr  # the corrupt input failed, the rest ran
        assert "failed: " in proc.stderr and "bad.nii.gz" in proc.stderr
        assert "6 input(s): 5 segmented" in proc.stdout and "Dask cluster at" in proc.stdout
        rows = _rows(out / batch.CSV_NAME)
        assert len(rows) == 6
        assert [r["status"] for r in rows].count("ok") == 5
        for r in rows:
            if r["status"] != "ok":
                assert Path(r["file"]).name == "bad.nii.gz"
                continue
            src = nib.load(r["file"])
            mask = nib.load(out / r["mask"])
            assert mask.shape == src.shape
            np.testing.assert_allclose(mask.affine, src.affine, atol=1e-6)
        workers = {r["worker"] for r in rows}
        assert 1 <= len(workers) <= 2 and all(r["worker"] for r in rows)
        # each worker loaded the model once at most, not once per study
        assert sorted(loads.values()) in ([0, 1], [1, 1])
        assert sum(loads.values()) == len(workers)
        if sys.platform.startswith("linux"):
            assert all(reset.values())
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


# ------------------------------------------------------------------------------ CLI
def test_cli_batch_errors_are_one_line(tmp_path, tiny_model_file):
    proc = subprocess.run(
        [*CLI, "batch", str(tmp_path / "none" / "*.nii.gz"), "-o", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"napari-sdnet batch: error: no file or folder matches "
        f"'{tmp_path / 'none' / '*.nii.gz'}'"
    ]
    proc = subprocess.run(
        [*CLI, "batch", str(tmp_path), "-o", str(tmp_path / "o"), "--workers", "2",
         "--scheduler", "tcp://127.0.0.1:1"], capture_output=True, text=True,
    )
    assert proc.returncode == 2 and "--workers is for local runs" in proc.stderr


def test_cli_help_stays_light(modules_loaded_by):
    loaded = modules_loaded_by("from napari_sdnet import cli; cli.build_parser()")
    assert not {"torch", "distributed", "dask", "napari_sdnet.batch"} & loaded
