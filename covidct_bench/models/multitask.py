"""Multi-task classifier: backbone trunk -> ASPP -> lesion head; the predicted lesion mask feeds the
classification branch (Yang et al. 2020, multi-task learning with lesion segmentation).

The classification branch sees two pooled descriptors of the trunk's feature map ``F``: the global
average, and the average weighted by the predicted lesion probability ``p`` (attention pooling:
``sum(F * p) / sum(p)``), plus the mean and max of ``p``. Lesion masks are needed only to train the
lesion head; at test time the classifier uses its own predicted mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from covidct_bench.models.backbones import create_backbone, spatial_trunk, trunk_channels


class MultiTaskNet(nn.Module):
    def __init__(self, backbone: str, init: str = "random", weights=None, in_chans: int = 3,
                 aspp_rates: tuple[int, ...] = (6, 12, 18), aspp_channels: int = 256):
        super().__init__()
        self.trunk = spatial_trunk(create_backbone(backbone, init, weights, in_chans=in_chans))
        c = trunk_channels(self.trunk, in_chans)
        self.aspp = ASPP(c, list(aspp_rates), aspp_channels)
        self.lesion_head = nn.Conv2d(aspp_channels, 1, kernel_size=1)
        self.classifier = nn.Linear(2 * c + 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.trunk(x)
        lesion_logits = self.lesion_head(self.aspp(feats))  # B x 1 x h x w at the trunk's stride
        p = torch.sigmoid(lesion_logits)
        gap = feats.mean(dim=(2, 3))
        att = (feats * p).sum(dim=(2, 3)) / (p.sum(dim=(2, 3)) + 1e-6)
        stats = torch.cat([p.mean(dim=(2, 3)), p.amax(dim=(2, 3))], dim=1)
        logit = self.classifier(torch.cat([gap, att, stats], dim=1)).squeeze(1)
        lesion = F.interpolate(lesion_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logit": logit, "lesion_logits": lesion}
