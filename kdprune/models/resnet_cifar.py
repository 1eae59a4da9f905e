"""CIFAR ResNets (He et al. 2016, section 4.2): 6n+2 layers, three stages of 16/32/64 channels.

ResNet-20/32/56/110 are n = 3/5/9/18. Option-B shortcuts (1x1 conv + BN) on downsampling
(the paper's CIFAR nets use option A, zero-padding; B adds ~1% parameters: ResNet-20 0.27M).
Adaptive global average pooling, so 8x8, 28x28 and 32x32 inputs all work.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdprune.models.base import init_weights, register_model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.short(x))


class CifarResNet(nn.Module):
    def __init__(self, n: int, in_channels: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(64, num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _make(n: int):
    def build(in_channels: int, num_classes: int, image_size: int) -> CifarResNet:
        return CifarResNet(n, in_channels, num_classes)

    return build


for _depth, _n in ((20, 3), (32, 5), (56, 9), (110, 18)):
    register_model(f"resnet{_depth}")(_make(_n))
