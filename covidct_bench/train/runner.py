"""Driver side of a training run: checks, preprocessing cache, the Ray Train job, the run folder.

A run folder holds::

    config.yaml          the resolved TrainConfig (task defaults filled in)
    metrics.parquet      one row per (epoch, split): train loss / lr / images_per_s; val & test metrics
    predictions.parquet  one row per (epoch, evaluated split, image): image_id, patient_id, split,
                         y_true, score (+ y_pred, threshold-free extras such as dice)
    summary.json         final and validation-selected epoch, their metrics, timings, the Ray nodes it ran on
    model.pt             final weights {"state_dict", "meta"} (torch.load(weights_only=True))
    backbone.pt          CSSL runs only: the query encoder, for ``--init cssl:RUN``
    checkpoints/         Ray Train checkpoints (the last two epochs), used by ``--resume``

Tables are written to a temporary file and renamed, so a failed run never clobbers earlier output.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
import yaml

from covidct_bench.data import load_manifest
from covidct_bench.data.cache import build_cache, init_ray
from covidct_bench.data.lung_masks import MANIFEST_MASKS, with_lung_masks
from covidct_bench.data.manifest import default_root
from covidct_bench.errors import BenchError, root_reason
from covidct_bench.io import atomic_path
from covidct_bench.storage import Location, is_uri
from covidct_bench.train.config import TrainConfig
from covidct_bench.train.loop import STATE_FILE, train_func_per_worker
from covidct_bench.train.tasks import get_task

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
WORKER_GROUP_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # read by Train, passed on to its controller
WORKER_GROUP_START_TIMEOUT_S = 3600
HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # how often Train's controller polls its workers
HEALTH_CHECK_INTERVAL_S = 0.5

# columns the report and the grid read first; the rest follow in order of appearance
_METRIC_ORDER = ["epoch", "split", "loss", "accuracy", "precision", "sensitivity", "specificity", "f1", "auc",
                 "threshold", "dice", "iou", "true_dice", "true_iou", "lesion_dice", "knn_acc", "linear_acc"]


@dataclass
class RunResult:
    path: "Path | Location"  # the run folder (a Location when it is a storage URI)
    config: TrainConfig
    metrics: pd.DataFrame
    predictions: pd.DataFrame
    summary: dict = field(default_factory=dict)


def _progress_callback(queue):
    from ray.train import UserCallback

    class ForwardMetrics(UserCallback):
        """Runs in the Train controller: forwards each epoch's rank-0 metrics to the driver's queue."""

        def after_report(self, run_context, metrics, checkpoint):
            if metrics:
                queue.put(dict(metrics[0]))

    return ForwardMetrics()


def _compare_for_resume(saved: dict, cfg: TrainConfig, out: Path) -> None:
    now = cfg.model_dump(mode="json")
    diff = [k for k in now if k not in ("epochs", "workers", "gpu", "cpus_per_worker", "loader_workers")
            and now[k] != saved.get(k)]
    if diff:
        raise BenchError(f"--resume: {out / CONFIG_FILE} differs in {', '.join(diff)}; resume with the same "
                         "settings (only --epochs and the resources may change) or choose another --out")


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Ray workers do not share the driver's working directory: pass them absolute paths."""
    update = {}
    if cfg.init.startswith("cssl:") and not is_uri(cfg.init[5:]):  # a URI is read where it is (storage.Location)
        update["init"] = f"cssl:{Path(cfg.init[5:]).expanduser().resolve()}"
    if cfg.weights and not is_uri(cfg.weights):
        update["weights"] = str(Path(cfg.weights).expanduser().resolve())
    # the default root too: a grid trial runs in a Ray actor whose working directory is not the driver's
    update["root"] = str(Path(cfg.root or default_root()).expanduser().resolve())
    return cfg.model_copy(update=update)


def _check_fits(cfg: TrainConfig, connected: bool) -> None:
    """A run whose workers fit no node, now or after the autoscaler scales up, fails here in one line."""
    from covidct_bench.resources import cluster_nodes, fit

    nodes = cluster_nodes(connected)
    cpus, gpus = worker_resources(cfg, nodes)
    fit(cfg.workers, cpus, gpus, nodes)


def write_config(out: "str | os.PathLike | Location", cfg: TrainConfig) -> None:
    """The resolved config, written first where the checkpoints go: a run stopped half-way can be resumed."""
    (Location.of(out) / CONFIG_FILE).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def _has_run(out: Location) -> bool:
    """A folder holds a run once its first checkpoint exists (a run that failed earlier is replaced)."""
    return (out / CONFIG_FILE).exists() and bool((out / CHECKPOINTS).glob("checkpoint_*"))


def prepare_data(cfg: TrainConfig, address: str | None = None, progress=None, build_model: bool = False
                 ) -> tuple[TrainConfig, dict]:
    """Resolve defaults, validate against the manifest and build the cache(s): (config, loop config).
    ``build_model``: also build the model once, so a bad --init / --weights fails in one line before Ray starts."""
    cfg = absolute_paths(cfg.resolved())
    task = get_task(cfg)
    manifest = load_manifest(cfg.dataset, cfg.root)
    df = with_lung_masks(manifest, cfg.lung_masks)
    task.validate(df)
    if build_model:
        task.build_model()
    init_ray(address)
    size = int(cfg.image_size)
    root = Path(df.attrs.get("root", "."))
    cache = build_cache(df, size=size, out=root / "cache" / f"{size}-{cfg.lung_masks}", address=address, progress=progress)
    loop = {"cfg": cfg.model_dump(mode="json"), "cache": str(cache.path.resolve()), "ref_cache": None}
    has_own = "lung_mask_path" in manifest and manifest["lung_mask_path"].notna().any()
    if cfg.task == "segment" and cfg.lung_masks != MANIFEST_MASKS and has_own:  # also score against the true masks
        ref = build_cache(manifest, size=size, out=root / "cache" / f"{size}-{MANIFEST_MASKS}", address=address,
                          progress=progress)
        loop["ref_cache"] = str(ref.path.resolve())
    return cfg, loop


def prepare(cfg: TrainConfig, address: str | None = None, progress=None) -> tuple[TrainConfig, dict]:
    """``prepare_data`` with the model built once (the checks of a single run)."""
    return prepare_data(cfg, address, progress, build_model=True)


@contextlib.contextmanager
def staging(run_dir: "str | os.PathLike | Location") -> Iterator[Path]:
    """The local folder a run writes its files into (config, metrics, predictions, model). For a local
    run folder it is the folder itself; for a storage URI (``s3://``, ``gs://``, ``file://``) a temporary
    folder whose files are uploaded when the block succeeds (checkpoints go to the URI through Ray)."""
    run_dir = Location.of(run_dir)
    if not run_dir.scheme:
        run_dir.local.mkdir(parents=True, exist_ok=True)
        yield run_dir.local
        return
    stage = Path(tempfile.mkdtemp(prefix="covidct-run-"))
    try:
        yield stage
        run_dir.upload(stage)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def worker_resources(cfg: TrainConfig, nodes=None) -> tuple[float, float]:
    """(CPUs, GPUs) of one Train worker: as configured, else 1 CPU with a GPU, else as many CPUs as let
    every worker fit on the live Ray nodes (a worker runs on one node)."""
    from covidct_bench.resources import cluster_nodes, default_cpus

    gpus = cfg.gpus_per_worker or (1 if cfg.gpu else 0)
    if cfg.cpus_per_worker is not None:
        return cfg.cpus_per_worker, gpus
    return (1 if gpus else default_cpus(cfg.workers, nodes if nodes is not None else cluster_nodes(False))), gpus


def trainer_for(cfg: TrainConfig, loop: dict, storage: "str | os.PathLike | Location", callbacks: list | None = None,
                max_failures: int = 0):
    """The ``TorchTrainer`` of a prepared run (also used by the grids, with Tune's callback). Checkpoints
    go to ``storage/checkpoints`` (a local folder or a storage URI). A run folder that already holds
    checkpoints continues from the latest one; ``max_failures``: restarts of a worker group that died,
    each from the last checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cpus, gpus = worker_resources(cfg)
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    path, fs = Location.of(storage).for_ray()
    # Waiting for resources is normal for a queued trial (another trial holds the CPUs, the autoscaler
    # boots a node): Train's 60 s start timeout then retries, and in Ray 2.60 the placement group it gave
    # up on can still be granted and never freed, which starves the retry forever (seen when a node died
    # mid-grid). One long wait instead; the grid checked beforehand that the request fits the cluster.
    os.environ.setdefault(WORKER_GROUP_START_TIMEOUT_ENV, str(WORKER_GROUP_START_TIMEOUT_S))
    # Train's controller notices a finished (or dead) worker group at its next poll, 2 s apart by default;
    # a run paid 4-5 s of that after its last epoch, most of a tiny grid trial's tail
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_ENV, str(HEALTH_CHECK_INTERVAL_S))
    return TorchTrainer(
        train_func_per_worker, train_loop_config=loop,
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=bool(gpus), resources_per_worker=resources),
        run_config=RunConfig(storage_path=path, storage_filesystem=fs, name=CHECKPOINTS,
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=max_failures), callbacks=callbacks or []))


def run_training(cfg: TrainConfig, out: "str | os.PathLike | Location", resume: bool = False, address: str | None = None,
                 on_epoch: Callable[[dict], None] | None = None, progress=None) -> RunResult:
    """Train ``cfg`` as a Ray Train job into run folder ``out``, a local folder or a storage URI (on a
    cluster, one that every node reaches); ``resume``: continue a stopped run."""
    out = Location.of(out)
    if _has_run(out) and not resume:
        raise BenchError(f"--out {out} already holds a run; pass --resume to continue it or choose another folder")
    if resume and not _has_run(out):
        raise BenchError(f"--resume: {out} holds no run to resume")
    cfg, loop = prepare(cfg, address, progress)
    _check_fits(cfg, bool(address or os.environ.get("RAY_ADDRESS")))
    if resume:
        _compare_for_resume(yaml.safe_load((out / CONFIG_FILE).read_text()), cfg, out)
    else:
        (out / CHECKPOINTS).rmtree()  # leftovers of a run that failed before epoch 1
    out.mkdir()
    write_config(out, cfg)

    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    trainer = trainer_for(cfg, loop, out, callbacks=[_progress_callback(queue)])
    box: dict = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # surfaced on the driver thread below
            box["error"] = e

    t0 = time.perf_counter()
    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    while thread.is_alive() or not queue.empty():
        try:
            m = queue.get(timeout=2.0)  # blocks in the queue actor; a slow poll keeps the driver off the CPU
        except Empty:
            continue
        if on_epoch:
            on_epoch(m)
    thread.join()
    queue.shutdown()
    wall = time.perf_counter() - t0
    if "error" in box:
        raise BenchError(f"training failed: {root_reason(box['error'])}")
    result = box["result"]
    if result.error is not None:
        raise BenchError(f"training failed: {root_reason(result.error)}")
    with staging(out) as stage:
        run = finish(stage, cfg, result, wall)
    return replace(run, path=out.local if not out.scheme else out)


def tidy_metrics(history: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(history)
    cols = [c for c in _METRIC_ORDER if c in df] + [c for c in df if c not in _METRIC_ORDER]
    return df[cols]


def summarize(cfg: TrainConfig, metrics: pd.DataFrame) -> dict:
    """Final epoch, and the epoch the validation ``select_metric`` picks (hyper-parameters chosen on val)."""
    final = int(metrics["epoch"].max())
    out = {"task": cfg.task, "final_epoch": final, "final": {}, "selected_epoch": None, "selected": {},
           "positive_class": "covid (label 1)"}
    for split, g in metrics.groupby("split"):
        last = g[g["epoch"] == final].drop(columns=["epoch", "split"]).dropna(axis=1)
        if len(last):
            out["final"][split] = {k: float(v) for k, v in last.iloc[0].items()}
    val = metrics[metrics["split"] == "val"]
    key = cfg.select_metric if cfg.select_metric in val else next((c for c in ("auc", "dice", "linear_acc") if c in val), None)
    if key is not None and len(val) and val[key].notna().any():
        best = int(val.loc[val[key].idxmax(), "epoch"])
        out["selected_epoch"], out["select_metric"] = best, key
        for split, g in metrics[metrics["epoch"] == best].groupby("split"):
            out["selected"][split] = {k: float(v) for k, v in g.drop(columns=["epoch", "split"]).dropna(axis=1).iloc[0].items()}
    return out


def _no_nan(x):
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def finish(out: Path, cfg: TrainConfig, result, wall_s: float) -> RunResult:
    rv = result.return_value or {}
    metrics = tidy_metrics(rv.get("history", []))
    preds = pd.DataFrame(rv.get("predictions", {}))
    with atomic_path(out / "metrics.parquet") as tmp:
        metrics.to_parquet(tmp, index=False)
    with atomic_path(out / "predictions.parquet") as tmp:
        preds.to_parquet(tmp, index=False)
    with result.checkpoint.as_directory() as d:  # local: the folder itself; a URI: downloaded
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    meta = {"task": cfg.task, "backbone": cfg.backbone, "in_chans": cfg.in_chans, "image_size": cfg.image_size,
            "mask_mode": cfg.mask_mode, "epoch": int(state["epoch"]), "unet_base": cfg.unet_base}
    with atomic_path(out / "model.pt") as tmp:
        torch.save({"state_dict": state["model"], "meta": meta}, tmp)
    if cfg.task == "cssl":
        enc = {k[len("encoder_q."):]: v for k, v in state["model"].items() if k.startswith("encoder_q.")}
        with atomic_path(out / "backbone.pt") as tmp:
            torch.save({"state_dict": enc, "meta": {"backbone": cfg.backbone, "in_chans": 3}}, tmp)
    summary = summarize(cfg, metrics)
    summary["wall_s"] = round(wall_s, 2)
    summary["resumed_at_epochs"] = rv.get("resumed_at_epochs", [])
    by_epoch = rv.get("nodes", [])  # per epoch: the Ray node id of every rank
    summary["train_nodes"] = list(dict.fromkeys(n for epoch in by_epoch for n in epoch))
    summary["final_node"] = by_epoch[-1][0] if by_epoch else None
    train = metrics[metrics["split"] == "train"]
    if "images_per_s" in train and len(train):
        summary["train_images_per_s"] = float(np.nanmedian(train["images_per_s"]))
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(_no_nan(summary), indent=2))
    return RunResult(out, cfg, metrics, preds, summary)


def load_model_file(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state_dict, meta) of a run's ``model.pt`` (or a run folder), refusing foreign pickles."""
    from covidct_bench.models.backbones import load_run_file

    state, meta = load_run_file(path, "model.pt", "--run", "a covidct-bench model file")
    if not meta:
        path = Path(path) / "model.pt" if Path(path).is_dir() else path
        raise BenchError(f"--run: {path} is not a covidct-bench model file")
    return state, meta
