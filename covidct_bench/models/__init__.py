"""Models (pure torch): backbone registry, multi-task ASPP head, residual U-Net, MoCo v2."""

from covidct_bench.models.backbones import BACKBONES, create_backbone, register_backbone
from covidct_bench.models.moco import MoCo
from covidct_bench.models.multitask import MultiTaskNet
from covidct_bench.models.unet import ResUNet

__all__ = ["BACKBONES", "MoCo", "MultiTaskNet", "ResUNet", "create_backbone", "register_backbone"]
