"""A real two-node Ray cluster on this machine: ``ray start --head`` (127.0.0.2, 1 CPU) + ``ray start
--address`` (127.0.0.3, 1 CPU, its own temp folder), token auth on. A tiny grid goes in with
``cluster submit`` (= ``ray job submit``), its trials train on both nodes into one Parquet dataset at
a file:// URI, the second node's raylet is SIGKILLed mid-grid, and the grid still completes: the lost
trial is retried on the surviving node from its checkpoint, and no result is counted twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from covidct_bench.cluster.local import LocalCluster, _alive
from covidct_bench.tune.results import read_results


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path / "cluster").up(nodes=2, cpus=1, trial_drivers=4)
    try:
        yield c
    finally:
        c.down()
        # only what it started, and all of it
        assert not any(_alive(n.pgid) for n in c.nodes) and not any(Path(n.temp_dir).exists() for n in c.nodes)


def _ray(cluster: LocalCluster, *args: str, auth: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, **cluster.env()} if auth else {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return subprocess.run([str(Path(sys.executable).with_name("ray")), *args], capture_output=True, text=True, env=env,
                          timeout=120)


def _checkpoint_on(grid: Path, node: str) -> Path | None:
    """A run folder with a registered checkpoint written by a Train worker on ``node`` (a finished trial counts not)."""
    done = {f.stem.split("-", 1)[1] for f in (grid / "rows").glob("final-*.parquet")} if (grid / "rows").is_dir() else set()
    for run in sorted((grid / "runs").glob("*")) if (grid / "runs").is_dir() else []:
        try:
            snap = json.loads((run / "checkpoints" / "checkpoint_manager_snapshot.json").read_text())
        except (OSError, ValueError):
            continue
        for ckpt in snap.get("checkpoint_results") or []:
            state = torch.load(run / "checkpoints" / ckpt["checkpoint_dir_name"] / "state.pt", weights_only=True)
            if run.name not in done and state["nodes"][-1][0] == node and state["epoch"] < 8:
                return run
    return None


def test_a_grid_job_runs_on_both_nodes_and_survives_losing_one(tmp_path, cluster):
    from covidct_bench.data import get_dataset

    # the cluster: two nodes at their own loopback addresses, dashboard on 127.0.0.1, token auth enforced
    nodes = {n["node_ip"]: n["node_id"] for n in json.loads(_ray(cluster, "list", "nodes", "--format", "json").stdout)}
    assert set(nodes) == {"127.0.0.2", "127.0.0.3"}
    head, second = nodes["127.0.0.2"], nodes["127.0.0.3"]
    listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == cluster.dashboard_port}
    assert listening == {"127.0.0.1"}
    refused = _ray(cluster, "status", "--address", cluster.address, auth=False)
    assert refused.returncode != 0 and "uthentication" in refused.stdout + refused.stderr

    root = tmp_path / "datasets"  # on this machine every node sees the same path
    get_dataset("synthetic").fetch(root=root, n=32, size=48, slices_per_patient=2, seed=5)
    work = tmp_path / "work"  # the job's working directory (uploaded by ray job submit)
    work.mkdir()
    (work / "g.yaml").write_text(yaml.safe_dump({
        "name": "two-nodes", "task": "classify", "seeds": [0], "axes": {"masks": ["none", "lung"]}, "max_failures": 3,
        "fixed": {"dataset": "synthetic", "root": str(root), "init": "random", "backbone": "resnet18", "image_size": 48,
                  "epochs": 10, "batch_size": 8, "lung_masks": "manifest"}}))
    results = tmp_path / "results"
    log = tmp_path / "job.log"
    with open(log, "w") as out:
        job = subprocess.Popen([sys.executable, "-m", "covidct_bench.cli", "cluster", "submit", "--working-dir", str(work),
                                "--", "grid", "run", "g.yaml", "--results", f"file://{results}"],
                               stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **cluster.env()})
    grid = results / "two-nodes"
    try:
        t0 = time.monotonic()
        while (victim := _checkpoint_on(grid, second)) is None:
            assert job.poll() is None, f"job ended before a checkpoint on the second node: {log.read_text()[-3000:]}"
            assert time.monotonic() - t0 < 420, "no checkpoint on the second node in time"
            time.sleep(0.2)
        cluster.kill_node(1)
        assert job.wait(600) == 0, log.read_text()[-3000:]
    finally:
        if job.poll() is None:
            job.kill()
    text = " ".join(log.read_text().split())  # the job's console wraps long lines
    assert "up to 2 trials at once" in text and "Job 'raysubmit_" in text and "succeeded" in text

    # one Parquet dataset at the URI, every (trial, split) exactly once, trials on both nodes
    df = read_results(f"file://{results}/two-nodes")
    done = df[df["status"] == "finished"]
    assert len(done) == 4 and done.groupby(["config_hash", "split"]).size().eq(1).all()
    assert set(done["split"]) == {"val", "test"} and done["config_hash"].nunique() == 2
    assert {n for t in done["train_nodes"] for n in t.split(",")} == {head, second}
    assert set(done["driver_node_id"]) == {head}  # trial drivers hold the head's trial_driver units
    # the lost trial went on on the head from its checkpoint on the second node: Train restarts the worker
    # group, or (when Ray reports the lost worker as a controller error) Tune retries the trial, which
    # leaves a failed-attempt row; either way one finished result
    lost = done[done["run_dir"] == f"runs/{victim.name}"]
    assert set(lost["train_nodes"]) == {f"{second},{head}"} and set(lost["node_id"]) == {head}
    assert set(df.loc[df["status"] == "failed", "config_hash"]) <= {victim.name}
    summary = json.loads((victim / "summary.json").read_text())
    assert summary["resumed_at_epochs"] and summary["resumed_at_epochs"][0] >= 1 and summary["final_epoch"] == 9
    # the report reads the same URI
    lb = subprocess.run([sys.executable, "-m", "covidct_bench.cli", "leaderboard", f"file://{results}", "--format", "json",
                         "--boot", "100"], capture_output=True, text=True, timeout=300)
    assert lb.returncode == 0, lb.stderr[-2000:]
    meta = json.loads(lb.stdout)["meta"]["grids"][0]
    assert meta["nodes"] == 1 or meta["nodes"] == 2  # final-epoch nodes: both trials may end on the head
    assert sorted(r["cell"] for r in json.loads(lb.stdout)["leaderboard"] if r["kind"] == "ours") == ["masks=lung", "masks=none"]
