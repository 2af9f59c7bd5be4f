"""Grids for real: the CLI in its own process, a real local Ray (Tune + Optuna + Train), tiny phantoms.

Each trial spends most of its ~40 s starting Ray Train workers on 2 cores, so the grids here are
as small as the behaviour they test allows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from covidct_bench.tune.grid import grid_status
from covidct_bench.tune.results import read_results
from tests.conftest import make_medseg_source

CLI = [sys.executable, "-m", "covidct_bench.cli"]
ROW_COLUMNS = {"grid", "cell", "config_hash", "seed", "split", "accuracy", "f1", "auc", "sensitivity", "specificity",
               "threshold", "epochs", "wall_s", "images_per_s", "gpu_hours", "hardware", "torch_version", "ray_version",
               "git_sha", "status", "finished_at", "node_id", "params", "phase", "n_images"}


@pytest.fixture(scope="module")
def grid_root(tmp_path_factory) -> Path:
    """Synthetic phantoms (positives with lesion masks) + a MedSeg-layout folder fetched as ``medseg``."""
    from covidct_bench.data import get_dataset

    root = tmp_path_factory.mktemp("grid-data")
    get_dataset("synthetic").fetch(root=root, n=32, size=48, slices_per_patient=2, seed=5)
    src = make_medseg_source(tmp_path_factory.mktemp("medseg-src"), n=4, size=40)
    get_dataset("medseg").fetch(root=root, source=str(src))
    return root


def write_spec(path: Path, root: Path, **spec) -> Path:
    base = {"task": "classify", "seeds": [0],
            "fixed": {"dataset": "synthetic", "root": str(root), "init": "random", "backbone": "resnet18",
                      "image_size": 32, "epochs": 1, "batch_size": 8}}
    fixed = {**base["fixed"], **spec.pop("fixed", {})}
    path.write_text(yaml.safe_dump({**base, **spec, "fixed": fixed}, sort_keys=False))
    return path


def cli(*args: str, timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kw)


def test_grid_variants_cssl_extra_test_and_skip_finished(tmp_path, grid_root):
    spec = write_spec(tmp_path / "g.yaml", grid_root, name="variants",
                      axes={"positive_data": ["covid-ct", "covid-seg"], "init": ["random", "random+cssl"]},
                      exclude=[{"positive_data": "covid-seg", "init": "random+cssl"}],
                      pretrain={"epochs": 1, "batch_size": 8}, extra_test=["medseg"])
    results = tmp_path / "results"
    p = cli("grid", "run", str(spec), "--results", str(results))
    assert p.returncode == 0, p.stderr[-3000:]
    grid = results / "variants"
    df = read_results(grid)
    assert ROW_COLUMNS <= set(df.columns)
    assert (df["status"] == "finished").all() and set(df["phase"]) == {"final"}
    # 3 cells x 1 seed: val + test each, exactly once
    assert df.groupby(["config_hash", "split"]).size().max() == 1
    assert df["config_hash"].nunique() == 3
    by_cell = {c: set(g["split"]) for c, g in df.groupby("cell")}
    # MedSeg as an extra test set: scored where it was not in training, left out where it was
    assert by_cell["positive_data=covid-ct,init=random"] == {"val", "test", "extra:medseg"}
    assert by_cell["positive_data=covid-ct,init=random+cssl"] == {"val", "test", "extra:medseg"}
    assert by_cell["positive_data=covid-seg,init=random"] == {"val", "test"}
    extra = df[df["split"] == "extra:medseg"]
    assert (extra["n_images"] == 4).all() and extra["auc"].isna().all()  # one class: sensitivity only
    assert df.loc[df["split"] != "extra:medseg", "auc"].between(0, 1).all()
    # covid-seg trains on the MedSeg slices as its only positives, tests on the synthetic test split
    row = df[df["cell"] == "positive_data=covid-seg,init=random"].iloc[0]
    cfg = yaml.safe_load((grid / row["run_dir"] / "config.yaml").read_text())
    manifest = pd.read_parquet(Path(cfg["dataset"]) / "manifest.parquet")
    train_pos = manifest[(manifest["split"] == "train") & (manifest["label"] == 1)]
    assert set(train_pos["dataset"]) == {"medseg"} and len(train_pos) == 4
    assert set(manifest.loc[manifest["split"] == "test", "dataset"]) == {"synthetic"}
    # the CSSL cell fine-tunes from the pretraining run, which is cached by hash beside the grids
    row = df[df["cell"] == "positive_data=covid-ct,init=random+cssl"].iloc[0]
    cfg = yaml.safe_load((grid / row["run_dir"] / "config.yaml").read_text())
    pre = Path(cfg["init"].removeprefix("cssl:"))
    assert pre.parent == (results / "_pretrain").resolve() and (pre / "backbone.pt").is_file()
    # predictions: one row per val / test / extra image per trial
    preds = pd.read_parquet(grid / "predictions" / f"{row['config_hash']}.parquet")
    assert preds.groupby("split").size().to_dict() == df[df["config_hash"] == row["config_hash"]].set_index("split")["n_images"].to_dict()
    # a second run finds every config hash finished: nothing runs, nothing is rewritten
    files = {f: f.stat().st_mtime_ns for f in (grid / "rows").iterdir()}
    p = cli("grid", "run", str(spec), "--results", str(results))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "3 trial(s) already finished" in p.stdout
    assert {f: f.stat().st_mtime_ns for f in (grid / "rows").iterdir()} == files
    status = grid_status(spec, results=results)
    assert sorted(status["phase"]) == ["final"] * 3 + ["pretrain"] and (status["status"] == "done").all()
    assert cli("grid", "status", str(spec), "--results", str(results)).returncode == 0
    # the leaderboard reads what the grid wrote: one row per cell, the axes' effects against their first values
    lb = cli("leaderboard", str(results), "--format", "json", "--boot", "200")
    assert lb.returncode == 0, lb.stderr[-3000:]
    data = json.loads(lb.stdout)
    ours = [r for r in data["leaderboard"] if r["kind"] == "ours"]
    assert sorted(r["cell"] for r in ours) == sorted(df["cell"].unique())
    assert all(r["n_seeds"] == 1 and r["n_images"] == df[(df["cell"] == r["cell"]) & (df["split"] == "test")]["n_images"].iloc[0]
               for r in ours)
    assert {(a["axis"], a["versus"], a["value"]) for a in data["ablation"]} == {
        ("positive_data", "covid-ct", "covid-seg"), ("init", "random", "random+cssl")}
    assert data["meta"]["grids"][0]["axes"] == {"positive_data": ["covid-ct", "covid-seg"], "init": ["random", "random+cssl"]}


def test_optuna_search_picks_the_best_validation_params(tmp_path, grid_root):
    spec = write_spec(tmp_path / "s.yaml", grid_root, name="search", seeds=[0, 1],
                      search={"trials": 2, "space": {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-2}}})
    results = tmp_path / "results"
    p = cli("grid", "run", str(spec), "--results", str(results))
    assert p.returncode == 0, p.stderr[-3000:]
    df = read_results(results / "search")
    search = df[df["phase"] == "search"]
    assert len(search) == 2 and set(search["split"]) == {"val"}  # the search never sees test
    params = [json.loads(x) for x in search["params"]]
    assert params[0]["lr"] != params[1]["lr"] and all(1e-5 <= x["lr"] <= 1e-2 for x in params)
    best = json.loads(search.sort_values("auc", ascending=False)["params"].iloc[0])
    final = df[df["phase"] == "final"]
    assert sorted(final["seed"].unique()) == [0, 1] and set(final["split"]) == {"val", "test"}
    assert {json.loads(x)["lr"] for x in final["params"]} == {best["lr"]}
    # same configuration, another seed: other scores
    scores = [pd.read_parquet(results / "search" / "predictions" / f"{h}.parquet").query("split == 'test'")
              .sort_values("image_id")["score"].to_numpy() for h in final.drop_duplicates("seed")["config_hash"]]
    assert len(scores) == 2 and len(scores[0]) == len(scores[1]) and not np.array_equal(scores[0], scores[1])


def _wait(cond, timeout: float, proc: subprocess.Popen | None = None, what: str = ""):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"grid exited ({proc.returncode}) before {what}: {out[-2000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _checkpointed_unfinished(grid: Path):
    done = {f.stem.split("-", 1)[1] for f in (grid / "rows").glob("final-*.parquet")} if (grid / "rows").is_dir() else set()
    for run in (grid / "runs").glob("*") if (grid / "runs").is_dir() else []:
        snapshot = run / "checkpoints" / "checkpoint_manager_snapshot.json"
        if run.name in done or not snapshot.is_file():
            continue
        try:  # a checkpoint counts once Train has registered it (a folder alone may still be uploading)
            registered = json.loads(snapshot.read_text()).get("checkpoint_results")
        except ValueError:
            continue
        if registered:
            return run
    return None


def _train_worker_pids() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "RayTrainWorker" in line and "ps -eo" not in line]


def test_dead_worker_then_killed_driver_then_resume_runs_each_trial_once(tmp_path, grid_root):
    """Two failures in one grid (one test, to pay for Ray Train's start-up once): the first trial's Train
    worker is SIGKILLed and Train restarts it from its last checkpoint; then the driver is SIGKILLed
    during the second trial, and --resume continues that trial from its checkpoint."""
    spec = write_spec(tmp_path / "k.yaml", grid_root, name="killed", axes={"masks": ["none", "lung"]}, max_failures=2,
                      fixed={"image_size": 48, "epochs": 6, "lung_masks": "manifest"})
    results = tmp_path / "results"
    grid = results / "killed"
    proc = subprocess.Popen([*CLI, "grid", "run", str(spec), "--results", str(results), "--max-concurrent", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        first = _wait(lambda: _checkpointed_unfinished(grid), 600, proc, "a checkpoint of the first trial")
        for pid in _wait(_train_worker_pids, 60, proc, "the Train worker process"):
            os.kill(pid, signal.SIGKILL)
        # the first trial finished (restarted), the second is past its first checkpoint: kill the driver there
        _wait(lambda: (grid / "rows").is_dir() and any((grid / "rows").glob("final-*")), 600, proc, "the first trial")
        victim = _wait(lambda: _checkpointed_unfinished(grid), 300, proc, "a checkpoint of the second trial")
        assert victim != first
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    summary = json.loads((first / "summary.json").read_text())
    assert summary["resumed_at_epochs"] and summary["resumed_at_epochs"][0] >= 1  # the worker restarted mid-run
    assert summary["final_epoch"] == 5
    time.sleep(3)
    status = cli("grid", "status", str(spec), "--results", str(results), "--all")
    assert "interrupted" in status.stdout and "done" in status.stdout, status.stdout
    p = cli("grid", "run", str(spec), "--results", str(results), "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    df = read_results(grid)
    assert df["config_hash"].nunique() == 2 and len(df) == 4  # 2 trials x (val, test), each exactly once
    assert (df["status"] == "finished").all() and df.groupby(["config_hash", "split"]).size().eq(1).all()
    summary = json.loads((victim / "summary.json").read_text())
    assert summary["resumed_at_epochs"] and summary["resumed_at_epochs"][0] >= 1  # continued, not restarted
    assert not list((grid / "running").glob("*"))


def test_bad_cell_fails_before_anything_runs(tmp_path, grid_root):
    spec = write_spec(tmp_path / "b.yaml", grid_root, name="bad", axes={"positive_data": ["covid-ct-500"]})
    p = cli("grid", "run", str(spec), "--results", str(tmp_path / "results"), timeout=300)
    assert p.returncode == 1
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "cell positive_data=covid-ct-500" in err[0] and "asks for 500 positives" in err[0]
    assert not (tmp_path / "results" / "bad" / "rows").exists()
