"""Images/s of the preprocessed cache vs decoding every image every epoch, measured in one run.

    python benchmarks/bench_loader.py                    # synthetic paper-style phantoms (default)
    python benchmarks/bench_loader.py --dataset DIR      # any dataset folder with a manifest

Both paths produce identical eval-preset samples (grey -> 3 channels, normalised) at --size; the
decode path reads and decodes the original file and resizes it each time (what a plain
ImageFolder-style loader does), the cached path reads the Ray-Data-built memory-mapped arrays.
Target (issue 2): cached >= 3x at 224 px.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader


def throughput(ds, epochs: int, workers: int, batch: int) -> float:
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=True, persistent_workers=workers > 0)
    n = 0
    next(iter(loader))  # warm-up: worker start-up and first file-system touches are not throughput
    t0 = time.perf_counter()
    for _ in range(epochs):
        for b in loader:
            n += len(b["label"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", help="dataset folder with manifest.parquet (default: generate phantoms)")
    ap.add_argument("--n", type=int, default=200, help="phantoms to generate")
    ap.add_argument("--source-size", type=int, default=512, help="phantom size before paper-style margins")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    from covidct_bench.data import get_dataset, load_manifest
    from covidct_bench.data.cache import CachedDataset, build_cache
    from covidct_bench.data.torch_dataset import ManifestDataset
    from covidct_bench.data.transforms import TransformConfig, eval_transforms

    tmp = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    if args.dataset:
        df = load_manifest(args.dataset)
    else:
        res = get_dataset("synthetic").fetch(out=tmp / "synthetic", n=args.n, size=args.source_size, style="paper")
        df = load_manifest(str(res.path))
    t0 = time.perf_counter()
    cache = build_cache(df, size=args.size, out=tmp / "cache")
    build_s = time.perf_counter() - t0
    tf = eval_transforms(TransformConfig(size=args.size))
    decode = throughput(ManifestDataset(df, transform=tf), args.epochs, args.workers, args.batch)
    cached = throughput(CachedDataset(cache, transform=tf), args.epochs, args.workers, args.batch)
    print(f"images: {len(df)}  size: {args.size}px  epochs: {args.epochs}  workers: {args.workers}  batch: {args.batch}")
    print(f"cache build (Ray Data, incl. Ray start): {build_s:.1f} s")
    print(f"decode every time : {decode:8.1f} images/s")
    print(f"cached            : {cached:8.1f} images/s")
    print(f"ratio cached/decode: {cached / decode:.1f}x  (target >= 3x) {'PASS' if cached / decode >= 3 else 'FAIL'}")


if __name__ == "__main__":
    main()
