"""Residual U-Net (Zhang, Liu & Wang 2018, "Road Extraction by Deep Residual U-Net") for lung masks.

Residual units are pre-activation (BN -> ReLU -> 3x3 conv, twice) with a 1x1 projection shortcut;
the encoder halves the resolution with stride-2 convolutions (no pooling), the decoder upsamples,
concatenates the skip connection and applies a residual unit; a 1x1 conv gives the mask logits.
Widths are ``base * (1, 2, 4, 8)`` (the paper: 64, 128, 256, 512). Inputs must be divisible by 8.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, first: bool = False):
        super().__init__()
        layers = [] if first else [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers, nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                  nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False))
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class ResUNet(nn.Module):
    depth = 3  # stride-2 stages: inputs must be divisible by 2**depth

    def __init__(self, in_chans: int = 1, base: int = 64, num_classes: int = 1):
        super().__init__()
        w = [base, base * 2, base * 4, base * 8]
        self.enc = nn.ModuleList([ResidualUnit(in_chans, w[0], first=True), ResidualUnit(w[0], w[1], 2),
                                  ResidualUnit(w[1], w[2], 2)])
        self.bridge = ResidualUnit(w[2], w[3], 2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec = nn.ModuleList([ResidualUnit(w[3] + w[2], w[2]), ResidualUnit(w[2] + w[1], w[1]),
                                  ResidualUnit(w[1] + w[0], w[0])])
        self.head = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.enc:
            x = enc(x)
            skips.append(x)
        x = self.bridge(x)
        for dec, skip in zip(self.dec, reversed(skips)):
            x = dec(torch.cat([self.up(x), skip], dim=1))
        return self.head(x)
