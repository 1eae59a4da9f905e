"""A small VGG-style CNN: three conv-BN-ReLU blocks, global average pool, linear head.

Sized for small images (digits 8x8, MNIST-like 28x28); ``width`` scales every layer.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from kdprune.models.base import register_model


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            _block(in_channels, width),
            _block(width, 2 * width),
            nn.MaxPool2d(2),
            _block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@register_model("small_cnn")
def small_cnn(in_channels: int, num_classes: int, image_size: int) -> SmallCNN:
    return SmallCNN(in_channels, num_classes, width=16)


@register_model("small_cnn_wide")
def small_cnn_wide(in_channels: int, num_classes: int, image_size: int) -> SmallCNN:
    return SmallCNN(in_channels, num_classes, width=32)


@register_model("small_cnn_narrow")
def small_cnn_narrow(in_channels: int, num_classes: int, image_size: int) -> SmallCNN:
    return SmallCNN(in_channels, num_classes, width=8)
