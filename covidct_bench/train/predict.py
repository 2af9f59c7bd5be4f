"""Inference with a trained run: the U-Net's lung masks for any manifest (a mask set for the classifier)."""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision import tv_tensors

from covidct_bench.data.images import load_gray
from covidct_bench.data.manifest import absolute
from covidct_bench.data.transforms import TransformConfig, eval_transforms
from covidct_bench.errors import BenchError
from covidct_bench.models.unet import ResUNet
from covidct_bench.train.runner import load_model_file


def load_unet(run: str | os.PathLike) -> tuple[ResUNet, int]:
    state, meta = load_model_file(run)
    if meta.get("task") != "segment":
        raise BenchError(f"--run {run}: a {meta.get('task')!r} run, not a `train segment` (U-Net) run")
    model = ResUNet(in_chans=1, base=int(meta["unet_base"]))
    model.load_state_dict(state)
    return model.eval(), int(meta["image_size"])


def unet_lung_masks(df: pd.DataFrame, run: str | os.PathLike, batch_size: int = 16) -> Iterator[np.ndarray]:
    """One boolean mask per manifest row, at the image's own size (predicted at the run's size).
    The run is loaded (and checked) before the first mask is asked for."""
    model, size = load_unet(run)
    return _predict(df, model, size, batch_size)


def _predict(df: pd.DataFrame, model: ResUNet, size: int, batch_size: int) -> Iterator[np.ndarray]:
    tf = eval_transforms(TransformConfig(size=size, channels=1))
    paths, rels = list(absolute(df)), list(df["path"])
    for start in range(0, len(paths), batch_size):
        imgs = [load_gray(p, r) for p, r in zip(paths[start:start + batch_size], rels[start:start + batch_size])]
        x = torch.stack([tf(tv_tensors.Image(torch.from_numpy(np.array(i))[None])) for i in imgs])
        with torch.no_grad():
            pred = (model(x) > 0).squeeze(1).numpy().astype(np.uint8)
        for img, p in zip(imgs, pred):
            h, w = img.shape
            yield np.asarray(Image.fromarray(p).resize((w, h), Image.NEAREST)) > 0
