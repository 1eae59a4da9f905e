"""What the training loop records, accumulated on the device and read once per epoch: the epoch's
train loss and accuracy (with the per-example losses a sampler asks for), and the training
dynamics (each example's logits at its presentation in every epoch) that scores read."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from kdprune.train.batches import Batch


class EpochMeter:
    def __init__(self, size: int, device: torch.device, keep_losses: bool):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.losses = torch.empty(size, device=device) if keep_losses else None  # in the epoch's order
        self.seen = 0

    def add(self, batch: "Batch", per_example: torch.Tensor, logits: torch.Tensor) -> None:
        self.loss_sum += per_example.sum()
        self.correct += (logits.argmax(1) == batch.y).sum()
        if self.losses is not None:
            self.losses[batch.start : batch.start + len(batch.y)] = per_example
        self.seen += len(batch.y)

    def metrics(self) -> dict[str, float]:
        return {"train_loss": float(self.loss_sum) / max(1, self.seen),
                "train_acc": float(self.correct) / max(1, self.seen)}


class Dynamics:
    """float16 [epochs, n, classes] logits, rows in subset order; NaN where an example was not
    presented (a sampler skipped it, or the step budget ended the epoch)."""

    def __init__(self, model: nn.Module, epochs: int, n: int, device: torch.device):
        if not hasattr(model, "head"):
            raise ValueError("record_dynamics needs a model with a linear `head`")
        self.logits = torch.full((epochs, n, model.head.out_features), float("nan"), dtype=torch.float16,
                                 device=device)

    def record(self, epoch: int, local: torch.Tensor, logits: torch.Tensor) -> None:
        self.logits[epoch - 1, local] = logits.to(torch.float16)

    def upto(self, epoch: int) -> torch.Tensor:
        """Epochs 1..``epoch`` on the CPU (what a checkpoint keeps)."""
        return self.logits[:epoch].cpu()

    def restore(self, saved: torch.Tensor) -> None:
        self.logits[: saved.shape[0]] = saved.to(self.logits.device)

    def numpy(self) -> np.ndarray:
        return self.logits.cpu().numpy()

