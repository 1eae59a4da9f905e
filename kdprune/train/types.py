"""The trainer's shared types: the data on the device, the configuration and the result. Every module
of the trainer (batches, step, state, metrics, trainer) imports them from here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from kdprune.settings import TrainSettings


@dataclass
class DeviceData:
    """A split on the training device: uint8 images, labels, and per-channel normalisation."""

    x: torch.Tensor  # uint8 [N, C, H, W]
    y: torch.Tensor  # int64 [N]
    mean: torch.Tensor  # float [C]
    std: torch.Tensor  # float [C]

    @classmethod
    def from_numpy(cls, x: np.ndarray, y: np.ndarray, mean, std, device: torch.device) -> "DeviceData":
        return cls(
            x=torch.from_numpy(np.ascontiguousarray(x)).to(device),
            y=torch.from_numpy(np.ascontiguousarray(y)).to(device),
            mean=torch.as_tensor(mean, dtype=torch.float32, device=device),
            std=torch.as_tensor(std, dtype=torch.float32, device=device),
        )

    @property
    def device(self) -> torch.device:
        return self.x.device

    def __len__(self) -> int:
        return self.y.shape[0]

    def normalise(self, xb: torch.Tensor) -> torch.Tensor:
        return (xb.float().div_(255.0) - self.mean[None, :, None, None]) / self.std[None, :, None, None]


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    warmup_epochs: float = 1.0
    pad: int = 0  # random translation of up to `pad` pixels
    flip: bool = False
    order_seed: int = 0
    aug_seed: int = 0
    record_dynamics: bool | str = False  # True or "logits": the logits; "stats": per-example statistics (metrics.py)
    eval_batch_size: int = 256
    max_steps: Optional[int] = None  # equal-steps budget: stop after this many optimizer steps
    stop_after: Optional[int] = None  # train only the first epochs of the `epochs`-long schedule (proxies read early)
    compile: bool = False  # torch.compile the training forward passes (student and KD teacher)
    channels_last: Optional[bool] = None  # NHWC activations (None: on CUDA only); on CPU 1.3-1.8x faster convs


def train_config(section: TrainSettings, **extra) -> TrainConfig:
    """TrainConfig from a teacher or student section (its schedule, optimiser and augmentation keys; the
    architecture is the model's, not the trainer's), with ``extra`` fields (seeds, budget) set or overridden by
    the caller. How a student distils is not configuration: the trainer takes its KD setting (``train(kd=...)``)."""
    keys = {k: v for k, v in section.training().items() if k != "arch"}
    return TrainConfig(**{**keys, **extra})


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_score: float  # the selection metric's value at best_epoch
    selected_on: str = "val_acc"  # the history metric the model was selected on: val_acc, or train_acc without val
    history: list[dict[str, float]] = field(default_factory=list)
    # float16 [E, n_subset, C] logits, or (record_dynamics "stats") name -> [E, n_subset]; rows in subset order
    dynamics: Optional[np.ndarray | dict[str, np.ndarray]] = None
    steps: int = 0
    samples_seen: int = 0
    seconds: float = 0.0
