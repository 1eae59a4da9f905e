"""ResNet-18/34 (He et al. 2016, "Deep Residual Learning for Image Recognition") with the CIFAR stem.

The common CIFAR adaptation (as in kuangliu/pytorch-cifar): a 3x3 stride-1 stem conv and no
max-pool, then four stages of BasicBlocks with 64/128/256/512 channels (strides 1, 2, 2, 2),
[2, 2, 2, 2] blocks for ResNet-18 and [3, 4, 6, 3] for ResNet-34, option-B shortcuts (1x1 conv +
BN) where the shape changes, adaptive global average pool and a linear ``head``. The adaptive
pool makes any input size >= 1 pixel work (8x8 digits, 28x28 MNIST, 32x32 CIFAR).
ResNet-18 has 11.17M parameters for 10 classes and 3 input channels.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdprune.models.base import init_weights, register_model
from kdprune.models.resnet_cifar import BasicBlock


class ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], in_channels: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        layers, cin = [], 64
        for stage, (cout, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            for i in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i == 0 and stage > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(512, num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("resnet18")
def resnet18(in_channels: int, num_classes: int, image_size: int) -> ResNet:
    return ResNet((2, 2, 2, 2), in_channels, num_classes)


@register_model("resnet34")
def resnet34(in_channels: int, num_classes: int, image_size: int) -> ResNet:
    return ResNet((3, 4, 6, 3), in_channels, num_classes)
