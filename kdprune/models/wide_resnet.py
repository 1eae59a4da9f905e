"""Wide Residual Networks (Zagoruyko & Komodakis 2016, "Wide Residual Networks", BMVC).

WRN-d-k: depth d = 6n + 4, a 3x3 stem conv to 16 channels, then three stages of n pre-activation
wide basic blocks (BN-ReLU-conv3x3 -> [dropout] -> BN-ReLU-conv3x3) with 16k/32k/64k channels
(strides 1, 2, 2), a 1x1 conv shortcut where the shape changes (applied to the pre-activated
input, as in the authors' code), a final BN-ReLU, adaptive global average pool and a linear
``head``. Dropout inside blocks defaults to 0 so training is deterministic given a seed.
Published sizes (CIFAR-10): WRN-16-4 2.7M, WRN-16-8 11.0M, WRN-28-2 1.5M, WRN-28-10 36.5M.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdprune.models.base import init_weights, register_model


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        shortcut = x if self.short is None else self.short(o)
        out = self.conv1(o)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    def __init__(self, depth: int, k: int, in_channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        layers, cin = [], 16
        for cout, stride in ((16 * k, 1), (32 * k, 2), (64 * k, 2)):
            for i in range(n):
                layers.append(WideBlock(cin, cout, stride if i == 0 else 1, dropout))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.head = nn.Linear(cin, num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.stem(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _make(depth: int, k: int):
    def build(in_channels: int, num_classes: int, image_size: int, dropout: float = 0.0) -> WideResNet:
        return WideResNet(depth, k, in_channels, num_classes, dropout)

    build.__doc__ = f"WRN-{depth}-{k}: depth {depth}, widen factor {k}."
    return build


for _depth, _k in ((16, 4), (16, 8), (28, 2), (28, 10)):
    register_model(f"wrn{_depth}_{_k}")(_make(_depth, _k))
