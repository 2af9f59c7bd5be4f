"""Cost per grid: stored gpu_hours (one trial counted once, not once per split) + CSSL pretraining runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from covidct_bench.report.cost import grid_costs
from covidct_bench.tune import results as R


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    grid = root / "g"
    base = {"grid": "g", "cell": "backbone=resnet18", "status": "finished", "params": "{}"}
    for h in ("a1", "a2"):  # final trials: val + test rows carry the same trial totals
        R.write_rows(R.rows_file(grid, "final", h), [{**base, "phase": "final", "config_hash": h, "split": s, "wall_s": 900.0,
                                                      "gpu_hours": 0.25} for s in ("val", "test")])
    R.write_rows(R.rows_file(grid, "search", "s1"), [{**base, "phase": "search", "config_hash": "s1", "split": "val",
                                                      "wall_s": 360.0, "gpu_hours": 0.1}])
    R.write_failure(grid, {**base, "phase": "final", "config_hash": "a3"}, "node lost")
    pre = root / "_pretrain" / "p1"  # a CSSL run: 2 workers x 1 GPU for 30 minutes
    pre.mkdir(parents=True)
    (pre / "summary.json").write_text(json.dumps({"wall_s": 1800.0}))
    (pre / "config.yaml").write_text(yaml.safe_dump({"task": "cssl", "gpus_per_worker": 1, "workers": 2}))
    (root / "_pretrain" / "unfinished").mkdir()
    return root


def test_gpu_hours_per_grid_and_pretraining_times_price(results):
    df = grid_costs([f"file://{results}"], 2.0).set_index("grid")
    assert df.loc["g", "trials"] == 3 and df.loc["g", "failed_attempts"] == 1
    assert df.loc["g", "gpu_hours"] == pytest.approx(0.6) and df.loc["g", "train_hours"] == pytest.approx(0.6)
    assert df.loc["_pretrain (CSSL, shared)", "gpu_hours"] == pytest.approx(1.0)
    assert df.loc["total", "gpu_hours"] == pytest.approx(1.6) and df.loc["total", "cost"] == pytest.approx(3.2)
    only = grid_costs([results / "g"], 2.0, grid="g").set_index("grid")  # one grid named: no shared pretraining row
    assert list(only.index) == ["g", "total"] and only.loc["total", "cost"] == pytest.approx(1.2)


def test_cli_prints_the_cost_table(results):
    p = subprocess.run([sys.executable, "-m", "covidct_bench.cli", "grid", "cost", str(results), "--price-per-gpu-hour", "2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    total = next(line for line in p.stdout.splitlines() if line.strip().startswith("total"))
    assert total.replace("│", " ").split()[-2:] == ["1.60", "3.20"]
