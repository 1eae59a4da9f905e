from __future__ import annotations

from typing import Callable

import torch.nn as nn

from kdprune.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture")
register_model = MODELS.register


def build_model(name: str, in_channels: int, num_classes: int, image_size: int, **kwargs) -> nn.Module:
    """Instantiate a registered architecture for the given input shape and class count.

    Every model exposes ``features(x)`` (penultimate embedding) and ``forward(x)`` (logits),
    so scores that need embeddings (prototypes, Moderate-DS) work with any of them.
    """
    return MODELS.get(name)(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **kwargs)


def init_weights(model: nn.Module) -> nn.Module:
    """The usual ResNet init: convs kaiming-normal (fan_out, relu), BatchNorm weight 1 bias 0.

    Draws from torch's global generator; callers build models under ``kdprune.train.seeded``.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
