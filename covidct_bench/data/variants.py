"""Training-set variants (the grids' ``positive_data`` axis) and extra test sets, as derived manifests.

The paper's Table 5 asks what the *positive* training images should be; everything else stays fixed:

- ``covid-ct``: the official COVID-CT training split (its COVID and non-COVID images);
- ``covid-seg``: the segmentation dataset's slices (MedSeg: original hospital CTs, with lesion masks)
  as the positives, with the same COVID-CT negatives;
- ``covid-ct-N``: a seeded random subset of N COVID-CT training positives (the paper's COVID-CT-118
  idea); ``covid-ct-matched`` takes N = the number of covid-seg positives;
- ``combination``: both positive sets.

Validation and test are always the base dataset's own splits (COVID-CT's official val/test), so every
variant is scored on the same images. A derived manifest holds absolute paths (rows come from two
dataset folders) and the lung masks already resolved from each source's mask set; it is written
only when its content changes, so the preprocessing cache beside it is reused.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from covidct_bench.data.manifest import MANIFEST_FILE, absolute, read_manifest, write_manifest
from covidct_bench.errors import BenchError

PATH_COLUMNS = ("path", "lung_mask_path", "lesion_mask_path", "lesion_multiclass_path")
VARIANT = re.compile(r"^(covid-ct|covid-seg|combination|covid-ct-matched|covid-ct-(\d+))$")
NEEDS_SEG = ("covid-seg", "combination", "covid-ct-matched")


def absolutized(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every path column absolute (so rows of several dataset folders can share a manifest)."""
    out = df.copy()
    out.attrs = {**df.attrs, "root": str(Path(df.attrs.get("root", ".")).resolve())}
    for col in PATH_COLUMNS:
        if col in out:
            out[col] = absolute(out, col)
    return out


def training_variant(base: pd.DataFrame, seg: pd.DataFrame | None, variant: str, seed: int = 0) -> pd.DataFrame:
    """The manifest rows of training-set ``variant``: base negatives + chosen positives, base val/test."""
    m = VARIANT.match(variant)
    if not m:
        raise BenchError(f"positive_data {variant!r}: expected covid-ct, covid-seg, covid-ct-N, covid-ct-matched or combination")
    if variant in NEEDS_SEG and (seg is None or not (seg["label"] == 1).any()):
        raise BenchError(f"positive_data {variant}: needs the segmentation dataset's positive slices (seg_dataset)")
    base = absolutized(base)
    train = base["split"] == "train"
    pos, neg, rest = base[train & (base["label"] == 1)], base[train & (base["label"] == 0)], base[~train]
    seg_pos = None
    if seg is not None:
        seg_pos = absolutized(seg)
        seg_pos = seg_pos[seg_pos["label"] == 1].assign(split="train")
    if variant == "covid-seg":
        pos = seg_pos
    elif variant == "combination":
        pos = pd.concat([pos, seg_pos], ignore_index=True)
    elif variant == "covid-ct-matched" or m.group(2):
        n = len(seg_pos) if variant == "covid-ct-matched" else int(m.group(2))
        if not 0 < n <= len(pos):
            raise BenchError(f"positive_data {variant}: asks for {n} positives, the training split has {len(pos)}")
        pos = pos.sample(n=n, random_state=seed).sort_index()
    out = pd.concat([pos, neg, rest], ignore_index=True)
    if out["image_id"].duplicated().any():
        raise BenchError(f"positive_data {variant}: image_id {out['image_id'][out['image_id'].duplicated()].iloc[0]!r} "
                         "is in both datasets")
    return out


def extra_test_set(df: pd.DataFrame, exclude_ids: set[str] = frozenset()) -> pd.DataFrame:
    """Every row of ``df`` as a test image (an extra test set), leaving out images used in training."""
    out = absolutized(df)
    out = out[~out["image_id"].isin(exclude_ids)].assign(split="test")
    return out.reset_index(drop=True)


def write_variant(df: pd.DataFrame, folder: str | Path) -> pd.DataFrame:
    """Write a derived manifest into ``folder`` unless the same content is there; return it as read."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if path.is_file():
        try:
            old = read_manifest(path)
            cols = [c for c in df.columns if c in old.columns]
            if len(old) == len(df) and old[cols].reset_index(drop=True).astype(str).equals(
                    df[cols].reset_index(drop=True).astype(str)):
                return old
        except BenchError:
            pass
    write_manifest(df, path)
    return read_manifest(path)
