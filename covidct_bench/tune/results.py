"""Grid results: an append-only Parquet dataset per grid, one file per trial, written atomically.

Layout under ``results/<grid>/``::

    rows/<phase>-<config_hash>.parquet          one row per (trial, split) of a finished trial
    rows/failed-<config_hash>-<time>.parquet    one row per failed attempt (status "failed", error)
    predictions/<config_hash>.parquet           per-image scores of a finished final trial
    runs/<config_hash>/                         the trial's run folder (checkpoints, model.pt, ...)
    tune/                                       Ray Tune's experiment folders
    driver.json                                 the driver running the grid now (pid, host, start)
    spec.yaml                                   the grid spec of the last run (+ its preset), for the report

A finished trial's file is named by its config hash and only ever replaced by the same trial, so a
trial that runs twice (a resumed grid) can never count twice. ``results/`` may be a local folder or a
storage URI (``s3://bucket/results``, ``gs://…``, ``file://…``): every function here takes either
(``covidct_bench.storage.Location``). Read the dataset with
``read_results(dir)``, ``pandas.read_parquet("results/<grid>/rows")``,
``duckdb.sql("select * from 'results/<grid>/rows/*.parquet'")`` or
``polars.read_parquet("results/<grid>/rows/*.parquet")``.

Columns (schema version 1; ``<axis>`` = one string column per axis of the grid, e.g. ``backbone``):

| column | meaning |
|---|---|
| schema_version | 1 |
| grid, phase | grid name; ``final`` (a cell's configuration per seed, scored on test), ``search`` (an Optuna trial on validation) or ``pretrain`` (CSSL) |
| cell, config_hash | cell id (``axis=value,...``) and the hash of its settings + seed (identity of a trial) |
| ``<axis>`` | the cell's value of each axis |
| params | JSON of the settings Optuna chose (``{}`` without a search) |
| seed, split | training seed; ``val``, ``test`` or ``extra:<dataset>`` (an extra test set) |
| n_images, accuracy, precision, f1, auc, sensitivity, specificity, threshold | classification metrics of the final epoch, COVID = 1 positive; the threshold maximises Youden's J on validation and is applied unchanged to the other splits |
| lesion_dice | multi-task runs: mean lesion Dice where a mask exists (else NaN) |
| epochs, wall_s, trial_s, images_per_s, gpu_hours | training epochs; wall time of the Train run; of the whole trial (start-up, extra test sets); training throughput; GPUs x wall / 3600 |
| hardware, torch_version, ray_version, git_sha, covidct_bench_version | with what it ran |
| node_id, train_nodes, driver_node_id | Ray node of the rank-0 Train worker in the final epoch; every node a Train worker of the trial ran on (comma-separated, in order: a restart elsewhere adds one); node of the trial's Tune driver |
| status, error, finished_at, run_dir | ``finished`` or ``failed``; first line of the error; UTC ISO time; run folder relative to the grid |
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import subprocess
from pathlib import Path

import pandas as pd

from covidct_bench.errors import BenchError
from covidct_bench.storage import Location

SCHEMA_VERSION = 1
ROWS, PREDICTIONS, RUNS = "rows", "predictions", "runs"
METRICS = ("accuracy", "precision", "f1", "auc", "sensitivity", "specificity", "threshold", "lesion_dice")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_sha(repo: Path | None = None) -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes), or ``unknown`` outside git."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if sha.returncode:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip()[:12] + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware() -> str:
    """e.g. ``NVIDIA H100 80GB HBM3 x1`` or ``cpu: Intel Xeon ... (2 cores)``."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {name} ({os.cpu_count()} cores)"


def environment() -> dict:
    import ray
    import torch

    from covidct_bench import __version__

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else socket.gethostname()
    return {"hardware": hardware(), "driver_node_id": node, "torch_version": torch.__version__, "ray_version": ray.__version__,
            "covidct_bench_version": __version__}


Where = "str | os.PathLike | Location"


def rows_file(grid_dir: Where, phase: str, config_hash: str) -> Location:
    return Location.of(grid_dir) / ROWS / f"{phase}-{config_hash}.parquet"


def write_parquet(path: Where, df: pd.DataFrame) -> Location:
    """Publish ``df`` as one Parquet file, whole or not at all."""
    path = Location.of(path)
    with path.writing() as tmp:
        df.to_parquet(tmp, index=False)
    return path


def write_rows(path: Where, rows: list[dict]) -> Location:
    df = pd.DataFrame(rows)
    df.insert(0, "schema_version", SCHEMA_VERSION)
    return write_parquet(path, df)


def write_failure(grid_dir: Where, base: dict, error: str) -> Location:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    row = {**base, "split": None, "status": "failed", "error": error[:500], "finished_at": now()}
    return write_rows(Location.of(grid_dir) / ROWS / f"failed-{base['config_hash']}-{stamp}.parquet", [row])


def read_results(grid_dir: Where, phase: str | None = None, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Every row of a grid (empty frame when nothing is there yet). Each file must be of this schema
    version and have the ``required`` columns, else a one-line error names the file."""
    files = (Location.of(grid_dir) / ROWS).glob("*.parquet")
    if not files:
        return pd.DataFrame(columns=["schema_version", "grid", "phase", "cell", "config_hash", "params", "seed", "split",
                                     *METRICS, "status"])
    frames = []
    for f in files:
        try:
            df = f.read_parquet()
        except Exception as e:  # pyarrow raises several types for a broken file
            raise BenchError(f"{f}: not a readable results file ({e})") from None
        if "schema_version" not in df:
            raise BenchError(f"{f}: no schema_version column: not a covidct-bench results file")
        versions = sorted(set(df["schema_version"].dropna().astype(int)))
        if versions != [SCHEMA_VERSION]:
            v = versions[0] if versions else "unknown"
            age = "older than" if isinstance(v, int) and v < SCHEMA_VERSION else "not"
            raise BenchError(f"{f}: results schema version {v}, {age} the version {SCHEMA_VERSION} this covidct-bench "
                             "reads; rerun the grid (grid run --force) or read it with the covidct-bench that wrote it")
        finished_rows = df[df["status"] == "finished"] if "status" in df else df
        if missing := [c for c in required if c not in df and len(finished_rows)]:
            raise BenchError(f"{f}: missing column(s) {', '.join(missing)}")
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if phase is not None:
        df = df[df["phase"] == phase]
    return df.reset_index(drop=True)


PREDICTION_COLUMNS = ("image_id", "patient_id", "split", "y_true", "score", "y_pred")


def predictions_file(grid_dir: Where, config_hash: str) -> Location:
    return Location.of(grid_dir) / PREDICTIONS / f"{config_hash}.parquet"


def write_predictions(grid_dir: Where, config_hash: str, preds: pd.DataFrame) -> Location:
    """Per-image scores of a finished final trial (``config_hash`` first, then PREDICTION_COLUMNS, ...)."""
    preds = preds.copy()
    preds.insert(0, "config_hash", config_hash)
    return write_parquet(predictions_file(grid_dir, config_hash), preds)


def read_predictions(grid_dir: Where, config_hash: str) -> pd.DataFrame:
    """A finished trial's predictions; a one-line error names a missing, broken or incomplete file."""
    path = predictions_file(grid_dir, config_hash)
    if not path.is_file():
        raise BenchError(f"{path}: missing (the predictions of a finished trial; rerun it with grid run --force)")
    try:
        df = path.read_parquet()
    except Exception as e:  # pyarrow raises several types for a broken file
        raise BenchError(f"{path}: not a readable predictions file ({e})") from None
    if missing := [c for c in PREDICTION_COLUMNS if c not in df]:
        raise BenchError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def finished(df: pd.DataFrame, phase: str) -> pd.DataFrame:
    return df[(df["phase"] == phase) & (df["status"] == "finished")]


def write_json(path: Where, data: dict) -> None:
    Location.of(path).write_text(json.dumps(data, indent=2))


def read_json(path: Where) -> dict | None:
    """A JSON object written by ``write_json``, or None when missing or unreadable."""
    try:
        data = json.loads(Location.of(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


SPEC_FILE = "spec.yaml"


def write_spec(grid_dir: Where, spec: dict, preset: str | None, final_trials: list[str] | None = None) -> None:
    """The spec a grid runs with; ``final_trials``: the config hashes of its final trials, once known (the
    report shows only those, so rows of an earlier preset or spec in the same folder are kept, not mixed in)."""
    import yaml

    extra = {"final_trials": sorted(final_trials)} if final_trials is not None else {}
    (Location.of(grid_dir) / SPEC_FILE).write_text(yaml.safe_dump({"preset": preset, **spec, **extra}, sort_keys=False))


def read_spec(grid_dir: Where) -> dict:
    """The spec a grid last ran with (``{}`` for results written before specs were kept)."""
    import yaml

    path = Location.of(grid_dir) / SPEC_FILE
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BenchError(f"{path}: not a readable grid spec ({str(e).splitlines()[0]})") from None
    return data if isinstance(data, dict) else {}
