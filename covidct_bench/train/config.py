"""The typed training config: one model for every task, paper defaults, per-task defaults.

Fields left ``None`` take the task's default (``TASK_DEFAULTS``) when the config is resolved; the run
folder stores the resolved config, so a run says exactly what it did. Paper defaults (Yang et al.
2020): 480 x 480 input, Adam lr 1e-4, batch 16, cosine schedule (``CosineAnnealingLR`` with
``T_max`` = 10 epochs, as in the COVID-CT baselines), augmentation random crop scale 0.5, horizontal
flip, brightness and contrast 0.2. CSSL: MoCo v2, queue 512, SGD lr 0.015, momentum 0.9, weight decay
1e-4, batch 128.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from covidct_bench.data.transforms import MocoAugment
from covidct_bench.errors import BenchError, first_invalid, reason
from covidct_bench.metrics import THRESHOLD_RULES

TaskName = Literal["classify", "multitask", "segment", "cssl"]

TASK_DEFAULTS: dict[str, dict] = {
    "classify": {"image_size": 480, "batch_size": 16, "lr": 1e-4, "optimizer": "adam", "weight_decay": 0.0},
    "multitask": {"image_size": 480, "batch_size": 16, "lr": 1e-4, "optimizer": "adam", "weight_decay": 0.0},
    "segment": {"image_size": 256, "batch_size": 16, "lr": 1e-3, "optimizer": "adam", "weight_decay": 0.0},
    "cssl": {"image_size": 224, "batch_size": 128, "lr": 0.015, "optimizer": "sgd", "weight_decay": 1e-4},
}


class Augment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    crop_scale: float = Field(0.5, gt=0.0, le=1.0)
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    brightness: float = Field(0.2, ge=0.0)
    contrast: float = Field(0.2, ge=0.0)


class MocoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queue: int = Field(512, ge=1)
    momentum: float = Field(0.999, ge=0.0, lt=1.0)
    temperature: float = Field(0.2, gt=0.0)
    dim: int = Field(128, ge=2)
    hidden: int = Field(2048, ge=2)
    knn_k: int = Field(20, ge=1)
    augment: MocoAugment = MocoAugment()


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: TaskName = "classify"
    dataset: str = Field("synthetic", description="dataset name, or a folder holding manifest.parquet")
    root: str | None = None
    lung_masks: str = Field("manifest", description="lung mask set: 'manifest' or a set made by `data lung-masks`")
    backbone: str = "densenet169"
    init: str = Field("imagenet", description="random | imagenet | cssl:PATH")
    weights: str | None = Field(None, description="offline ImageNet state dict for --init imagenet")
    image_size: int | None = Field(None, ge=16)
    epochs: int = Field(10, ge=1)
    batch_size: int | None = Field(None, ge=2)
    lr: float | None = Field(None, gt=0.0)
    optimizer: Literal["adam", "sgd"] | None = None
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float | None = Field(None, ge=0.0)
    cosine_period: int = Field(10, ge=1, description="CosineAnnealingLR T_max, in epochs")
    mask_mode: Literal["none", "channel", "multiply", "exclude"] = Field(
        "none", description="lung mask use: channel (extra input), multiply (only the lungs kept), exclude (lungs blacked out)")
    augment: Augment = Augment()
    cls_weight: float = Field(1.0, ge=0.0)
    seg_weight: float = Field(1.0, ge=0.0)
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    unet_base: int = Field(64, ge=2)
    moco: MocoConfig = MocoConfig()
    threshold_rule: str = "youden"
    select_metric: str = Field("auc", description="validation metric that picks the reported epoch")
    seed: int = 0
    deterministic: bool = True
    workers: int = Field(1, ge=1, description="Ray Train workers (DDP)")
    gpu: bool = False
    cpus_per_worker: float | None = Field(None, gt=0)
    gpus_per_worker: float | None = Field(None, gt=0, le=1, description="fractional: trials share a GPU (implies gpu)")
    loader_workers: int = Field(0, ge=0, description="DataLoader processes per Ray worker")
    amp: bool = Field(True, description="bf16 autocast on GPU")
    channels_last: bool = Field(True, description="channels_last memory format on GPU")
    eval_every: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold_rule must be one of {', '.join(THRESHOLD_RULES)}")
        if self.task == "segment" and self.mask_mode != "none":
            raise ValueError("mask_mode: the segmenter predicts the lung mask; it cannot also take it as input")
        if self.task == "cssl" and self.mask_mode != "none":
            raise ValueError("mask_mode: CSSL pretrains on images only (use the mask channel when fine-tuning)")
        return self

    def resolved(self) -> "TrainConfig":
        """A copy with the task's defaults filled in."""
        fill = {k: v for k, v in TASK_DEFAULTS[self.task].items() if getattr(self, k) is None}
        out = self.model_copy(update=fill)
        if out.task == "segment" and out.image_size % 8:
            raise BenchError(f"--image-size {out.image_size}: the residual U-Net needs a multiple of 8")
        return out

    @property
    def in_chans(self) -> int:
        if self.task == "segment":
            return 1
        return 4 if self.mask_mode == "channel" else 3


def load_config(path: str | Path | None, overrides: dict) -> TrainConfig:
    """Config file (YAML or JSON) + flags that were given (``None`` = not given); flags win."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
            data = (json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)) or {}
        except (OSError, ValueError, yaml.YAMLError) as e:
            raise BenchError(f"{path}: cannot read config ({reason(e)})") from None
        if not isinstance(data, dict):
            raise BenchError(f"{path}: a config file holds a mapping of keys to values")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**data)
    except ValidationError as e:
        key, msg = first_invalid(e)
        where = f"{path}: " if path is not None else ""
        raise BenchError(f"{where}{key or 'config'}: {msg}") from None
