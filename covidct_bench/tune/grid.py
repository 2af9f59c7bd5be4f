"""Running a grid: Ray Tune trials that each drive a Ray Train job, results as Parquet.

``run_grid`` plans the grid from its spec, then runs up to three phases, each one ``Tuner``:

1. ``pretrain`` — the CSSL (MoCo) pretrainings that ``*+cssl`` cells need, once per distinct
   configuration; cached by config hash in ``results/_pretrain/<hash>/`` and shared by every grid;
2. ``search`` — per cell whose spec asks for it, Optuna (``OptunaSearch``) tunes the search space on
   validation (seed = the first seed); trials already in the results are handed back to Optuna
   (``points_to_evaluate`` + ``evaluated_rewards``), so a resumed search goes on where it stopped;
3. ``final`` — the chosen configuration of every cell, once per seed, scored on test (and on the
   spec's extra test sets).

A trial is a Tune function trainable (one unit of the custom ``trial_driver`` resource, so that Tune
never takes the CPUs its Train workers need) that builds a ``TorchTrainer`` with
``TuneReportCallback``. Its run folder is ``results/<grid>/runs/<config_hash>/``: a trial that starts
again in the same folder continues from its last checkpoint (Train's failure config restarts a dead
worker group that way; ``--resume`` does it for a killed grid). The results dataset is the source of
truth: a trial whose config hash already has a finished result is not run again (``--force`` reruns).

``results`` may be a local folder or a storage URI (``s3://bucket/results``, ``gs://…``, ``file://…``):
rows, predictions, run folders, Train checkpoints and Tune's experiment state all go there through
pyarrow filesystems (``covidct_bench.storage``); a trial writes its run files locally and publishes
them when it finishes. On a cluster the datasets themselves must be on a path every node sees.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import yaml

from covidct_bench.data.manifest import load_manifest
from covidct_bench.errors import BenchError, Interrupted, root_reason
from covidct_bench.storage import Location, check_job_results
from covidct_bench.tune import results as R
from covidct_bench.train.config import TrainConfig
from covidct_bench.train.runner import absolute_paths
from covidct_bench.tune.spec import GRID_ONLY, GridSpec, cell_id, config_hash, load_spec

PRETRAIN_DIR = "_pretrain"
TRIAL_RESOURCE = "trial_driver"
TRIAL_DONE = "trial_done"  # in a trial's last report once its result is stored: a trial without it was stopped


@dataclass
class Trial:
    """One Tune trial: what to train (``train``: TrainConfig kwargs, paths resolved) and where."""

    phase: str  # pretrain | search | final
    grid: str
    cell: dict[str, Any]
    cell_id: str
    seed: int
    settings: dict[str, Any]  # spec-level settings: the config hash is taken over these + seed
    params: dict[str, Any]
    config_hash: str
    run_dir: str
    train: dict[str, Any]
    grid_dir: str
    metric: str = "auc"
    extra_test: dict[str, str] = field(default_factory=dict)  # name -> extra test-set dataset folder
    max_failures: int = 1
    env: dict[str, Any] = field(default_factory=dict)

    def with_params(self, params: dict[str, Any]) -> "Trial":
        """The same trial with tuned settings (a search trial, or the final runs of a tuned cell)."""
        return self.with_seed(self.seed, params)

    def with_seed(self, seed: int, params: dict[str, Any] | None = None) -> "Trial":
        """The same cell with another seed (and tuned settings): a new config hash and run folder."""
        params = self.params if params is None else dict(params)
        settings = {**self.settings, **params}
        h = config_hash(settings, seed)
        return replace(self, seed=seed, params=params, settings=settings, config_hash=h,
                       train={**self.train, **params, "seed": seed}, run_dir=str(Location.of(self.grid_dir) / R.RUNS / h))


# --------------------------------------------------------------------------------------------- data
class DataPlan:
    """Resolves a cell's data settings: mask sets, training-set variants, extra test sets, caches."""

    def __init__(self, spec: GridSpec, progress=None):
        self.spec, self.progress = spec, progress
        self._done: dict[tuple, dict] = {}

    def manifest(self, name: str, root: str | None, lung_masks: str) -> pd.DataFrame:
        from covidct_bench.data.lung_masks import MANIFEST_MASKS, classical_masks, set_dir, with_lung_masks, write_mask_set

        df = load_manifest(name, root)
        if lung_masks == "classical" and not (set_dir(df, lung_masks) / "index.parquet").is_file():
            task = self.progress.add_task(f"lung masks of {name} (classical)", total=len(df)) if self.progress else None
            write_mask_set(df, lung_masks, classical_masks(df), {"method": "classical", "made_by": "grid"},
                           progress=(lambda n: self.progress.advance(task, n)) if self.progress else None)
        return with_lung_masks(df, lung_masks) if lung_masks != MANIFEST_MASKS else df

    def resolve(self, settings: dict[str, Any]) -> dict[str, Any]:
        """TrainConfig overrides that point a cell at its data (a derived manifest for ``positive_data``)."""
        from covidct_bench.data.variants import NEEDS_SEG, training_variant, write_variant

        name, root = settings.get("dataset", "synthetic"), settings.get("root")
        lung_masks, variant = settings.get("lung_masks", "manifest"), settings.get("positive_data")
        key = (name, root, lung_masks, variant)
        if key in self._done:
            return self._done[key]
        base = self.manifest(name, root, lung_masks)
        if variant is None:
            out = {}
        else:
            seg = self.manifest(self.spec.seg_dataset, root, lung_masks) if variant in NEEDS_SEG else None
            folder = (Path(base.attrs["root"]) / "variants"
                      / f"{variant}.{self.spec.seg_dataset}.s{self.spec.data_seed}.{lung_masks}")
            write_variant(training_variant(base, seg, variant, self.spec.data_seed), folder)
            out = {"dataset": str(folder.resolve()), "root": None, "lung_masks": "manifest"}
        self._done[key] = out
        return out

    def extra_test(self, settings: dict[str, Any]) -> dict[str, str]:
        from covidct_bench.data.variants import extra_test_set, write_variant

        out = {}
        root, lung_masks = settings.get("root"), settings.get("lung_masks", "manifest")
        for name in self.spec.extra_test:
            key = ("extra", name, root, lung_masks)
            if key not in self._done:
                df = self.manifest(name, root, lung_masks)
                folder = Path(df.attrs["root"]) / "variants" / f"test.{lung_masks}"
                write_variant(extra_test_set(df), folder)
                self._done[key] = {"path": str(folder.resolve())}
            out[name] = self._done[key]["path"]
        return out


def _train_kwargs(spec: GridSpec, settings: dict[str, Any], data: dict[str, Any], seed: int) -> dict[str, Any]:
    r = spec.resources
    train = {k: v for k, v in settings.items() if k not in GRID_ONLY}
    train.update(data)
    train.update(seed=seed, workers=r.workers, cpus_per_worker=r.cpus, gpus_per_worker=r.gpus or None)
    # resolved here, on the driver: a trial runs in a Ray worker with another working directory
    cfg = absolute_paths(TrainConfig(**train))
    train.update(root=cfg.root, weights=cfg.weights, init=cfg.init)
    return train


# ------------------------------------------------------------------------------------------- trials
def _result_rows(trial: Trial, run, extra: list[dict]) -> tuple[list[dict], pd.DataFrame]:
    """Rows of a finished trial (one per split of its final epoch) and its per-image predictions."""
    m = run.metrics
    final = int(m["epoch"].max())
    last = m[m["epoch"] == final]
    train = m[m["split"] == "train"]
    preds = run.predictions
    preds = preds[preds["epoch"] == final] if "epoch" in preds else preds
    splits = ("val",) if trial.phase == "search" else ("val", "test")
    wall = float(run.summary.get("wall_s", float("nan")))
    gpus = (trial.train.get("gpus_per_worker") or 0) * int(trial.train.get("workers", 1))
    base = _base_row(trial)
    base.update(epochs=final + 1, wall_s=wall, images_per_s=float(np.nanmedian(train["images_per_s"])) if len(train) else float("nan"),
                gpu_hours=gpus * wall / 3600.0, node_id=run.summary.get("final_node"),
                train_nodes=",".join(run.summary.get("train_nodes", [])))
    rows = []
    for split in splits:
        got = last[last["split"] == split]
        if not len(got):
            continue
        vals = got.iloc[0]
        rows.append({**base, "split": split, "n_images": int((preds["split"] == split).sum()) if len(preds) else 0,
                     **{k: float(vals[k]) if k in vals and pd.notna(vals[k]) else float("nan") for k in R.METRICS}})
    for e in extra:
        rows.append({**base, **e})
    for r in rows:
        r.update(status="finished", error=None, finished_at=R.now())
    keep = preds[preds["split"].isin(splits)] if len(preds) else preds
    return rows, keep


def _base_row(trial: Trial) -> dict:
    return {"grid": trial.grid, "phase": trial.phase, "cell": trial.cell_id, "config_hash": trial.config_hash,
            **{k: str(v) for k, v in trial.cell.items()}, "params": json.dumps(trial.params, sort_keys=True, default=str),
            "seed": trial.seed, **trial.env, **R.environment(),
            "run_dir": os.path.relpath(Location.of(trial.run_dir).path, Location.of(trial.grid_dir).path)}


def extra_cache_dir(folder: str | Path, size: int) -> Path:
    """Where an extra test set's cache lives (built by the driver, read by the trials)."""
    return Path(folder) / "cache" / str(size)


def _score_extra(trial: Trial, cfg, run_dir: Path, threshold: float) -> tuple[list[dict], list[pd.DataFrame]]:
    """Score the trained model on each extra test set (its images minus any used in training)."""
    import contextlib as _cl

    import torch

    from covidct_bench.data.cache import build_cache
    from covidct_bench.data.manifest import read_manifest
    from covidct_bench.metrics import classification_metrics
    from covidct_bench.train.loop import evaluate
    from covidct_bench.train.runner import load_model_file
    from covidct_bench.train.tasks import get_task

    if not trial.extra_test:
        return [], []
    task = get_task(cfg)
    model = get_task(cfg.model_copy(update={"init": "random", "weights": None})).build_model()  # weights: model.pt
    state, _ = load_model_file(run_dir)
    model.load_state_dict(state)
    trained = set(load_manifest(cfg.dataset, cfg.root).query("split == 'train'")["image_id"])
    rows, frames = [], []
    for name, folder in trial.extra_test.items():
        size = int(cfg.image_size)
        cache = build_cache(read_manifest(folder), size=size, out=extra_cache_dir(folder, size))  # reused: built by the driver
        out = evaluate(task, model, str(cache.path), torch.device("cpu"), _cl.nullcontext, False, 32, splits=("test",))["test"]
        keep = ~cache.index["image_id"].isin(trained).to_numpy()[out["index"]]
        score, index = out["score"][keep], out["index"][keep]
        if not len(index):  # every image of the set was a training image of this cell
            continue
        y = cache.index["label"].to_numpy()[index]
        split = f"extra:{name}"
        rows.append({"split": split, "n_images": len(index),
                     **classification_metrics(y, score, threshold), "lesion_dice": float("nan")})
        frames.append(task.prediction_rows(split, {"index": index, "score": score}, cache.index,
                                           y_pred=(score >= threshold).astype(np.int8)))
    return rows, frames


def grid_trial(config: dict, jobs: dict[str, dict]) -> None:
    """The Tune function trainable: one trial = one Ray Train run (+ its rows in the results)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from covidct_bench.train.config import TrainConfig
    from covidct_bench.train.runner import finish, prepare, staging, trainer_for, write_config

    started = time.perf_counter()
    job = dict(jobs[config.get("key", "search")])
    trial = Trial(**job)
    params = {k: v for k, v in config.items() if k != "key"}
    if params:
        trial = trial.with_params(params)
    grid_dir, run_dir = Location.of(trial.grid_dir), Location.of(trial.run_dir)
    rows_path = R.rows_file(grid_dir, trial.phase, trial.config_hash)
    metric_key = f"val/{trial.metric}"
    if trial.phase != "pretrain" and rows_path.is_file():  # finished earlier (e.g. by a run that was killed later)
        done = rows_path.read_parquet()
        val = done[done["split"] == "val"]
        tune.report({metric_key: float(val[trial.metric].iloc[0]) if len(val) else float("nan"), "skipped": 1, TRIAL_DONE: 1})
        return
    marker = grid_dir / "running" / f"{trial.config_hash}.json"
    R.write_json(marker, {"pid": os.getpid(), "host": socket.gethostname(), "started": R.now(), "cell": trial.cell_id,
                          "seed": trial.seed, "phase": trial.phase})
    try:
        cfg = TrainConfig(**trial.train)
        cfg, loop = prepare(cfg)
        write_config(run_dir, cfg)  # as `train` writes it
        with staging(run_dir) as stage:  # the run's files; published to run_dir (a URI) when the block ends
            trainer = trainer_for(cfg, loop, run_dir, callbacks=[TuneReportCallback()], max_failures=trial.max_failures)
            t0 = time.perf_counter()
            result = trainer.fit()
            if result.error is not None:
                raise result.error
            run = finish(stage, cfg, result, time.perf_counter() - t0)
            if trial.phase != "pretrain":
                val = run.metrics[(run.metrics["split"] == "val") & (run.metrics["epoch"] == run.metrics["epoch"].max())]
                threshold = float(val["threshold"].iloc[0]) if len(val) and "threshold" in val else 0.5
                extra_rows, extra_preds = _score_extra(trial, cfg, stage, threshold) if trial.phase == "final" else ([], [])
        if trial.phase == "pretrain":
            tune.report({"done": 1, TRIAL_DONE: 1})
            return
        rows, preds = _result_rows(trial, run, extra_rows)
        for r in rows:
            r["trial_s"] = time.perf_counter() - started
        if trial.phase == "final":
            R.write_predictions(grid_dir, trial.config_hash, pd.concat([preds, *extra_preds], ignore_index=True))
        R.write_rows(rows_path, rows)  # last: the commit point of a trial
        vrow = next((r for r in rows if r["split"] == "val"), {})
        tune.report({metric_key: vrow.get(trial.metric, float("nan")), "done": 1, TRIAL_DONE: 1})
    except Exception as e:
        R.write_failure(grid_dir, _base_row(trial), root_reason(e))
        raise
    finally:
        marker.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ driver
@dataclass
class GridOutcome:
    grid_dir: Location
    ran: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    phases: dict[str, int] = field(default_factory=dict)
    walls: dict[str, float] = field(default_factory=dict)  # seconds each phase's Tuner ran
    concurrency: int = 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_driver(grid_dir: Location) -> dict | None:
    """``driver.json`` of the grid's driver if that process is alive on this host, else None."""
    info = R.read_json(grid_dir / "driver.json")
    if info is None:
        return None
    alive = info.get("host") == socket.gethostname() and _pid_alive(int(info.get("pid", -1)))
    return info if alive else None


@contextlib.contextmanager
def driver_lock(grid_dir: Location):
    """One driver per grid folder: a second ``grid run`` on the same grid is refused while one lives."""
    info = live_driver(grid_dir)
    if info is not None and info.get("pid") != os.getpid():
        raise BenchError(f"{grid_dir}: grid already running (pid {info['pid']} since {info.get('started')}); "
                         "wait for it or stop it first")
    path = grid_dir / "driver.json"
    R.write_json(path, {"pid": os.getpid(), "host": socket.gethostname(), "started": R.now()})
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def cluster_fit(spec: GridSpec, connected: bool):
    """How many trials of the spec run at once on this Ray cluster (covidct_bench.resources); BenchError if none can."""
    from covidct_bench.resources import cluster_nodes, fit

    r = spec.resources
    nodes = cluster_nodes(connected)
    return fit(r.workers, r.cpus, r.gpus, nodes), nodes


def _init_ray(address: str | None, concurrency: int | None) -> bool:
    """Start a local Ray with the trial-driver resource, or connect to ``address`` / $RAY_ADDRESS;
    True when connected to an existing cluster."""
    import ray

    from covidct_bench.data.cache import init_ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized() and TRIAL_RESOURCE not in ray.cluster_resources() and not address:
        ray.shutdown()  # a local Ray started without the trial-driver resource (e.g. by a preprocessing step)
    init_ray(address, resources=None if address else {TRIAL_RESOURCE: max(concurrency or 0, 64)})
    if TRIAL_RESOURCE not in ray.cluster_resources():  # trials would wait for it forever
        raise BenchError(f"--address {address}: the Ray cluster has no {TRIAL_RESOURCE!r} resource, which grid trials hold "
                         f"instead of a CPU; start its head with `ray start --head --resources='{{\"{TRIAL_RESOURCE}\": 64}}'`")
    return bool(address)


class Progress:
    """A Tune callback (runs in the driver) that keeps a live rich table of the trials of a phase."""

    def __init__(self, console, labels: dict[str, str]):
        self.console, self.labels, self.state = console, labels, {k: ["pending", "", ""] for k in labels}
        self.live = None  # the rich Live while a Tuner runs

    def callback(self, metric: str):
        return _progress_callback_class()(self, metric)

    def _set(self, key: str, status: str, epoch: str | None = None, val: str | None = None) -> None:
        if key not in self.state:
            self.labels[key] = key
            self.state[key] = ["pending", "", ""]
        s = self.state[key]
        s[0] = status
        if epoch:
            s[1] = epoch
        if val:
            s[2] = val
        if self.live is not None:
            self.live.update(self.table())

    def table(self):
        from rich.table import Table

        t = Table(show_edge=False, pad_edge=False)
        for col in ("trial", "status", "epoch", "val"):
            t.add_column(col)
        colors = {"done": "green", "failed": "red", "running": "yellow", "pending": "dim"}
        for k, (status, ep, val) in self.state.items():
            t.add_row(self.labels[k], f"[{colors[status]}]{status}[/]", ep, val)
        return t


def _progress_callback_class():
    from ray.tune import Callback

    class ProgressCallback(Callback):
        """Forwards trial events to the driver's ``Progress`` (not pickled: Tune saves its callbacks)."""

        def __init__(self, progress: Progress, metric: str):
            self.progress, self.metric = progress, metric

        def __getstate__(self):
            return {"progress": None, "metric": self.metric}

        def _set(self, trial, *args) -> None:
            if self.progress is not None:
                self.progress._set(trial.config.get("key", trial.trial_id), *args)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._set(trial, "running")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            ep, val = result.get("epoch"), result.get(f"val/{self.metric}")
            self._set(trial, "done" if result.get("done") else "running", "" if ep is None else str(int(ep) + 1),
                      "" if val is None or (isinstance(val, float) and math.isnan(val)) else f"{val:.3f}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._set(trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._set(trial, "failed")

    return ProgressCallback


def _run_tuner(trials: dict[str, Trial], phase: str, spec: GridSpec, grid_dir: Location, concurrency: int, console,
               search: dict | None = None, label: Callable[[Trial], str] | None = None) -> list[str]:
    """One Tuner over ``trials`` (final / pretrain: a grid over their keys; search: Optuna). Returns errors."""
    from ray import tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: Tune prints nothing; the rich table reports
    jobs = {k: asdict(t) for k, t in trials.items()}
    trainable = tune.with_resources(tune.with_parameters(grid_trial, jobs=jobs), {TRIAL_RESOURCE: 1})
    storage_path, storage_fs = (grid_dir / "tune").for_ray()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    metric = f"val/{spec.metric}"
    if search is None:
        labels = {k: (label(t) if label else k) for k, t in trials.items()}
        param_space = {"key": tune.grid_search(sorted(trials))}
        tune_config = tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True)  # reuse: no re-import per trial
    else:
        from ray.tune.search.optuna import OptunaSearch

        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        labels = {}
        param_space = search["space"]  # Tune domains, converted for Optuna by Tune
        alg = OptunaSearch(metric=metric, mode=spec.mode, seed=spec.data_seed,
                           points_to_evaluate=search["points"] or None, evaluated_rewards=search["rewards"] or None)
        tune_config = tune.TuneConfig(search_alg=alg, num_samples=search["remaining"], max_concurrent_trials=concurrency,
                                      reuse_actors=True)
    progress = Progress(console, labels)
    run_config = tune.RunConfig(storage_path=storage_path, storage_filesystem=storage_fs, name=f"{phase}-{stamp}", verbose=0,
                                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                                callbacks=[progress.callback(spec.metric)])
    tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    from rich.live import Live

    with Live(progress.table(), console=console, refresh_per_second=2, transient=False) as live:
        progress.live = live
        grid = tuner.fit()
        progress.live = None
    console.print()
    # Ctrl-C: Tune catches SIGINT, stops its trials and returns as if done; a trial that neither failed nor
    # stored its result was stopped (or never started)
    stopped = [r for r in grid if r.error is None and not (r.metrics or {}).get(TRIAL_DONE)]
    if stopped or (search is not None and len(grid) < search["remaining"] and not any(r.error for r in grid)):
        raise Interrupted(f"grid {spec.name}: {phase} trials stopped; finished trials are kept in {grid_dir}, and the same "
                          "command with --resume continues the others from their last checkpoints")
    return [f"{r.config.get('key', '')}: {root_reason(r.error)}" for r in grid if r.error is not None]


def _search_space(spec: GridSpec) -> dict:
    from ray import tune

    out = {}
    for name, p in spec.search.space.items():
        out[name] = {"loguniform": lambda p: tune.loguniform(p.low, p.high), "uniform": lambda p: tune.uniform(p.low, p.high),
                     "int": lambda p: tune.randint(int(p.low), int(p.high) + 1),
                     "categorical": lambda p: tune.choice(p.choices)}[p.type](p)
    return out


def plan(spec: GridSpec, preset: str | None, results: Location, data: DataPlan | None = None,
         env: dict | None = None) -> tuple[dict[int, Trial], dict[str, Trial]]:
    """(template trial per cell index, pretrain trials by hash). With ``data`` the trials point at
    their resolved data; without it (``grid status``) only the identities are computed."""
    grid_dir = results / spec.name
    cells, pretrains = {}, {}
    for i, cell in enumerate(spec.cells()):
        settings = spec.cell_settings(cell, preset)
        try:
            resolved = data.resolve(settings) if data else {}
        except BenchError as e:
            raise BenchError(f"cell {cell_id(cell)}: {e}") from None
        train = _train_kwargs(spec, settings, resolved, spec.seeds[0])
        if settings.get("cssl"):
            ps = spec.pretrain_settings(settings, preset)
            ph = config_hash(ps, spec.data_seed)
            pdir = results / PRETRAIN_DIR / ph
            pretrains[ph] = Trial("pretrain", spec.name, cell, cell_id(cell), spec.data_seed, ps, {}, ph, str(pdir),
                                  _train_kwargs(spec, ps, data.resolve(ps) if data else {}, spec.data_seed),
                                  str(grid_dir), spec.metric, {}, spec.max_failures, env or {})
            train["init"] = f"cssl:{pdir}"
        h = config_hash(settings, spec.seeds[0])
        extra = data.extra_test(settings) if data else {}
        cells[i] = Trial("final", spec.name, cell, cell_id(cell), spec.seeds[0], settings, {}, h,
                         str(grid_dir / R.RUNS / h), train, str(grid_dir), spec.metric, extra, spec.max_failures, env or {})
    return cells, pretrains


def best_params(spec: GridSpec, template: Trial, done: pd.DataFrame) -> tuple[dict | None, pd.DataFrame]:
    """The Optuna trials of a cell found in the results, and the best params once all are done."""
    rows = done[(done["cell"] == template.cell_id) & (done["split"] == "val")]
    if not spec.search.trials:
        return {}, rows
    if len(rows) < spec.search.trials:
        return None, rows
    ordered = rows.sort_values(spec.metric, ascending=spec.mode == "min", na_position="last")
    return json.loads(ordered["params"].iloc[0]), rows


def final_trials(spec: GridSpec, cells: dict[int, Trial], params: dict[int, dict]) -> dict[str, Trial]:
    out = {}
    for i, template in cells.items():
        if params.get(i) is None:
            continue
        for seed in spec.seeds:
            t = template.with_seed(seed, params[i])
            out[t.config_hash] = t
    return out


def run_grid(spec_path: str | os.PathLike, preset: str | None = None, results: "str | os.PathLike | Location" = "results",
             resume: bool = False, force: bool = False, max_concurrent: int | None = None, address: str | None = None,
             console=None) -> GridOutcome:
    """Run (or continue) a grid; see the module docstring. Raises BenchError on bad input."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bars

    console = console or Console()
    spec = load_spec(spec_path, preset)
    check_job_results(results)
    results = Location.of(results)
    grid_dir = results / spec.name
    grid_dir.mkdir()
    outcome = GridOutcome(grid_dir)
    with driver_lock(grid_dir):
        (grid_dir / "running").rmtree()  # markers of a driver that died
        env = {"git_sha": R.git_sha()}
        with Bars(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bars:
            data = DataPlan(spec, bars)
            cells, pretrains = plan(spec, preset, results, data, env)  # bad data fails here, before Ray starts
            # read by the report (axes, reference table, which trials are this spec's; a searched grid's are known later)
            R.write_spec(grid_dir, spec.model_dump(mode="json"), preset,
                         None if spec.search.trials else list(final_trials(spec, cells, {i: {} for i in cells})))
            connected = _init_ray(address, max_concurrent)
            fitted, nodes = cluster_fit(spec, connected)
            concurrency = min(max_concurrent or 10**6, fitted.concurrency)
            _check_trials(spec, cells, pretrains, data, bars)
        r = spec.resources
        console.print(f"[bold]grid {spec.name}[/] ({len(spec.cells())} cells x {len(spec.seeds)} seeds"
                      f"{f', preset {preset}' if preset else ''}): per trial {r.workers} worker(s) x "
                      f"{r.cpus:g} CPU{f' + {r.gpus:g} GPU' if r.gpus else ''}; up to {concurrency} trials at once; "
                      f"results in {grid_dir}")
        console.print("cluster: " + ", ".join(n.describe() for n in nodes if not n.launchable)
                      + (f"; the autoscaler may add {', '.join(n.describe() for n in nodes if n.launchable)}"
                         if any(n.launchable for n in nodes) else "")
                      + (f" (trials wait for it: {fitted.slots_now} worker slot(s) now, {fitted.slots_max} at most)"
                         if fitted.waits_for_autoscaler else ""), highlight=False)

        # 1. CSSL pretraining, once per configuration (shared across grids)
        todo = {h: t for h, t in pretrains.items() if force or not _pretrained(Location.of(t.run_dir))}
        if todo:
            _fresh(todo.values(), resume)
            console.print(f"[bold]pretrain[/]: {len(todo)} CSSL run(s)")
            outcome.failed += _run_tuner(todo, "pretrain", spec, grid_dir, concurrency, console,
                                         label=lambda t: f"cssl {t.settings.get('backbone')} {t.config_hash}")
            outcome.phases["pretrain"] = len(todo)
            if outcome.failed:
                return outcome

        # 2. Optuna search per cell on validation
        params: dict[int, dict | None] = {}
        for i, template in cells.items():
            done = R.finished(R.read_results(grid_dir), "search")
            best, rows = best_params(spec, template, done if not force else done.iloc[:0])
            if best is None:
                remaining = spec.search.trials - len(rows)
                console.print(f"[bold]search[/] {template.cell_id}: {remaining} Optuna trial(s) on validation "
                              f"({len(rows)} already done)")
                _fresh_search(grid_dir, resume)
                errs = _run_tuner({"search": replace(template, phase="search")}, "search", spec, grid_dir, concurrency, console,
                                  search={"space": _search_space(spec), "remaining": remaining,
                                          "points": [json.loads(p) for p in rows["params"]] if len(rows) else [],
                                          "rewards": [float(v) for v in rows[spec.metric]] if len(rows) else []})
                outcome.failed += errs
                outcome.phases["search"] = outcome.phases.get("search", 0) + remaining
                done = R.finished(R.read_results(grid_dir), "search")
                best, rows = best_params(spec, template, done)
            params[i] = best

        # 3. the chosen configuration of every cell, per seed, on test
        finals = final_trials(spec, cells, params)
        if spec.search.trials and all(p is not None for p in params.values()):
            R.write_spec(grid_dir, spec.model_dump(mode="json"), preset, list(finals))
        finished = set(R.finished(R.read_results(grid_dir), "final")["config_hash"])
        todo = {h: t for h, t in finals.items() if force or h not in finished}
        outcome.skipped = len(finals) - len(todo)
        if outcome.skipped:
            console.print(f"{outcome.skipped} trial(s) already finished (config hash in the results); --force reruns them")
        if todo:
            _fresh(todo.values(), resume)
            if force:
                for h in todo:
                    R.rows_file(grid_dir, "final", h).unlink()
            console.print(f"[bold]final[/]: {len(todo)} trial(s)")
            t0 = time.perf_counter()
            outcome.failed += _run_tuner(todo, "final", spec, grid_dir, concurrency, console,
                                         label=lambda t: f"{t.cell_id} seed={t.seed}")
            outcome.walls["final"] = time.perf_counter() - t0
        outcome.concurrency = concurrency
        outcome.ran = len(todo)
        outcome.phases["final"] = len(todo)
    return outcome


def _pretrained(run_dir: Location) -> bool:
    return (run_dir / "summary.json").is_file() and (run_dir / "backbone.pt").is_file()


def _fresh(trials, resume: bool) -> None:
    """Without --resume an unfinished trial starts over: its old checkpoints would silently resume it."""
    if resume:
        return
    for t in trials:
        Location.of(t.run_dir).rmtree()


def _fresh_search(grid_dir: Location, resume: bool) -> None:
    if resume:
        return
    finished = set(R.read_results(grid_dir)["config_hash"])
    for d in (grid_dir / R.RUNS).iterdir():
        if d.name not in finished:
            d.rmtree()


def _check_trials(spec: GridSpec, cells: dict[int, Trial], pretrains: dict[str, Trial], data: DataPlan, bars) -> None:
    """Before anything trains: every trial's data passes its task's checks, and its caches exist."""
    from covidct_bench.train.config import TrainConfig
    from covidct_bench.train.runner import prepare_data

    seen = set()
    for t in [*pretrains.values(), *cells.values()]:
        cfg = TrainConfig(**t.train)
        key = (cfg.task, cfg.dataset, cfg.root, cfg.lung_masks, cfg.image_size, cfg.mask_mode)
        if key in seen:
            continue
        seen.add(key)
        try:
            cfg = prepare_data(cfg, progress=bars)[0]
        except BenchError as e:
            raise BenchError(f"cell {t.cell_id}: {e}") from None
        for folder in t.extra_test.values():
            from covidct_bench.data.cache import build_cache
            from covidct_bench.data.manifest import read_manifest

            build_cache(read_manifest(folder), size=int(cfg.image_size), out=extra_cache_dir(folder, int(cfg.image_size)),
                        progress=bars)


# ------------------------------------------------------------------------------------------ status
def grid_status(spec_path: str | os.PathLike, preset: str | None = None,
                results: "str | os.PathLike | Location" = "results") -> pd.DataFrame:
    """One row per planned (phase, cell, seed): done / running / failed / interrupted / pending."""
    spec = load_spec(spec_path, preset)
    results = Location.of(results)
    grid_dir = results / spec.name
    df = R.read_results(grid_dir)
    cells, pretrains = plan(spec, preset, results)
    alive = live_driver(grid_dir) is not None
    running = {p.stem for p in (grid_dir / "running").glob("*.json")}
    fin = set(df.loc[df["status"] == "finished", "config_hash"])
    failed = set(df.loc[df["status"] == "failed", "config_hash"])

    def state(h: str, done: bool) -> str:
        if done:
            return "done"
        if h in running:
            return "running" if alive else "interrupted"
        if h in failed:
            return "failed"
        return "pending"

    rows = [{"phase": "pretrain", "cell": t.cell_id, "seed": t.seed, "config_hash": h,
             "status": state(h, _pretrained(Location.of(t.run_dir)))} for h, t in pretrains.items()]
    searched = R.finished(df, "search")
    params = {}
    for i, t in cells.items():
        best, got = best_params(spec, t, searched)
        params[i] = best
        if spec.search.trials:
            rows.append({"phase": "search", "cell": t.cell_id, "seed": t.seed, "config_hash": "",
                         "status": "done" if best is not None else f"{len(got)}/{spec.search.trials}"})
        if best is None:
            rows += [{"phase": "final", "cell": t.cell_id, "seed": s, "config_hash": "", "status": "pending"} for s in spec.seeds]
    for h, t in final_trials(spec, cells, params).items():
        rows.append({"phase": "final", "cell": t.cell_id, "seed": t.seed, "config_hash": h, "status": state(h, h in fin)})
    return pd.DataFrame(rows)


def status_table(spec_path: str | os.PathLike, preset: str | None = None, results: "str | os.PathLike | Location" = "results"):
    """``grid_status`` as a rich table: trials by phase and status."""
    from rich.table import Table

    df = grid_status(spec_path, preset, results)
    counts = df.groupby(["phase", "status"], sort=False).size()
    table = Table(title=f"grid {load_spec(spec_path, preset).name}: trials by phase and status", show_edge=False)
    for col in ("phase", "status", "trials"):
        table.add_column(col)
    for (phase, status), n in counts.items():
        table.add_row(phase, status, str(n))
    return table
