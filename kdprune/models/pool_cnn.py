"""The classic two-convolution CNN of the MNIST family: conv-BN-ReLU-pool twice, one hidden FC layer.

conv3x3(c) -> pool -> conv3x3(2c) -> pool -> FC(h) -> linear head, with BatchNorm after each layer.
Downsampling after each convolution keeps it cheap on a CPU (28x28 input: 1.2 M
multiply-adds at c=16, against 7.3 M for ``small_cnn``), and the FC layer over the 7x7 map gives
the spatial detail that global average pooling throws away. The zalandoresearch/fashion-mnist
benchmark lists models of this shape at 0.916 (2 conv + pooling) to 0.925 (2 conv, <100 K params)
test accuracy without augmentation. ``features(x)`` is the hidden layer.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from kdprune.models.base import register_model


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class PoolCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 16, hidden: int = 128):
        super().__init__()
        side = image_size // 4
        if side < 1:
            raise ValueError(f"pool_cnn pools twice by 2: images of {image_size} px are too small (need >= 4)")
        self.body = nn.Sequential(
            _conv(in_channels, width),
            _conv(width, 2 * width),
            nn.Flatten(),
            nn.Linear(2 * width * side * side, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@register_model("pool_cnn")
def pool_cnn(in_channels: int, num_classes: int, image_size: int) -> PoolCNN:
    return PoolCNN(in_channels, num_classes, image_size, width=16, hidden=128)


@register_model("pool_cnn_narrow")
def pool_cnn_narrow(in_channels: int, num_classes: int, image_size: int) -> PoolCNN:
    return PoolCNN(in_channels, num_classes, image_size, width=8, hidden=64)


@register_model("pool_cnn_wide")
def pool_cnn_wide(in_channels: int, num_classes: int, image_size: int) -> PoolCNN:
    return PoolCNN(in_channels, num_classes, image_size, width=32, hidden=256)
