"""Hinton knowledge distillation.

Losses return one value per example ([B]); the trainer takes their (optionally weighted) mean,
so the batch loss is exactly the usual one and per-example losses are there for samplers that
need them (InfoBatch).

``kd``:  L = (1 - a) * CE(y, s) + a * T^2 * KL(softmax(t / T) || softmax(s / T)),
KL summed over classes and averaged over the batch ("batchmean"), ``a`` the KD weight and ``T``
the temperature (Hinton et al. 2015, as used by Ben-Baruch et al. 2024). The T^2 factor keeps
the soft-target gradients on the same scale as the hard-target ones when T changes.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from kdprune.distill.base import register_loss


@register_loss("kd")
def hinton_kd(
    student: torch.Tensor, y: torch.Tensor, teacher: Optional[torch.Tensor], weight: float, temperature: float
) -> torch.Tensor:
    if teacher is None:
        raise ValueError("the kd loss needs teacher logits")
    ce = F.cross_entropy(student, y, reduction="none")
    log_p_s = F.log_softmax(student.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher.float() / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(1)  # per example
    return (1.0 - weight) * ce + weight * temperature**2 * kl
