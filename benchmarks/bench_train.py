"""Training images/s: the Ray Train path (1 worker) against a plain PyTorch loop, in one run.

    python benchmarks/bench_train.py                                   # CPU: resnet18, 128 px, phantoms
    python benchmarks/bench_train.py --backbone densenet169 --image-size 480 --gpu   # the GPU figure
    python benchmarks/bench_train.py --plain-only --gpu                # no Ray installed (device machine)

Both paths train the same model (random init, Adam, the task's BCE loss) on the same cached,
augmented samples (``TaskDataset``), with the same batch size, thread count and, on GPU, bf16
autocast + channels_last. The plain loop is the minimal hand-written one (model, DataLoader,
optimizer); the Ray path is ``covidct-bench train classify`` (``run_training``) with one worker,
whose loop times each epoch's training steps. Images/s is the median over epochs after the first
(warm-up); the Ray path's start-up (cluster, actors, cache check) is reported separately as
``ray_overhead_s``. Target (issue 4): ray / plain >= 0.97.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader


def plain_loop(cfg, cache_path: str, epochs: int, device: torch.device) -> list[float]:
    """The baseline: what a user would write by hand. Returns images/s per epoch."""
    from covidct_bench.train.loop import TaskDataset, seed_everything, to_device
    from covidct_bench.train.tasks import get_task

    seed_everything(cfg.seed, cfg.deterministic)
    task = get_task(cfg)
    model = task.build_model().to(device)
    cuda = device.type == "cuda"
    if cuda and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loader = DataLoader(TaskDataset(cache_path, "train", task, train=True), batch_size=cfg.batch_size, shuffle=True,
                        drop_last=True, num_workers=cfg.loader_workers, pin_memory=cuda)
    rates = []
    model.train()
    for _ in range(epochs):
        t0, seen = time.perf_counter(), 0
        for batch in loader:
            b = to_device(batch, device, cuda and cfg.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and cfg.amp):
                loss, _ = task.loss(model, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(batch["index"])
        if cuda:
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", help="dataset folder with manifest.parquet (default: generate phantoms)")
    ap.add_argument("--n", type=int, default=320, help="phantoms to generate (train split ~60%%)")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--loader-workers", type=int, default=0)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--plain-only", action="store_true", help="measure the plain loop only (no Ray)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    from covidct_bench.data import get_dataset, load_manifest
    from covidct_bench.train.config import TrainConfig

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    if args.dataset:
        df = load_manifest(args.dataset)
        dataset, root = args.dataset, None
    else:
        get_dataset("synthetic").fetch(root=tmp, n=args.n, size=256)
        df = load_manifest("synthetic", tmp)
        dataset, root = "synthetic", str(tmp)
    cfg = TrainConfig(dataset=dataset, root=root, backbone=args.backbone, init="random", image_size=args.image_size,
                      batch_size=args.batch_size, epochs=args.epochs, gpu=args.gpu, loader_workers=args.loader_workers,
                      eval_every=10_000).resolved()
    device = torch.device("cuda" if args.gpu else "cpu")
    out = {"backbone": args.backbone, "image_size": args.image_size, "batch_size": args.batch_size,
           "device": torch.cuda.get_device_name() if args.gpu else f"cpu x{torch.get_num_threads()} threads",
           "train_images": int((df["split"] == "train").sum()), "epochs": args.epochs}

    if args.plain_only:
        from covidct_bench.data.cache import build_cache

        cache = build_cache(df, size=args.image_size, out=tmp / "cache")
        rates = plain_loop(cfg, str(cache.path), args.epochs, device)
        out["plain_images_per_s"] = statistics.median(rates[1:] or rates)
    else:
        from covidct_bench.train.runner import prepare, run_training

        t0 = time.perf_counter()
        cfg, loop = prepare(cfg)  # the cache both paths read
        rates = plain_loop(cfg, loop["cache"], args.epochs, device)
        plain_wall = time.perf_counter() - t0
        out["plain_images_per_s"] = statistics.median(rates[1:] or rates)
        t0 = time.perf_counter()
        res = run_training(cfg, tmp / "run")
        ray_wall = time.perf_counter() - t0
        train = res.metrics[res.metrics["split"] == "train"]
        ray_rates = list(train["images_per_s"])
        out["ray_images_per_s"] = statistics.median(ray_rates[1:] or ray_rates)
        out["ratio_ray_over_plain"] = out["ray_images_per_s"] / out["plain_images_per_s"]
        out["ray_overhead_s"] = ray_wall - float(train["train_s"].sum())
        out["ray_wall_s"], out["plain_wall_s"] = ray_wall, plain_wall
        out["plain_per_epoch"], out["ray_per_epoch"] = [round(r, 2) for r in rates], [round(r, 2) for r in ray_rates]
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}, indent=1))
    if "ratio_ray_over_plain" in out:
        print(f"ray/plain = {out['ratio_ray_over_plain']:.3f} (target >= 0.97)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
