"""The paper's augmentation presets as torchvision.transforms.v2 pipelines (image + masks jointly).

Train (Yang et al. 2020): random resized crop with scale (0.5, 1), horizontal flip, brightness and
contrast jitter 0.2, at 480 x 480. Eval: resize to the input size. Masks (``tv_tensors.Mask``) follow
the geometric transforms with nearest-neighbour sampling and skip the photometric ones.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TransformConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(480, ge=16, description="input size (paper: 480)")
    crop_scale: float = Field(0.5, gt=0.0, le=1.0, description="RandomResizedCrop minimum area fraction")
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    brightness: float = Field(0.2, ge=0.0)
    contrast: float = Field(0.2, ge=0.0)
    channels: int = Field(3, ge=1, description="grey CT replicated to this many channels (3 for ImageNet backbones)")
    normalize: bool = True


class RepeatChannels(v2.Transform):
    """Replicate a 1-channel image to ``n`` channels (masks untouched)."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if inpt.shape[-3] == self.n:
            return inpt
        return tv_tensors.wrap(inpt.expand(*inpt.shape[:-3], self.n, *inpt.shape[-2:]).contiguous(), like=inpt)


def finish_steps(cfg: TransformConfig) -> list:
    """To float, to the channel count, ImageNet normalisation: the steps every split ends with."""
    steps = [v2.ToDtype(torch.float32, scale=True), RepeatChannels(cfg.channels)]
    if cfg.normalize:
        mean = IMAGENET_MEAN if cfg.channels == 3 else (sum(IMAGENET_MEAN) / 3,) * cfg.channels
        std = IMAGENET_STD if cfg.channels == 3 else (sum(IMAGENET_STD) / 3,) * cfg.channels
        steps.append(v2.Normalize(mean, std))
    return steps


def train_transforms(cfg: TransformConfig | None = None) -> v2.Compose:
    cfg = cfg or TransformConfig()
    return v2.Compose([
        v2.RandomResizedCrop((cfg.size, cfg.size), scale=(cfg.crop_scale, 1.0), antialias=True),
        v2.RandomHorizontalFlip(cfg.hflip),
        v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast),
        *finish_steps(cfg),
    ])


def eval_transforms(cfg: TransformConfig | None = None) -> v2.Compose:
    cfg = cfg or TransformConfig()
    return v2.Compose([v2.Resize((cfg.size, cfg.size), antialias=True), *finish_steps(cfg)])


def presets(cfg: TransformConfig | None = None) -> dict[str, v2.Compose]:
    """Transforms per split: augmentation on train, resize only on val and test."""
    cfg = cfg or TransformConfig()
    ev = eval_transforms(cfg)
    return {"train": train_transforms(cfg), "val": ev, "test": ev}


class MocoAugment(BaseModel):
    """MoCo v2 views (Chen et al. 2020), as used for the paper's CSSL."""

    model_config = ConfigDict(extra="forbid")

    crop_scale: float = Field(0.2, gt=0.0, le=1.0, description="RandomResizedCrop minimum area fraction")
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0)
    blur_p: float = Field(0.5, ge=0.0, le=1.0)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    hflip: float = Field(0.5, ge=0.0, le=1.0)


def moco_transforms(size: int, aug: MocoAugment | None = None) -> v2.Compose:
    """One random view of a grey CT (replicated to RGB so colour jitter and grayscale apply as published)."""
    aug = aug or MocoAugment()
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # ~10% of the image, odd
    return v2.Compose([
        v2.RandomResizedCrop((size, size), scale=(aug.crop_scale, 1.0), antialias=True),
        RepeatChannels(3),
        v2.RandomApply([v2.ColorJitter(*aug.jitter)], p=aug.jitter_p),
        v2.RandomGrayscale(aug.grayscale_p),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=aug.blur_sigma)], p=aug.blur_p),
        v2.RandomHorizontalFlip(aug.hflip),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
