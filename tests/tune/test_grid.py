"""Grids for real: the CLI in its own process, a real local Ray (Tune + Optuna + Train), tiny phantoms.

Each trial spends most of its ~40 s starting Ray Train workers on 2 cores, so the grids here are
as small as the behaviour they test allows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    # the MoCo run itself: kNN and linear-probe accuracy of the frozen encoder, its weights for fine-tuning
    m = pd.read_parquet(pre / "metrics.parquet").set_index("split")
    assert 0 <= m.loc["test", "knn_acc"] <= 1 and 0 <= m.loc["test", "linear_acc"] <= 1 and "instance_acc" in m.columns
    import torch

    assert torch.load(pre / "backbone.pt", weights_only=True)["meta"] == {"backbone": "resnet18", "in_chans": 3}
    # predictions: one row per val / test / extra image per trial
    preds = pd.read_parquet(grid / "predictions" / f"{row['config_hash']}.parquet")
    assert preds.groupby("split").size().to_dict() == df[df["config_hash"] == row["config_hash"]].set_index("split")["n_images"].to_dict()
    # the plan agrees: every trial done (a rerun skipping finished trials is in tests/test_demo.py)
    status = grid_status(spec, results=results)
    assert sorted(status["phase"]) == ["final"] * 3 + ["pretrain"] and (status["status"] == "done").all()
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
    spec = write_spec(tmp_path / "s.yaml", grid_root, name="search", seeds=[0],
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
    assert list(final["seed"].unique()) == [0] and set(final["split"]) == {"val", "test"}
    assert {json.loads(x)["lr"] for x in final["params"]} == {best["lr"]}  # the final trial uses the best params


def test_a_driver_killed_mid_grid_leaves_interrupted_trials_and_no_lock(tmp_path, grid_root):
    """What a SIGKILLed (or crashed) driver leaves: its driver.json and a running marker. The grid
    reads that trial as interrupted, and the next driver takes the lock. (Continuing such a trial from
    its checkpoint is the demo test's Ctrl-C + rerun; a lost Train worker restarting from its
    checkpoint is the two-node cluster test's.)"""
    from covidct_bench.storage import Location
    from covidct_bench.tune import results as R
    from covidct_bench.tune.grid import driver_lock, live_driver

    spec = write_spec(tmp_path / "k.yaml", grid_root, name="killed", axes={"masks": ["none", "lung"]})
    results = tmp_path / "results"
    grid = Location.of(results / "killed")
    hashes = list(grid_status(spec, results=results)["config_hash"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    R.write_json(grid / "driver.json", {"pid": dead.pid, "host": os.uname().nodename, "started": R.now()})
    R.write_json(grid / "running" / f"{hashes[0]}.json", {"pid": dead.pid, "cell": "masks=none", "seed": 0})
    assert live_driver(grid) is None
    status = grid_status(spec, results=results).set_index("config_hash")["status"]
    assert status[hashes[0]] == "interrupted" and status[hashes[1]] == "pending"
    with driver_lock(grid):  # the dead driver's lock does not block
        assert live_driver(grid)["pid"] == os.getpid()
        status = grid_status(spec, results=results).set_index("config_hash")["status"]
        assert status[hashes[0]] == "running"  # a live driver: its marker means running
    assert not (grid / "driver.json").is_file()


def test_bad_cell_fails_before_anything_runs(tmp_path, grid_root):
    spec = write_spec(tmp_path / "b.yaml", grid_root, name="bad", axes={"positive_data": ["covid-ct-500"]})
    p = cli("grid", "run", str(spec), "--results", str(tmp_path / "results"), timeout=300)
    assert p.returncode == 1
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "cell positive_data=covid-ct-500" in err[0] and "asks for 500 positives" in err[0]
    assert not (tmp_path / "results" / "bad" / "rows").exists()
