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
