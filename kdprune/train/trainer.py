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
import threading
import time
from dataclasses import dataclass, field
from dataclasses import asdict
from typing import Callable, Optional, Protocol

import numpy as np
import torch
import torch.nn as nn

from kdprune.distill import LOSSES
from kdprune.train.augment import augment_batch, epoch_augmentation


_SEEDED = threading.RLock()


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block (e.g. model construction) under a fixed torch seed without touching global RNG state.

    torch's RNG is one per process: blocks in concurrent threads (tasks of the local runner) take
    turns, or one thread's draws would land in another's model."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with _SEEDED, torch.random.fork_rng(devices=devices):
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
    eval_batch_size: int = 256
    max_steps: Optional[int] = None  # equal-steps budget: stop after this many optimizer steps
    stop_after: Optional[int] = None  # train only the first epochs of the `epochs`-long schedule (proxies read early)
    compile: bool = False  # torch.compile the training forward passes (student and KD teacher)
    channels_last: Optional[bool] = None  # NHWC activations (None: on CUDA only); on CPU 1.4-1.8x faster convs


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
    samples_seen: int = 0
    seconds: float = 0.0


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_logits(model: nn.Module, data: DeviceData, batch_size: int = 256, features: bool = False) -> torch.Tensor:
    """Logits (or penultimate features) for every example of ``data``, in order, as float32."""
    model.eval()
    out = []
    fn = model.features if features else model
    for i in range(0, len(data), batch_size):
        with _autocast(data.x.device):
            out.append(fn(data.normalise(data.x[i : i + batch_size])).float())
    return torch.cat(out)


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, batch_size: int = 256) -> dict[str, float]:
    logits = predict_logits(model, data, batch_size)
    loss = torch.nn.functional.cross_entropy(logits, data.y)
    acc = (logits.argmax(1) == data.y).float().mean()
    return {"acc": float(acc), "loss": float(loss)}


def lr_factor(progress: float, warmup: float) -> float:
    """LR multiplier at ``progress`` in [0, 1] of the run: linear warmup over the first ``warmup``
    share, then cosine decay to 0. A pure function of progress, so a resumed run needs no scheduler state."""
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-12, 1.0 - warmup))))


def _np_to_torch(state: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in state.items()}


def _torch_to_np(state: dict) -> dict:
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def train(
    model: nn.Module,
    data: DeviceData,
    cfg: TrainConfig,
    subset: Optional[torch.Tensor] = None,
    val: Optional[DeviceData] = None,
    teacher: Optional[nn.Module] = None,
    on_epoch: Optional[Callable[[int, dict[str, float]], None]] = None,
    checkpoint: Optional[CheckpointStore] = None,
    sampler=None,
    teacher_logits: Optional[torch.Tensor] = None,
    sample_weights: Optional[torch.Tensor] = None,
) -> TrainResult:
    """Train ``model`` on ``data[subset]`` (all of ``data`` when subset is None).

    ``subset`` holds row positions into ``data`` (int64, on any device). ``sampler`` (see
    kdprune.selection.samplers) picks, each epoch, which positions of the subset to train on and
    their loss weights (RS2, InfoBatch); without one every epoch uses the whole subset.
    ``sample_weights`` (float [len(subset)], aligned with ``subset``) multiply each example's loss
    in every epoch (per-element weights of a weighted coreset such as CRAIG's), on top of any
    sampler weights; the batch loss is the mean of the weighted per-example losses.
    ``cfg.max_steps`` stops after that many optimizer steps (the equal-steps budget); the LR
    schedule follows the share of the run done. ``cfg.stop_after`` stops after that many epochs of
    a schedule sized for ``cfg.epochs`` (a proxy read early in a full-length run). ``on_epoch(epoch, metrics)`` is called after each
    epoch (1-based) with train loss/acc, val acc/loss, lr and samples seen.

    For KD, ``teacher`` runs under no_grad on each augmented batch. With augmentation off
    (``pad == 0`` and no flip) the teacher's input never changes, so ``teacher_logits`` (float
    [len(data), C], the teacher's logits for every row of ``data``) may be passed instead: the
    cached-logits mode, which saves the teacher forward on every step.

    With ``checkpoint``, the full training state (model, optimizer, best model so far, history,
    recorded dynamics, sampler state, epoch) is saved after every epoch, and a run that finds a
    saved state continues after its epoch. Batch order and augmentation are pure functions of
    (seed, epoch), so no random stream needs restoring: a resumed run equals an uninterrupted one.
    """
    device = data.x.device
    loss_fn = LOSSES.get(cfg.loss)
    if cfg.loss != "ce" and teacher is None and teacher_logits is None:
        raise ValueError(f"loss {cfg.loss!r} needs a teacher model or its cached logits")
    if teacher_logits is not None:
        if cfg.pad or cfg.flip:
            raise ValueError("cached teacher logits need augmentation off (pad 0, flip false): with augmentation "
                             "the teacher must see each augmented batch; pass the teacher model instead")
        if teacher_logits.shape[0] != len(data):
            raise ValueError(f"teacher_logits has {teacher_logits.shape[0]} rows, the data {len(data)}")
        teacher_logits = teacher_logits.to(device=device, dtype=torch.float32)
        teacher = None
    subset = torch.arange(len(data), device=device) if subset is None else subset.to(device)
    n = subset.numel()
    if n == 0:
        raise ValueError("cannot train on an empty subset")
    if sample_weights is not None:
        sample_weights = sample_weights.to(device=device, dtype=torch.float32).reshape(-1)
        if sample_weights.numel() != n or not bool(torch.isfinite(sample_weights).all()) or bool((sample_weights < 0).any()):
            raise ValueError(f"sample_weights must be {n} finite non-negative numbers (one per subset example), "
                             f"got {sample_weights.numel()}")
    if sampler is not None and (sampler.n != n or sampler.epochs != cfg.epochs):
        raise ValueError(f"sampler built for n={sampler.n}, epochs={sampler.epochs}; training has n={n}, "
                         f"epochs={cfg.epochs}")
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )
    warmup = min(1.0, cfg.warmup_epochs / cfg.epochs)
    num_classes = model.head.out_features if hasattr(model, "head") else None
    dyn = None
    if cfg.record_dynamics:
        if num_classes is None:
            raise ValueError("record_dynamics needs a model with a linear `head`")
        dyn = torch.full((cfg.epochs if cfg.stop_after is None else min(cfg.epochs, cfg.stop_after), n, num_classes),
                         float("nan"), dtype=torch.float16, device=device)

    result = TrainResult(best_state={}, best_epoch=0, best_val_acc=-1.0)
    fingerprint = {**asdict(cfg), "n": n, "subset_sum": int(subset.sum()),
                   "teacher": teacher is not None or teacher_logits is not None,
                   "sampler": None if sampler is None else type(sampler).__name__}
    if sample_weights is not None:
        fingerprint["sample_weights_sum"] = float(sample_weights.double().sum())
    start_epoch, elapsed = 1, 0.0
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        if state["fingerprint"] != fingerprint:
            raise ValueError("the checkpoint was written by a run with other settings; delete it to start afresh")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        result.best_state = {k: v.to(device) for k, v in state["best_state"].items()}
        result.best_epoch, result.best_val_acc = state["best_epoch"], state["best_val_acc"]
        result.history, result.steps = list(state["history"]), state["steps"]
        result.samples_seen = state["samples_seen"]
        if dyn is not None:
            dyn[: state["epoch"]] = state["dynamics"].to(device)
        if sampler is not None:
            sampler.load_state_dict(_torch_to_np(state["sampler"]))
        start_epoch, elapsed = state["epoch"] + 1, state["elapsed"]
    # torch.compile wraps the same module: parameters, state_dict and checkpoints are shared with
    # ``model``; evaluation runs the plain module (no recompilation for the eval batch size)
    fwd = torch.compile(model) if cfg.compile else model
    t_fwd = torch.compile(teacher) if cfg.compile and teacher is not None else teacher
    t0 = time.perf_counter() - elapsed
    order_gen = torch.Generator(device="cpu")
    all_local = torch.arange(n, device=device)
    last_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, cfg.stop_after)
    for epoch in range(start_epoch, last_epoch + 1):
        if cfg.max_steps is not None and result.steps >= cfg.max_steps:
            break
        model.train()
        if sampler is None:
            local_pool, weights = all_local, None
        else:
            local_pool = torch.from_numpy(sampler.epoch_positions(epoch)).to(device)
            w = sampler.loss_weights(epoch)
            weights = None if w is None else torch.from_numpy(w).to(device)
        if sample_weights is not None:  # aligned with local_pool, as the sampler's weights
            weights = sample_weights[local_pool] if weights is None else weights * sample_weights[local_pool]
        m = local_pool.numel()
        aug = epoch_augmentation(len(data), epoch, cfg.aug_seed, cfg.pad, cfg.flip, device)
        order_gen.manual_seed(cfg.order_seed * 1_000_003 + epoch)
        order = torch.randperm(m, generator=order_gen).to(device)  # indices into local_pool
        steps_this_epoch = math.ceil(m / cfg.batch_size)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen_losses = torch.empty(m, device=device) if sampler is not None else None
        seen = 0
        for b, i in enumerate(range(0, m, cfg.batch_size)):
            if cfg.max_steps is not None and result.steps >= cfg.max_steps:
                break
            if cfg.max_steps is not None:
                progress = (result.steps + 1) / cfg.max_steps
            else:
                progress = (epoch - 1 + (b + 1) / steps_this_epoch) / cfg.epochs
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(progress, warmup)
            idx = order[i : i + cfg.batch_size]
            local = local_pool[idx]
            rows = subset[local]
            xb = augment_batch(data.x[rows], aug.dy[rows], aug.dx[rows], None if aug.flip is None else aug.flip[rows], cfg.pad)
            xb = data.normalise(xb)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = data.y[rows]
            with _autocast(device):
                t_logits = None
                if teacher_logits is not None and cfg.loss != "ce":
                    t_logits = teacher_logits[rows]
                elif teacher is not None and cfg.loss != "ce":
                    with torch.no_grad():
                        t_logits = t_fwd(xb)
                logits = fwd(xb)
                per_example = loss_fn(logits.float(), yb, None if t_logits is None else t_logits.float(),
                                      cfg.kd_weight, cfg.temperature)
                loss = (per_example * weights[idx]).mean() if weights is not None else per_example.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += per_example.detach().sum()
            correct += (logits.detach().argmax(1) == yb).sum()
            if seen_losses is not None:
                seen_losses[i : i + len(idx)] = per_example.detach()
            if dyn is not None:
                dyn[epoch - 1, local] = logits.detach().to(torch.float16)
            result.steps += 1
            seen += len(idx)
        result.samples_seen += seen
        if sampler is not None:
            sampler.update(epoch, local_pool[order[:seen]].cpu().numpy(), seen_losses[:seen].cpu().numpy())
        metrics = {
            "train_loss": float(loss_sum) / max(1, seen),
            "train_acc": float(correct) / max(1, seen),
            "lr": opt.param_groups[0]["lr"],
            "samples_seen": float(result.samples_seen),
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
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "best_state": result.best_state, "best_epoch": result.best_epoch,
                "best_val_acc": result.best_val_acc, "history": result.history, "steps": result.steps,
                "samples_seen": result.samples_seen,
                "dynamics": None if dyn is None else dyn[:epoch].cpu(),
                "sampler": None if sampler is None else _np_to_torch(sampler.state_dict()),
            })
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    result.seconds = time.perf_counter() - t0
    if dyn is not None:
        result.dynamics = dyn.cpu().numpy()
    return result
