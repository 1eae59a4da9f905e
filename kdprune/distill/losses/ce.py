"""``ce``: the no-KD baseline (what a student whose KD setting is None trains on), cross-entropy on the ground-truth labels only (per example, as every loss)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from kdprune.distill.base import register_loss


@register_loss("ce", teacher=False, baseline=True)
def cross_entropy(
    student: torch.Tensor, y: torch.Tensor, teacher: Optional[torch.Tensor], weight: float, temperature: float
) -> torch.Tensor:
    return F.cross_entropy(student, y, reduction="none")
