"""Tests of benchmarks/bench_table1.py (paper Table 1) on a synthetic ACDC-H5-like folder.

A minuscule profile (``tiny`` preset, a few iterations) runs the real code path: training
through ``train_model``, evaluation on the test split, run records, resume, the table.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from test_datasets import _make_h5_layout

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    path = REPO_ROOT / "benchmarks" / "bench_table1.py"
    spec = importlib.util.spec_from_file_location("bench_table1", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_table1"] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


bench = _load_bench()

TINY = bench.Profile(
    name="test",
    preset="tiny",
    lr=1e-3,
    batch_size=2,
    iterations=3,
    epochs=None,
    patience=None,
    n_unlabelled=6,
    h5_spacing=3.0,
)


@pytest.fixture(scope="module")
def h5_root(tmp_path_factory) -> Path:
    # 3 training patients (6 volumes x 3 slices), 1 validation and 1 test patient
    root = tmp_path_factory.mktemp("acdc") / "h5"
    return _make_h5_layout(root, {1: "train", 2: "train", 3: "train", 4: "val", 5: "test"})


def _quiet(messages: list[str]):
    return messages.append


def test_profiles_follow_the_issue():
    full, quick = bench.PROFILES["full"], bench.PROFILES["quick"]
    assert (full.preset, full.lr, full.batch_size) == ("paper", 1e-4, 4)
    assert (full.epochs, full.patience) == (200, 20)
    assert quick.preset == "compact" and quick.iterations and quick.epochs is None
    for p in (full, quick):
        assert p.n_unlabelled == 1200 and p.h5_spacing == 1.5
        assert not p.augment and p.rampup == 300
    # every model of a profile gets the same protocol: nothing in it names a model
    assert "model" not in " ".join(full.protocol())
    assert bench.plan(["sdnet", "unet"], [34, 11], [0])[:2] == [("unet", 11, 0), ("sdnet", 11, 0)]


def test_benchmark_runs_resumes_and_redoes_broken_runs(h5_root, tmp_path):
    out = tmp_path / "table"
    log: list[str] = []

    def run_both() -> dict:
        """unet and sdnet, 11 labelled images, seed 0, into ``out`` (log lines in ``log``)."""
        return bench.run_benchmark(
            h5_root,
            TINY,
            out,
            models=["unet", "sdnet"],
            counts=[11],
            seeds=[0],
            device="cpu",
            log=_quiet(log),
        )

    results = run_both()
    runs = out / "runs"
    for name in ("unet-11-s0", "sdnet-11-s0"):
        record = json.loads((runs / f"{name}.json").read_text())
        assert (runs / f"{name}.safetensors").is_file()
        assert record["test"]["n_volumes"] == 2  # the test patient's ED and ES volumes
        assert 0.0 <= record["test"]["mean_myocardium_dice"] <= 1.0
        assert record["training"]["iterations"] == 3
        assert record["training"]["labelled_slices"] == 11
        assert record["protocol"] == TINY.protocol()
        assert record["validation"]["volumes"] == 2  # validation patient only
        assert record["validation"]["history"] == [[3, record["validation"]["best_dice"]]]
        assert not (runs / f"{name}.lock").exists()
    # the U-Net never uses the pool; SDNet does, and the pool is training slices only
    assert json.loads((runs / "unet-11-s0.json").read_text())["training"]["unlabelled_used"] == 0
    sd = json.loads((runs / "sdnet-11-s0.json").read_text())["training"]
    assert sd["unlabelled_used"] == sd["unlabelled_pool"] == 6
    assert results["missing"] == []
    assert set(results["measured"]) == {"unet", "sdnet"}
    assert results["measured"]["unet"]["11"]["n"] == 1
    table = (out / "table1.md").read_text()
    assert "| U-Net | measured (test) |" in table and "| GAN | measured (test) | \u2014 |" in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["measured"] == results["measured"]

    # resume: finished runs are skipped (their files are left untouched)
    mtime = (runs / "sdnet-11-s0.json").stat().st_mtime_ns
    log.clear()
    run_both()
    assert sum("done already" in line for line in log) == 2
    assert not any("training" in line for line in log)
    assert (runs / "sdnet-11-s0.json").stat().st_mtime_ns == mtime

    # a cut-off run (truncated JSON, or a stale lock of a dead process) is redone
    (runs / "unet-11-s0.json").write_text('{"format": 1, "model": "unet", "test": {')
    (runs / "unet-11-s0.lock").write_text("nohost 999999999")
    log.clear()
    run_both()
    assert any(line.startswith("[1/2] unet-11-s0: training") for line in log)
    assert json.loads((runs / "unet-11-s0.json").read_text())["test"]["n_volumes"] == 2
    assert not (runs / "unet-11-s0.lock").exists()
    assert (runs / "sdnet-11-s0.json").stat().st_mtime_ns == mtime

    # runs of another protocol are never mixed into the table
    with pytest.raises(bench.ProtocolMismatch):
        bench.run_benchmark(
            h5_root,
            replace(TINY, lr=2e-3),
            out,
            models=["unet"],
            counts=[11],
            seeds=[0],
            device="cpu",
            log=_quiet(log),
        )


def test_a_live_lock_is_respected(tmp_path):
    lock = tmp_path / "runs" / "x.lock"
    assert bench.claim(lock)
    assert not bench.claim(lock)  # held by this (live) process
    lock.unlink()
    assert bench.claim(lock)


def _record(model: str, count: int, seed: int, dice: float) -> dict:
    return {
        "format": 1,
        "name": bench.run_name(model, count, seed),
        "model": model,
        "labelled": count,
        "seed": seed,
        "protocol": TINY.protocol(),
        "test": {"mean_myocardium_dice": dice, "std": 0.1, "n_volumes": 40},
        "validation": {"best_dice": 0.5, "best_iteration": 300},
        "training": {
            "iterations": 2000,
            "stop_reason": "budget",
            "seconds": 100.0,
            "device": "cpu (1 thread)",
        },
        "evaluation_seconds": 5.0,
        "machine": {"cpu": "test cpu"},
    }


def test_table_with_missing_cells_and_targets(tmp_path):
    runs = [
        _record("sdnet", 11, 0, 0.50),
        _record("sdnet", 11, 1, 0.40),
        _record("unet", 11, 0, 0.30),
        _record("sdnet", 68, 0, 0.70),
        _record("unet", 68, 0, 0.75),
    ]
    cells = bench.summarise(runs)
    assert cells["sdnet"][11] == {"mean": 0.45, "std": 0.0707, "n": 2, "seeds": [0, 1]}
    assert bench.format_cell(cells["unet"][11]) == "0.300 (n=1)"
    assert bench.format_cell(None) == "\u2014"
    table = bench.format_table(cells, TINY)
    lines = table.splitlines()
    assert lines[0] == "| model | source | 284 | 142 | 68 | 34 | 11 |"
    assert "| SDNet | paper | 0.771 | 0.767 | 0.731 | 0.678 | 0.415 |" in lines
    assert (
        "| SDNet | measured (test) | \u2014 | \u2014 | 0.700 (n=1) | \u2014 | "
        "0.450 \u00b1 0.071 (n=2) |" in lines
    )
    assert "| GAN | measured (test) | \u2014 | \u2014 | \u2014 | \u2014 | \u2014 |" in lines
    targets = bench.check_targets(cells)
    assert targets["sdnet_at_or_above_paper_sdnet"] == {
        284: None,
        142: None,
        68: False,
        34: None,
        11: True,
    }
    assert targets["sdnet_above_unet"] == {68: False, 34: None, 11: True}
    report = bench.format_report(runs, TINY, expected=["sdnet-11-s0", "gan-11-s0"])
    assert "Missing: gan-11-s0." in report
    n_runs = len(runs)
    assert f"Finished runs: {n_runs} in all (1 of the 2 this command asked for)" in report
    assert "| SDNet >= paper SDNet | \u2014 | \u2014 | no | \u2014 | yes |" in report

    # write_report reads the run files; a broken one is left out, not fatal
    (tmp_path / "runs").mkdir()
    for r in runs:
        (tmp_path / "runs" / f"{r['name']}.json").write_text(json.dumps(r))
    (tmp_path / "runs" / "gan-11-s0.json").write_text("not json")
    partial = {"format": 1, "model": "gan", "labelled": 34, "seed": 0, "test": {}}
    (tmp_path / "runs" / "gan-34-s0.json").write_text(json.dumps(partial))
    assert bench.load_run(tmp_path / "runs" / "gan-34-s0.json", TINY.protocol()) is None
    results = bench.write_report(tmp_path, TINY)
    assert len(results["runs"]) == 5 and "gan" not in results["measured"]
    assert results["measured"]["sdnet"]["11"]["n"] == 2


def test_measure_speed_times_each_model_type(h5_root):
    speed = bench.measure_speed(
        h5_root, TINY, ["unet", "sdnet"], 2, device="cpu", warmup=1, max_volumes=None
    )
    assert set(speed) == {"unet", "sdnet"} and all(0 < s < 60 for s in speed.values())


def test_command_line_report_and_protocol_guard(tmp_path, capsys):
    out = tmp_path / "quick"
    assert bench.main(["--profile", "quick", "--report", "--out", str(out)]) == 0
    table = (out / "table1.md").read_text()
    assert "profile `quick`" in table and "3000 iterations" in table
    assert "cosine schedule" in table
    assert "| SDNet | measured (quick) | \u2014 | \u2014 | \u2014 | \u2014 | \u2014 |" in table
    assert json.loads((out / "results.json").read_text())["runs"] == []
    # a finished run of the quick protocol makes the full profile refuse this folder
    record = _record("unet", 11, 0, 0.3)
    record["protocol"] = bench.PROFILES["quick"].protocol()
    (out / "runs").mkdir()
    (out / "runs" / "unet-11-s0.json").write_text(json.dumps(record))
    assert bench.main(["--profile", "quick", "--report", "--out", str(out)]) == 0
    assert (
        "| U-Net | measured (quick) | \u2014 | \u2014 | \u2014 | \u2014 | 0.300 (n=1) |"
        in (out / "table1.md").read_text()
    )
    assert bench.main(["--profile", "full", "--report", "--out", str(out)]) == 2
    assert "other settings" in capsys.readouterr().err
    # so does the same profile with augmentation (a protocol of its own)
    assert bench.main(["--profile", "quick", "--augment", "--report", "--out", str(out)]) == 2
    assert "other settings" in capsys.readouterr().err
    aug = tmp_path / "aug"
    assert bench.main(["--profile", "quick", "--augment", "--report", "--out", str(aug)]) == 0
    assert json.loads((aug / "results.json").read_text())["protocol"]["augment"] is True
    # and the same profile with a constant learning rate
    assert bench.main(["--profile", "quick", "--lr-schedule", "constant", "--report", "--out",
                       str(out)]) == 2
    assert "other settings" in capsys.readouterr().err
    # and another budget; the profile's own budget given explicitly is the same protocol
    assert bench.main(["--profile", "quick", "--iterations", "1200", "--report", "--out",
                       str(out)]) == 2
    assert "other settings" in capsys.readouterr().err
    assert bench.main(["--profile", "quick", "--iterations", "3000", "--lr-schedule", "cosine",
                       "--report", "--out", str(out)]) == 0
    longer = tmp_path / "long"
    assert bench.main(["--profile", "quick", "--iterations", "6000", "--report", "--out",
                       str(longer)]) == 0
    assert json.loads((longer / "results.json").read_text())["protocol"]["iterations"] == 6000
    table = (longer / "table1.md").read_text()
    assert "6000 iterations" in table and "| SDNet | measured (quick-it6000) |" in table
    with pytest.raises(SystemExit):
        bench.main(["--profile", "quick", "--iterations", "0", "--report", "--out", str(longer)])


def test_default_folders_keep_protocols_apart():
    quick = bench.PROFILES["quick"]
    assert bench.folder_name(quick) == "table1-quick"
    assert bench.folder_name(bench.PROFILES["full"]) == "table1-full"
    assert bench.folder_name(replace(quick, augment=True)) == "table1-quick-aug"
    assert (
        bench.folder_name(replace(quick, lr_schedule="constant", iterations=1200))
        == "table1-quick-constant-it1200"
    )
    # the full profile is the paper's constant rate: a cosine one is a variant of it
    full = bench.PROFILES["full"]
    assert full.lr_schedule == "constant" and quick.lr_schedule == "cosine"
    assert bench.folder_name(replace(full, lr_schedule="cosine")) == "table1-full-cosine"


def test_runs_recorded_before_a_setting_existed_count_with_its_default(tmp_path):
    # A run written before Profile.lr_schedule existed has no such key: it ran with the
    # constant rate, so it belongs to the constant-rate table and not to the cosine one.
    out = tmp_path / "old"
    (out / "runs").mkdir(parents=True)
    record = _record("sdnet", 11, 0, 0.41)
    protocol = bench.PROFILES["quick"].protocol()
    del protocol["lr_schedule"]
    record["protocol"] = protocol
    (out / "runs" / "sdnet-11-s0.json").write_text(json.dumps(record))
    constant = replace(bench.PROFILES["quick"], lr_schedule="constant")
    assert len(bench.collect_runs(out, constant.protocol())) == 1
    with pytest.raises(bench.ProtocolMismatch):
        bench.collect_runs(out, replace(constant, lr_schedule="cosine").protocol())
    assert bench.main(["--profile", "quick", "--lr-schedule", "constant", "--report"]
                      + ["--out", str(out)]) == 0
    table = (out / "table1.md").read_text()
    assert "| SDNet | measured (quick-constant) |" in table and "0.410 (n=1)" in table
    assert bench.main(["--profile", "quick", "--report", "--out", str(out)]) == 2
