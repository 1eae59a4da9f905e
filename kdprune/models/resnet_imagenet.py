"""ResNet-18/50 with the ImageNet stem (He et al. 2016): torchvision's implementation (7x7 stride-2
conv, 3x3 max-pool, BasicBlocks for ResNet-18, Bottlenecks with the stride on the 3x3 conv -- "ResNet
v1.5" -- for ResNet-50; torchvision's init: kaiming-normal fan_out convs, BatchNorm 1/0), wrapped so
that the linear classifier is ``head`` and ``features(x)`` is the pooled penultimate embedding, as
every registered model. For 224 px inputs (profiles/imagenet.yaml); the CIFAR-stem ``resnet18`` suits
small images. ResNet-18: 11.69 M parameters, ResNet-50: 25.56 M (1,000 classes).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from kdprune.models.base import register_model


class TorchvisionResNet(nn.Module):
    def __init__(self, net: nn.Module, in_channels: int):
        super().__init__()
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.head = net.fc
        net.fc = nn.Identity()
        self.net = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))


@register_model("resnet18_imagenet")
def resnet18_imagenet(in_channels: int, num_classes: int, image_size: int) -> TorchvisionResNet:
    from torchvision.models import resnet18

    return TorchvisionResNet(resnet18(weights=None, num_classes=num_classes), in_channels)


@register_model("resnet50_imagenet")
def resnet50_imagenet(in_channels: int, num_classes: int, image_size: int) -> TorchvisionResNet:
    from torchvision.models import resnet50

    return TorchvisionResNet(resnet50(weights=None, num_classes=num_classes), in_channels)
