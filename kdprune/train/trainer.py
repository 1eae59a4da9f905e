"""The trainer shared by teacher, proxies and students.

Data lives on the training device as one uint8 tensor; a subset is an index tensor into it.
Each epoch walks a permutation of the subset drawn from (order_seed, epoch) and augments each
batch on the device with parameters drawn per example from (aug_seed, epoch) (see augment.py).
For KD the teacher runs under no_grad on the student's exact augmented batch. Metrics are
accumulated on the device and read once per epoch; the model is selected on validation accuracy.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from dataclasses import asdict
from typing import Callable, Optional, Protocol

import numpy as np
import torch
import torch.nn as nn

from kdprune.distill import LOSSES
from kdprune.train.augment import augment_batch, epoch_augmentation


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block (e.g. model construction) under a fixed torch seed without touching global RNG state."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


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
    loss: str = "ce"
    kd_weight: float = 0.0
    temperature: float = 1.0
    record_dynamics: bool = False
    eval_batch_size: int = 1024


class CheckpointStore(Protocol):
    """Where the trainer keeps its per-epoch state; the caller decides the storage (the core does no I/O)."""

    def load(self) -> Optional[dict]: ...

    def save(self, state: dict) -> None: ...


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_acc: float
    history: list[dict[str, float]] = field(default_factory=list)
    dynamics: Optional[np.ndarray] = None  # float16 [E, n_subset, C], rows in subset order
    steps: int = 0
    seconds: float = 0.0


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_logits(model: nn.Module, data: DeviceData, batch_size: int = 1024, features: bool = False) -> torch.Tensor:
    """Logits (or penultimate features) for every example of ``data``, in order, as float32."""
    model.eval()
    out = []
    fn = model.features if features else model
    for i in range(0, len(data), batch_size):
        with _autocast(data.x.device):
            out.append(fn(data.normalise(data.x[i : i + batch_size])).float())
    return torch.cat(out)


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, batch_size: int = 1024) -> dict[str, float]:
    logits = predict_logits(model, data, batch_size)
    loss = torch.nn.functional.cross_entropy(logits, data.y)
    acc = (logits.argmax(1) == data.y).float().mean()
    return {"acc": float(acc), "loss": float(loss)}


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def train(
    model: nn.Module,
    data: DeviceData,
    cfg: TrainConfig,
    subset: Optional[torch.Tensor] = None,
    val: Optional[DeviceData] = None,
    teacher: Optional[nn.Module] = None,
    on_epoch: Optional[Callable[[int, dict[str, float]], None]] = None,
    checkpoint: Optional[CheckpointStore] = None,
) -> TrainResult:
    """Train ``model`` on ``data[subset]`` (all of ``data`` when subset is None).

    ``subset`` holds row positions into ``data`` (int64, on any device). ``on_epoch(epoch,
    metrics)`` is called after each epoch (1-based) with train loss/acc, val acc/loss and lr.

    With ``checkpoint``, the full training state (model, optimizer, scheduler, best model so far,
    history, recorded dynamics, epoch) is saved after every epoch, and a run that finds a saved
    state continues after its epoch. Batch order and augmentation are pure functions of
    (seed, epoch), so no random stream needs restoring: a resumed run equals an uninterrupted one.
    """
    device = data.x.device
    loss_fn = LOSSES.get(cfg.loss)
    if cfg.loss != "ce" and teacher is None:
        raise ValueError(f"loss {cfg.loss!r} needs a teacher model")
    subset = torch.arange(len(data), device=device) if subset is None else subset.to(device)
    n = subset.numel()
    if n == 0:
        raise ValueError("cannot train on an empty subset")
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(total_steps, min(total_steps, int(round(cfg.warmup_epochs * steps_per_epoch))))
    )
    num_classes = model.head.out_features if hasattr(model, "head") else None
    dyn = None
    if cfg.record_dynamics:
        if num_classes is None:
            raise ValueError("record_dynamics needs a model with a linear `head`")
        dyn = torch.empty((cfg.epochs, n, num_classes), dtype=torch.float16, device=device)

    result = TrainResult(best_state={}, best_epoch=0, best_val_acc=-1.0)
    fingerprint = {**asdict(cfg), "n": n, "subset_sum": int(subset.sum()), "teacher": teacher is not None}
    start_epoch, elapsed = 1, 0.0
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        if state["fingerprint"] != fingerprint:
            raise ValueError("the checkpoint was written by a run with other settings; delete it to start afresh")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        result.best_state = {k: v.to(device) for k, v in state["best_state"].items()}
        result.best_epoch, result.best_val_acc = state["best_epoch"], state["best_val_acc"]
        result.history, result.steps = list(state["history"]), state["steps"]
        if dyn is not None:
            dyn[: state["epoch"]] = state["dynamics"].to(device)
        start_epoch, elapsed = state["epoch"] + 1, state["elapsed"]
    t0 = time.perf_counter() - elapsed
    order_gen = torch.Generator(device="cpu")
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        aug = epoch_augmentation(len(data), epoch, cfg.aug_seed, cfg.pad, cfg.flip, device)
        order_gen.manual_seed(cfg.order_seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=order_gen).to(device)  # positions within the subset
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for i in range(0, n, cfg.batch_size):
            local = perm[i : i + cfg.batch_size]
            rows = subset[local]
            xb = augment_batch(data.x[rows], aug.dy[rows], aug.dx[rows], None if aug.flip is None else aug.flip[rows], cfg.pad)
            xb = data.normalise(xb)
            if device.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = data.y[rows]
            with _autocast(device):
                t_logits = None
                if teacher is not None and cfg.loss != "ce":
                    with torch.no_grad():
                        t_logits = teacher(xb)
                logits = model(xb)
                loss = loss_fn(logits.float(), yb, None if t_logits is None else t_logits.float(), cfg.kd_weight, cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * yb.shape[0]
            correct += (logits.detach().argmax(1) == yb).sum()
            if dyn is not None:
                dyn[epoch - 1, local] = logits.detach().to(torch.float16)
            result.steps += 1
        metrics = {
            "train_loss": float(loss_sum) / n,
            "train_acc": float(correct) / n,
            "lr": sched.get_last_lr()[0],
        }
        if val is not None:
            v = evaluate(model, val, cfg.eval_batch_size)
            metrics.update(val_acc=v["acc"], val_loss=v["loss"])
            score = v["acc"]
        else:
            score = metrics["train_acc"]
        if score >= result.best_val_acc:
            result.best_val_acc = score
            result.best_epoch = epoch
            result.best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        metrics["seconds"] = time.perf_counter() - t0
        result.history.append(metrics)
        if checkpoint is not None:
            checkpoint.save({
                "fingerprint": fingerprint, "epoch": epoch, "elapsed": metrics["seconds"],
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "best_state": result.best_state, "best_epoch": result.best_epoch,
                "best_val_acc": result.best_val_acc, "history": result.history, "steps": result.steps,
                "dynamics": None if dyn is None else dyn[:epoch].cpu(),
            })
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    result.seconds = time.perf_counter() - t0
    if dyn is not None:
        result.dynamics = dyn.cpu().numpy()
    return result
