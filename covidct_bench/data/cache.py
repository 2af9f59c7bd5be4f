"""Preprocessed cache: every image decoded, reduced to grey and resized once, by a Ray Data job.

Layout of a cache folder (written to a staging folder, then renamed into place)::

    images.npy        uint8 [N, S, S]   (np.load(..., mmap_mode="r") -> zero-copy reads)
    lung_mask.npy     uint8 [N, S, S]   0/1, zeros where a row has no lung mask; only written when
    lesion_mask.npy   uint8 [N, S, S]   some row of the manifest has that mask
    index.parquet     the manifest rows in cache order (+ has_lung_mask, has_lesion_mask)
    cache.json        size, count, the arrays written, fingerprint of the manifest content

Images are resized to S x S without keeping the aspect ratio (the paper's 480 x 480 input); masks
use nearest-neighbour. The same cache feeds a DataLoader (``CachedDataset``) and Ray Train through
Ray Data iterators (``to_ray_dataset`` -> ``iter_torch_batches``). On a cluster, the dataset folder
must be visible at the same path on every node (shared filesystem).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import Dataset

from covidct_bench.data.images import load_gray, load_mask
from covidct_bench.data.manifest import absolute
from covidct_bench.data.torch_dataset import MASK_COLUMNS, make_sample
from covidct_bench.errors import BenchError
from covidct_bench.io import staging_dir

CACHE_VERSION = 2


def fingerprint(df: pd.DataFrame, size: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:{size}".encode())
    for col in ("image_id", "sha256", "lung_mask_path", "lesion_mask_path"):
        h.update("\0".join(map(str, df[col] if col in df else [])).encode())
    return h.hexdigest()[:16]


def init_ray(address: str | None = None, num_cpus: int | None = None, resources: dict | None = None) -> None:
    """Connect to ``address`` / $RAY_ADDRESS, or start a local Ray; keeps Ray's INFO logs out of the terminal
    (Ray Data still writes them to its log file in the session folder)."""
    import logging

    import ray
    import ray.data  # configures the 'ray.data' logger; quieten its console handler afterwards

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kw = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False, "resources": resources}
        ray.init(ignore_reinit_error=True, log_to_driver=False, configure_logging=False, **kw)


def resize_square(arr: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    if arr.shape == (size, size):
        return arr
    mode = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(arr).resize((size, size), mode, reducing_gap=None if nearest else 2.0))


class DecodeResize:
    """Ray Data batch UDF: paths -> fixed-size uint8 arrays; errors become an ``error`` column."""

    def __init__(self, size: int, masks: dict[str, str]):
        self.size, self.masks = size, masks  # masks: sample key -> manifest column, only those present

    def __call__(self, batch: dict) -> dict:
        n, s = len(batch["idx"]), self.size
        out = {"idx": batch["idx"], "error": np.array([""] * n, dtype=object),
               "images": np.zeros((n, s, s), np.uint8)}
        for key in self.masks:
            out[key] = np.zeros((n, s, s), np.uint8)
        for k in range(n):
            try:
                out["images"][k] = resize_square(load_gray(batch["abs_path"][k], batch["path"][k]), s)
                for key, col in self.masks.items():
                    p = batch[f"abs_{col}"][k]
                    if p:
                        out[key][k] = resize_square((load_mask(p, batch[col][k]) > 0).astype(np.uint8), s, nearest=True)
            except BenchError as e:
                out["error"][k] = str(e)
        return out


def build_cache(df: pd.DataFrame, size: int = 480, out: str | os.PathLike | None = None,
                address: str | None = None, batch_size: int = 32, progress=None) -> "Cache":
    """Run the Ray Data preprocessing job (reused when the manifest content and size are unchanged)."""
    root = Path(df.attrs.get("root", "."))
    out = Path(out) if out is not None else root / "cache" / str(size)
    fp = fingerprint(df, size)
    meta_path = out / "cache.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("fingerprint") == fp:
        return Cache(out)

    import ray

    init_ray(address)
    table = pd.DataFrame({"idx": np.arange(len(df)), "path": df["path"].to_numpy(), "abs_path": absolute(df).to_numpy()})
    masks = {key: col for key, col in MASK_COLUMNS.items() if col in df and df[col].notna().any()}
    for col in masks.values():
        table[col] = df[col].fillna("").to_numpy()
        table[f"abs_{col}"] = absolute(df, col).fillna("").to_numpy()
    names = ("images", *masks)
    ds = ray.data.from_pandas(table).map_batches(DecodeResize(size, masks), batch_size=batch_size, batch_format="numpy")

    with staging_dir(out) as tmp:
        arrays = {k: np.lib.format.open_memmap(tmp / f"{k}.npy", mode="w+", dtype=np.uint8, shape=(len(df), size, size))
                  for k in names}
        task = progress.add_task(f"cache {size}px (Ray Data)", total=len(df)) if progress else None
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            if bad := [e for e in batch["error"] if e]:
                raise BenchError(bad[0])
            for k in names:
                arrays[k][batch["idx"]] = batch[k]
            if progress:
                progress.advance(task, len(batch["idx"]))
        for a in arrays.values():
            a.flush()
        del arrays
        index = df.reset_index(drop=True).copy()
        for key, col in MASK_COLUMNS.items():
            index[f"has_{key}"] = index[col].notna() if col in index else False
        index.to_parquet(tmp / "index.parquet", index=False)
        (tmp / "cache.json").write_text(json.dumps({"version": CACHE_VERSION, "size": size, "count": len(df),
                                                    "arrays": list(names), "fingerprint": fp, "root": str(root.resolve())}, indent=2))
    return Cache(out)


class Cache:
    """A built cache folder: memory-mapped arrays + the index."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.meta = json.loads((self.path / "cache.json").read_text())
            self.index = pd.read_parquet(self.path / "index.parquet")
        except (OSError, ValueError) as e:
            raise BenchError(f"{self.path}: not a complete cache ({e}); rebuild it with `covidct-bench data cache`") from None
        self.size = int(self.meta["size"])

    def __len__(self) -> int:
        return len(self.index)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.load(self.path / f"{k}.npy", mmap_mode="r") for k in self.meta["arrays"]}

    def rows(self, split: str | None = None) -> np.ndarray:
        return np.arange(len(self.index)) if split is None else np.flatnonzero(self.index["split"].to_numpy() == split)

    def to_ray_dataset(self, split: str | None = None, transform: Callable | None = None):
        """A Ray Data dataset of samples (for ``ray.train`` ``datasets=`` and ``iter_torch_batches``).

        Columns: image, lung_mask, lesion_mask, label, index (row of ``self.index``), has_lung_mask,
        has_lesion_mask. ``transform`` (e.g. ``train_transforms``) runs per sample inside the Ray tasks.
        """
        import ray

        return ray.data.from_items([{"row": int(r)} for r in self.rows(split)]).map_batches(
            _CacheReader(str(self.path), transform), batch_format="numpy")


class _CacheReader:
    def __init__(self, path: str, transform: Callable | None):
        self.path, self.transform, self.ds = path, transform, None

    def __call__(self, batch: dict) -> dict:
        if self.ds is None:
            self.ds = CachedDataset(self.path, transform=self.transform)
        samples = [self.ds[int(r)] for r in batch["row"]]
        out = {k: np.stack([np.asarray(s[k]) for s in samples]) for k in ("image", *MASK_COLUMNS)}
        for k in ("label", "index"):
            out[k] = np.array([s[k] for s in samples])
        for k in ("has_lung_mask", "has_lesion_mask"):
            out[k] = np.array([s[k] for s in samples], dtype=bool)
        return out  # ids are strings (not tensors): ``index`` is the row of ``Cache.index`` instead


class CachedDataset(Dataset):
    """Same samples as ``ManifestDataset`` at the cache size, read from the memory-mapped arrays."""

    def __init__(self, cache: "Cache | str | os.PathLike", split: str | None = None, transform: Callable | None = None):
        self.cache = cache if isinstance(cache, Cache) else Cache(cache)
        self.transform = transform
        self.rows = self.cache.rows(split)
        self.records = self.cache.index.to_dict("records")
        self._arrays: dict[str, np.ndarray] | None = None  # opened lazily: one mmap per worker process

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        if self._arrays is None:
            self._arrays = self.cache.arrays()
        r = int(self.rows[i])
        row = self.records[r]
        masks = {k: (self._arrays[k][r] if row[f"has_{k}"] else None) for k in MASK_COLUMNS}
        sample = make_sample(self._arrays["images"][r], masks, row, r)
        return self.transform(sample) if self.transform else sample

    @property
    def labels(self) -> np.ndarray:
        return self.cache.index["label"].to_numpy()[self.rows]
