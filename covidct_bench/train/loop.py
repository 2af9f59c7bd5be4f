"""The one training loop (torchvision references style), run by every Ray Train worker.

``train_func_per_worker(config)`` -> ``prepare_model`` / ``prepare_data_loader`` -> per epoch: train,
step the cosine schedule, evaluate, save a checkpoint (model, optimizer, scheduler, epoch, RNG
states, metric history, predictions, the Ray node of every rank per epoch) and ``ray.train.report`` it. A restarted run (same run folder,
``--resume``) continues from the latest checkpoint: ``ray.train.get_checkpoint()``.

Evaluation runs on the unwrapped model: each worker scores a disjoint slice of the split (no padding,
so no image counts twice), the slices are gathered, and rank 0 computes the metrics.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from covidct_bench.data.cache import Cache, CachedDataset
from covidct_bench.train.config import TrainConfig
from covidct_bench.train.tasks import Task, get_task

STATE_FILE = "state.pt"


class TaskDataset(Dataset):
    """Cached samples turned into a task's tensors (augmented for training)."""

    def __init__(self, cache: str, split: str | None, task: Task, train: bool, rank: int = 0, world: int = 1):
        self.base = CachedDataset(cache, split)
        self.rows = np.arange(len(self.base))[rank::world]  # a disjoint slice per evaluating worker
        self.task, self.train = task, train

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.task.sample(self.base[int(self.rows[i])], self.train)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2],
             "numpy_key": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_key"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.ndim == 4 and k.startswith("image"):
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(obj):
    rank, world = _world()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def evaluate(task: Task, model: torch.nn.Module, cache: str, device, autocast, channels_last: bool,
             batch_size: int, splits: tuple[str, ...] | None = None
             ) -> dict[str, dict[str, np.ndarray]] | None:
    """Per-split outputs (all ranks' slices, sorted by cache row) on rank 0; None elsewhere.
    ``splits``: default the task's evaluation splits."""
    rank, world = _world()
    model.eval()
    results = {}
    for split in splits or task.eval_splits:
        ds = TaskDataset(cache, split, task, train=False, rank=rank, world=world)
        parts: dict[str, list] = {}
        with torch.no_grad(), autocast():
            for batch in DataLoader(ds, batch_size=batch_size, shuffle=False):
                b = to_device(batch, device, channels_last)
                out = task.predict(model, b)
                out["index"] = batch["index"].numpy()
                for k, v in out.items():
                    parts.setdefault(k, []).append(np.asarray(v))
        local = {k: np.concatenate(v) for k, v in parts.items()}
        gathered = _gather(local)
        if rank == 0:
            merged = {k: np.concatenate([g[k] for g in gathered if g and k in g]) for k in gathered[0]}
            order = np.argsort(merged["index"], kind="stable")
            results[split] = {k: v[order] for k, v in merged.items()}
    model.train()
    return results if rank == 0 else None


def train_func_per_worker(config: dict):
    """Ray Train entry point. ``config``: {"cfg": TrainConfig dump, "cache": path, "ref_cache": path|None}."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or torch.get_num_threads()))
    seed_everything(cfg.seed, cfg.deterministic)

    device = ray.train.torch.get_device()
    cuda = device.type == "cuda"
    channels_last = cuda and cfg.channels_last
    use_amp = cuda and cfg.amp

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp)

    task = get_task(cfg)
    if config.get("ref_cache"):
        task.ref_cache = config["ref_cache"]
    model = task.build_model()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": False})
    raw = model.module if hasattr(model, "module") else model
    opt = make_optimizer(cfg, model.parameters())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.cosine_period)

    cache = config["cache"]
    index = Cache(cache).index
    per_worker = max(1, cfg.batch_size // world)
    train_ds = TaskDataset(cache, "train", task, train=True)
    gen = torch.Generator()
    loader = DataLoader(train_ds, batch_size=per_worker, shuffle=True, drop_last=len(train_ds) >= per_worker * world * 2,
                        num_workers=cfg.loader_workers, generator=gen, worker_init_fn=_worker_init,
                        persistent_workers=False, pin_memory=cuda)
    loader = ray.train.torch.prepare_data_loader(loader, move_to_device=False)

    start, history, predictions, resumed, nodes = 0, [], [], [], []
    here = _gather(ray.get_runtime_context().get_node_id())  # the Ray node of every rank in this attempt
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        raw.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])
        start, history = int(state["epoch"]) + 1, list(state["history"])
        predictions = [pd.DataFrame(p) for p in state["predictions"]]
        resumed = [*state.get("resumed_at_epochs", []), start]
        nodes = list(state.get("nodes", []))

    for epoch in range(start, cfg.epochs):
        gen.manual_seed(cfg.seed * 100_003 + epoch)  # the shuffle of an epoch does not depend on resuming
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        model.train()
        t0, seen, total, extra = time.perf_counter(), 0, torch.zeros((), device=device), {}
        for batch in loader:
            b = to_device(batch, device, channels_last)
            with autocast():
                loss, logs = task.loss(model, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = len(batch["index"])
            seen += n
            total += loss.detach().float() * n  # summed on the device: no host sync per step on GPU
            for k, v in logs.items():
                extra[k] = extra.get(k, 0.0) + v.float() * n
        if cuda:
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t0
        lr = opt.param_groups[0]["lr"]
        sched.step()

        seen_all = sum(_gather(seen))
        row = {"epoch": epoch, "split": "train", "loss": float(total) / max(seen, 1), "lr": lr,
               "images_per_s": seen_all / train_s if train_s > 0 else float("nan"), "train_s": train_s,
               **{k: float(v) / max(seen, 1) for k, v in extra.items()}}
        metrics = {f"train/{k}": v for k, v in row.items() if k not in ("epoch", "split")}
        rows = [row]
        if (epoch + 1) % cfg.eval_every == 0 or epoch == cfg.epochs - 1:
            out = evaluate(task, raw, cache, device, autocast, channels_last, per_worker * 2)
            if rank == 0:
                m, preds = task.evaluate(out, index)
                preds.insert(0, "epoch", epoch)
                predictions.append(preds)
                metrics.update(m)
                for split in task.eval_splits:
                    vals = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith(f"{split}/")}
                    if vals:
                        rows.append({"epoch": epoch, "split": split, **vals})
        history.extend(rows)
        nodes.append(here)
        metrics["epoch"] = epoch

        rngs = _gather(rng_state())
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                torch.save({"model": raw.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                            "epoch": epoch, "rng": rngs, "history": history,
                            "predictions": [p.to_dict("list") for p in predictions], "resumed_at_epochs": resumed,
                            "nodes": nodes, "config": cfg.model_dump(mode="json")}, Path(d) / STATE_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)

    if rank == 0:
        preds = pd.concat(predictions, ignore_index=True) if predictions else pd.DataFrame()
        return {"history": history, "predictions": preds.to_dict("list"), "resumed_at_epochs": resumed, "nodes": nodes}
    return None
