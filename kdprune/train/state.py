"""Checkpoint state: what is saved after every epoch, and how a run resumes from it.

The state holds the model, the optimizer, the best model so far, the history, the recorded
dynamics, the sampler's state and the epoch. Batch order and augmentation are pure functions of
(seed, epoch) and the LR a pure function of progress, so no random stream or scheduler needs
restoring: a resumed run equals an uninterrupted one. A fingerprint of the settings guards
against resuming a run with other settings. The caller decides the storage (the core does no I/O).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Optional, Protocol

import numpy as np
import torch
import torch.nn as nn

from kdprune.train.batches import BatchSource
from kdprune.train.metrics import Dynamics
from kdprune.train.types import TrainConfig, TrainResult


class CheckpointStore(Protocol):
    """Where the trainer keeps its per-epoch state."""

    def load(self) -> Optional[dict]: ...

    def save(self, state: dict) -> None: ...


def fingerprint(cfg: "TrainConfig", batches: "BatchSource", has_teacher: bool, kd=None) -> dict:
    """The settings a checkpoint must have been written with to be resumed (``kd``: the KD setting, or None)."""
    out = {**asdict(cfg), "n": batches.n, "subset_sum": int(batches.subset.sum()), "teacher": has_teacher,
           "kd": None if kd is None else repr(kd),
           "sampler": None if batches.sampler is None else type(batches.sampler).__name__}
    if batches.sample_weights is not None:
        out["sample_weights_sum"] = float(batches.sample_weights.double().sum())
    return out


def _np_to_torch(state: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in state.items()}


def _torch_to_np(state: dict) -> dict:
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


class TrainingState:
    """The run's state as one checkpoint (``store`` None: nothing saved, nothing resumed)."""

    def __init__(self, store: Optional[CheckpointStore], fingerprint: dict, model: nn.Module,
                 optimizer: torch.optim.Optimizer, result: "TrainResult", dynamics: Optional["Dynamics"], sampler):
        self.store, self.fingerprint = store, fingerprint
        self.model, self.optimizer, self.result, self.dynamics, self.sampler = model, optimizer, result, dynamics, sampler

    def restore(self, device: torch.device) -> tuple[int, float]:
        """Load the saved state into the model, optimizer, result, dynamics and sampler; returns
        (the first epoch still to train, seconds already spent), (1, 0.0) when nothing was saved."""
        state = self.store.load() if self.store is not None else None
        if state is None:
            return 1, 0.0
        if state["fingerprint"] != self.fingerprint:
            raise ValueError("the checkpoint was written by a run with other settings; delete it to start afresh")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        r = self.result
        r.best_state = {k: v.to(device) for k, v in state["best_state"].items()}
        r.best_epoch, r.best_score = state["best_epoch"], state["best_val_acc"]
        r.history, r.steps = list(state["history"]), state["steps"]
        r.samples_seen = state["samples_seen"]
        if self.dynamics is not None:
            self.dynamics.restore(state["dynamics"])
        if self.sampler is not None:
            self.sampler.load_state_dict(_torch_to_np(state["sampler"]))
        return state["epoch"] + 1, state["elapsed"]

    def save(self, epoch: int, elapsed: float) -> None:
        if self.store is None:
            return
        r = self.result
        self.store.save({
            "fingerprint": self.fingerprint, "epoch": epoch, "elapsed": elapsed,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            # "best_val_acc" is the stored key of checkpoints written so far; it holds best_score
            # (the train accuracy when there is no validation split)
            "best_state": r.best_state, "best_epoch": r.best_epoch, "best_val_acc": r.best_score,
            "history": r.history, "steps": r.steps, "samples_seen": r.samples_seen,
            "dynamics": None if self.dynamics is None else self.dynamics.upto(epoch),
            "sampler": None if self.sampler is None else _np_to_torch(self.sampler.state_dict()),
        })
