"""The training step: forward, loss (KD from a live teacher or its cached logits), per-example
weights, backward and an SGD step at the learning rate of the run's progress."""
from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn as nn

from kdprune.distill import LOSSES, KDSetting

from kdprune.train.batches import Batch
from kdprune.train.types import DeviceData, TrainConfig


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_factor(progress: float, warmup: float) -> float:
    """LR multiplier at ``progress`` in [0, 1] of the run: linear warmup over the first ``warmup``
    share, then cosine decay to 0. A pure function of progress, so a resumed run needs no scheduler state."""
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-12, 1.0 - warmup))))


def progress(cfg: "TrainConfig", epoch: int, batch: int, batches_in_epoch: int, steps_done: int) -> float:
    """Share of the run done after the coming step: of ``cfg.max_steps`` steps when that budget is
    set, else of ``cfg.epochs`` epochs (``batch``: 0-based within the 1-based ``epoch``)."""
    if cfg.max_steps is not None:
        return (steps_done + 1) / cfg.max_steps
    return (epoch - 1 + (batch + 1) / batches_in_epoch) / cfg.epochs


def kd_inputs(cfg: "TrainConfig", kd: Optional[KDSetting], data: "DeviceData", teacher: Optional[nn.Module],
              teacher_logits: Optional[torch.Tensor]) -> tuple[Optional[nn.Module], Optional[torch.Tensor]]:
    """Check the teacher arguments against the KD setting's loss and the augmentation; returns (teacher,
    teacher_logits), at most one of them set (cached logits win: float32 on the data's device)."""
    loss = LOSSES.of(kd)
    if loss.teacher and teacher is None and teacher_logits is None:
        raise ValueError(f"loss {loss.name!r} needs a teacher model or its cached logits")
    if teacher_logits is None:
        return teacher, None
    if cfg.pad or cfg.flip or getattr(data, "random_crop", False):
        raise ValueError("cached teacher logits need augmentation off (pad 0, flip false, no random crops): with "
                         "augmentation the teacher must see each augmented batch; pass the teacher model instead")
    if teacher_logits.shape[0] != len(data):
        raise ValueError(f"teacher_logits has {teacher_logits.shape[0]} rows, the data {len(data)}")
    return None, teacher_logits.to(device=data.device, dtype=torch.float32)


def sgd(model: nn.Module, cfg: "TrainConfig") -> torch.optim.SGD:
    """SGD with (Nesterov) momentum; weight decay on weights, none on biases and norm parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )


class TrainStep:
    """Moves the model (and teacher) to ``device`` in the memory format the batches come in, owns
    the optimizer; each call trains on one batch under the student's KD setting ``kd`` (None: no KD, the
    baseline loss) and returns its detached per-example losses (unweighted) and logits."""

    def __init__(self, model: nn.Module, cfg: "TrainConfig", device: torch.device, channels_last: bool,
                 teacher: Optional[nn.Module] = None, teacher_logits: Optional[torch.Tensor] = None,
                 kd: Optional[KDSetting] = None):
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.to(device)
        if teacher is not None:
            teacher.to(device).eval()
        self.model, self.cfg, self.device = model, cfg, device
        self.optimizer = sgd(model, cfg)
        self.kd = kd
        self.loss_fn = LOSSES.of(kd)  # the KD loss, called with the setting (its weight, temperature, options)
        self.warmup = min(1.0, cfg.warmup_epochs / cfg.epochs)
        self.teacher_logits = teacher_logits if self.loss_fn.teacher else None
        # torch.compile wraps the same module: parameters, state_dict and checkpoints are shared with
        # ``model``; evaluation runs the plain module (no recompilation for the eval batch size)
        self.forward = torch.compile(model) if cfg.compile else model
        teacher = teacher if self.loss_fn.teacher else None
        self.teacher = torch.compile(teacher) if cfg.compile and teacher is not None else teacher

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def __call__(self, batch: "Batch", progress: float) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        for g in self.optimizer.param_groups:
            g["lr"] = cfg.lr * lr_factor(progress, self.warmup)
        with autocast(self.device):
            t_logits = None
            if self.teacher_logits is not None:
                t_logits = self.teacher_logits[batch.rows]
            elif self.teacher is not None:
                with torch.no_grad():
                    t_logits = self.teacher(batch.x)
            logits = self.forward(batch.x)
            per_example = self.loss_fn(logits.float(), batch.y, None if t_logits is None else t_logits.float(),
                                       self.kd)
            loss = (per_example * batch.weights).mean() if batch.weights is not None else per_example.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return per_example.detach(), logits.detach()
