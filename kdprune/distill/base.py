from __future__ import annotations

from typing import Callable, Optional

import torch

from kdprune.registry import Registry

# (student_logits, targets, teacher_logits | None, weight, temperature) -> per-example loss [B]
LossFn = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor], float, float], torch.Tensor]

LOSSES: Registry[LossFn] = Registry("loss")
register_loss = LOSSES.register
