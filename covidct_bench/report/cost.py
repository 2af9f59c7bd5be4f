"""What grids cost: GPU-hours from the stored results x a price per GPU-hour.

A trial's ``gpu_hours`` is GPUs (per worker x workers) x the wall time of its Train run, stored in its
result rows; CSSL pretraining runs, shared by grids, write no rows, so theirs come from the run
folders under ``<results>/_pretrain/`` (``summary.json`` + ``config.yaml``). Failed attempts are
counted but carry no time: what they burnt is not in the results.
"""

from __future__ import annotations

import json

import pandas as pd
import yaml

from covidct_bench.report.leaderboard import grid_dirs
from covidct_bench.storage import Location
from covidct_bench.tune import results as R

COLUMNS = ["grid", "trials", "failed_attempts", "train_hours", "gpu_hours", "cost"]


def _pretrain_row(results: Location) -> dict | None:
    folder = results / "_pretrain"
    hours = gpu_hours = 0.0
    n = 0
    for run in folder.iterdir():
        try:
            summary = json.loads((run / "summary.json").read_text())
            cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
        except (OSError, ValueError, yaml.YAMLError):
            continue  # unfinished
        wall = float(summary.get("wall_s") or 0.0)
        gpus = (cfg.get("gpus_per_worker") or (1 if cfg.get("gpu") else 0)) * int(cfg.get("workers") or 1)
        n, hours, gpu_hours = n + 1, hours + wall / 3600, gpu_hours + gpus * wall / 3600
    return {"grid": "_pretrain (CSSL, shared)", "trials": n, "failed_attempts": 0, "train_hours": hours,
            "gpu_hours": gpu_hours} if n else None


def grid_costs(paths: list, price_per_gpu_hour: float, grid: str | None = None) -> pd.DataFrame:
    """One row per grid (+ the shared CSSL pretrainings), and a total row."""
    out = []
    for d in grid_dirs(paths, grid):
        rows = R.read_results(d)
        done = R.finished(rows, "final")
        done = pd.concat([done, R.finished(rows, "search")]).drop_duplicates(["phase", "config_hash"])
        failed = int((rows["status"] == "failed").sum()) if len(rows) else 0
        out.append({"grid": d.name, "trials": len(done), "failed_attempts": failed,
                    "train_hours": float(done["wall_s"].sum() / 3600) if "wall_s" in done else 0.0,
                    "gpu_hours": float(done["gpu_hours"].sum()) if "gpu_hours" in done else 0.0})
    if grid is None:
        roots = {}
        for p in paths or ["results"]:
            loc = Location.of(p)
            roots[loc.parent if (loc / R.ROWS).is_dir() else loc] = None  # a grid folder: its pretrainings are beside it
        out += [row for root in roots if (row := _pretrain_row(root))]
    df = pd.DataFrame(out, columns=COLUMNS[:-1])
    total = {"grid": "total", **{c: df[c].sum() for c in ("trials", "failed_attempts", "train_hours", "gpu_hours")}}
    df = pd.concat([df, pd.DataFrame([total])], ignore_index=True)
    df["cost"] = df["gpu_hours"] * price_per_gpu_hour
    return df
