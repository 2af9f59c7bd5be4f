"""A torch ``Dataset`` over a manifest: image + optional lung / lesion masks, transformed jointly.

Samples are dicts: ``image`` (tv_tensors.Image uint8 1xHxW before transforms), ``label`` (1 = COVID),
``lung_mask`` / ``lesion_mask`` (tv_tensors.Mask 1xHxW, 0/1; zeros where the manifest has none),
``has_lung_mask`` / ``has_lesion_mask`` (bool), ``image_id``, ``patient_id``, ``index``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from covidct_bench.data.images import load_gray, load_mask
from covidct_bench.errors import BenchError

MASK_COLUMNS = {"lung_mask": "lung_mask_path", "lesion_mask": "lesion_mask_path"}


def make_sample(image: np.ndarray, masks: dict[str, np.ndarray | None], row: dict, index: int) -> dict:
    h, w = image.shape
    sample = {"image": tv_tensors.Image(torch.from_numpy(np.require(image, requirements=["C", "W"]))[None]),
              "label": int(row["label"]), "image_id": str(row["image_id"]),
              "patient_id": str(row["patient_id"]), "index": index}
    for key, m in masks.items():
        sample[f"has_{key}"] = m is not None
        m = np.zeros((h, w), np.uint8) if m is None else (m > 0).astype(np.uint8)
        sample[key] = tv_tensors.Mask(torch.from_numpy(m)[None])
    return sample


def select_split(df: pd.DataFrame, split: str | None) -> pd.DataFrame:
    if split is None:
        return df.reset_index(drop=True)
    out = df[df["split"] == split].reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out


class ManifestDataset(Dataset):
    """Decodes each image from disk on every access (the baseline the cache is measured against)."""

    def __init__(self, df: pd.DataFrame, split: str | None = None, transform: Callable | None = None,
                 masks: tuple[str, ...] = ("lung_mask", "lesion_mask")):
        self.df = select_split(df, split)
        self.root = Path(df.attrs.get("root", "."))
        self.transform = transform
        self.masks = masks
        self.rows = self.df.to_dict("records")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        image = load_gray(self.root / row["path"], row["path"])
        masks = {}
        for key in self.masks:
            rel = row.get(MASK_COLUMNS[key])
            m = load_mask(self.root / rel, rel) if isinstance(rel, str) else None
            if m is not None and m.shape != image.shape:
                raise BenchError(f"{rel}: mask size {m.shape[::-1]} differs from image {row['path']} {image.shape[::-1]}")
            masks[key] = m
        sample = make_sample(image, masks, row, i)
        return self.transform(sample) if self.transform else sample

    @property
    def labels(self) -> np.ndarray:
        return self.df["label"].to_numpy()
