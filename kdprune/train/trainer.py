"""The trainer shared by teacher, proxies and students: the training step (forward, loss -- KD from a live
teacher or its cached logits --, per-example weights, backward and an SGD step at the learning rate of the
run's progress) and the loop that wires the batch source (batches.py), the step, the checkpoint state
(state.py) and the records (metrics.py); its configuration and result are in types.py.

Data lives on the training device as one uint8 tensor, or streams from files (StreamData,
kdprune/train/stream.py); a subset is an index tensor into its rows. Each epoch walks a permutation of the subset drawn from (order_seed, epoch) and augments each
batch on the device with parameters drawn per example from (aug_seed, epoch) (see augment.py).
For KD the teacher runs under no_grad on the student's exact augmented batch. Metrics are
accumulated on the device and read once per epoch; the model is selected on validation accuracy,
or on train accuracy when there is no validation split (``TrainResult.selected_on`` says which).
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Callable, Optional

import torch
import torch.nn as nn

from kdprune.distill import LOSSES, KDSetting
from kdprune.train.batches import Batch, BatchSource
from kdprune.train.metrics import Dynamics, EpochMeter
from kdprune.train.state import CheckpointStore, TrainingState, fingerprint
from kdprune.train.stream import StreamData
from kdprune.train.types import DeviceData, TrainConfig, TrainResult

__all__ = ["CheckpointStore", "TrainStep", "close_epoch", "evaluate", "lr_factor", "predict_logits", "progress",
           "seeded", "train"]


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
    the optimizer; each call trains on one batch under the student's KD setting ``kd`` and returns its detached
    per-example losses (unweighted) and logits. The loss is the registered function of the setting's loss,
    called with the setting's weight, temperature and options (None: no KD, the registered baseline loss at
    weight 0, temperature 1)."""

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
        spec = LOSSES.of(kd)
        self.loss = spec.fn
        self.weight, self.temperature, self.options = ((0.0, 1.0, {}) if kd is None else
                                                       (kd.weight, kd.temperature, dict(kd.options)))
        self.warmup = min(1.0, cfg.warmup_epochs / cfg.epochs)
        self.teacher_logits = teacher_logits if spec.teacher else None
        # torch.compile wraps the same module: parameters, state_dict and checkpoints are shared with
        # ``model``; evaluation runs the plain module (no recompilation for the eval batch size)
        self.forward = torch.compile(model) if cfg.compile else model
        teacher = teacher if spec.teacher else None
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
            per_example = self.loss(logits.float(), batch.y, None if t_logits is None else t_logits.float(),
                                    self.weight, self.temperature, **self.options)
            loss = (per_example * batch.weights).mean() if batch.weights is not None else per_example.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return per_example.detach(), logits.detach()


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


@torch.no_grad()
def predict_logits(model: nn.Module, data: "DeviceData | StreamData", batch_size: int = 256,
                   features: bool = False) -> torch.Tensor:
    """Logits (or penultimate features) for every example of ``data``, in order, as float32 (a
    streamed split: its evaluation transform, a batch at a time)."""
    model.eval()
    out = []
    fn = model.features if features else model
    if isinstance(data, StreamData):
        for xb in data.eval_batches(batch_size):
            with autocast(data.device):
                out.append(fn(data.normalise(xb)).float())
        return torch.cat(out)
    for i in range(0, len(data), batch_size):
        with autocast(data.x.device):
            out.append(fn(data.normalise(data.x[i : i + batch_size])).float())
    return torch.cat(out)


@torch.no_grad()
def evaluate(model: nn.Module, data: "DeviceData | StreamData", batch_size: int = 256) -> dict[str, float]:
    logits = predict_logits(model, data, batch_size)
    loss = torch.nn.functional.cross_entropy(logits, data.y)
    acc = (logits.argmax(1) == data.y).float().mean()
    return {"acc": float(acc), "loss": float(loss)}


def close_epoch(result: TrainResult, model: nn.Module, state: TrainingState, epoch: int, metrics: dict[str, float],
                t0: float, on_epoch: Optional[Callable[[int, dict[str, float]], None]]) -> None:
    """The end of an epoch, shared by one process (``train``) and data-parallel workers
    (``distributed.train_distributed``): keep the weights when the selection metric is at least the best
    so far (the later epoch on a tie), record the epoch's metrics with the seconds since ``t0``, save the
    checkpoint state, then call ``on_epoch``."""
    if metrics[result.selected_on] >= result.best_score:
        result.best_score, result.best_epoch = metrics[result.selected_on], epoch
        result.best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    metrics["seconds"] = time.perf_counter() - t0
    result.history.append(metrics)
    state.save(epoch, metrics["seconds"])
    if on_epoch is not None:
        on_epoch(epoch, metrics)


def train(
    model: nn.Module,
    data: "DeviceData | StreamData",
    cfg: TrainConfig,
    subset: Optional[torch.Tensor] = None,
    val: Optional[DeviceData] = None,
    teacher: Optional[nn.Module] = None,
    on_epoch: Optional[Callable[[int, dict[str, float]], None]] = None,
    checkpoint: Optional[CheckpointStore] = None,
    sampler=None,
    teacher_logits: Optional[torch.Tensor] = None,
    sample_weights: Optional[torch.Tensor] = None,
    kd: Optional[KDSetting] = None,
    dynamics_dir=None,
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
    a schedule sized for ``cfg.epochs`` (a proxy read early in a full-length run). ``on_epoch(epoch,
    metrics)`` is called after each epoch (1-based) with train loss/acc, val acc/loss, lr and samples seen.

    ``kd`` is the student's KD setting (its loss, weight, temperature and the loss's options; None: no KD, the
    registered baseline loss). For KD, ``teacher`` runs under no_grad on each augmented batch. With augmentation off
    (``pad == 0`` and no flip) the teacher's input never changes, so ``teacher_logits`` (float
    [len(data), C], the teacher's logits for every row of ``data``) may be passed instead: the
    cached-logits mode, which saves the teacher forward on every step.

    ``dynamics_dir``: the recorded dynamics go, epoch by epoch, to preallocated files there (kept with
    the checkpoint, outside every output: metrics.FileColumns), not to host memory; the result's
    dynamics are then read-only memory maps of them.

    With ``checkpoint``, the full training state (model, optimizer, best model so far, history,
    recorded dynamics, sampler state, epoch) is saved after every epoch, and a run that finds a
    saved state continues after its epoch. Batch order and augmentation are pure functions of
    (seed, epoch), so no random stream needs restoring: a resumed run equals an uninterrupted one.

    The result keeps the weights of the epoch best on ``result.selected_on`` (``val_acc`` with
    ``val``, else ``train_acc``; the later epoch on a tie) and that metric's value as ``best_score``.
    """
    teacher, teacher_logits = kd_inputs(cfg, kd, data, teacher, teacher_logits)
    batches = BatchSource(data, cfg, subset, sampler, sample_weights)
    device = data.device
    step = TrainStep(model, cfg, device, batches.channels_last, teacher, teacher_logits, kd)
    last_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, cfg.stop_after)
    dynamics = Dynamics.for_model(model, cfg.record_dynamics, last_epoch, batches.n, device,
                                  dynamics_dir) if cfg.record_dynamics else None
    result = TrainResult(best_state={}, best_epoch=0, best_score=-1.0,
                         selected_on="train_acc" if val is None else "val_acc")
    state = TrainingState(checkpoint, fingerprint(cfg, batches, teacher is not None or teacher_logits is not None, kd),
                          model, step.optimizer, result, dynamics, sampler)
    start_epoch, elapsed = state.restore(device)
    t0 = time.perf_counter() - elapsed
    for epoch in range(start_epoch, last_epoch + 1):
        steps_left = None if cfg.max_steps is None else cfg.max_steps - result.steps
        if steps_left is not None and steps_left <= 0:
            break
        model.train()
        ep = batches.epoch(epoch)
        meter = EpochMeter(ep.size, device, keep_losses=sampler is not None)
        for batch in ep.batches(limit=steps_left):
            per_example, logits = step(batch, progress(cfg, epoch, batch.index, ep.num_batches, result.steps))
            meter.add(batch, per_example, logits)
            if dynamics is not None:
                dynamics.record(epoch, batch.local, logits, batch.y)
            result.steps += 1
        result.samples_seen += meter.seen
        if dynamics is not None:
            dynamics.end_epoch(epoch)
        ep.report(meter.seen, meter.losses)
        metrics = {**meter.metrics(), "lr": step.lr, "samples_seen": float(result.samples_seen)}
        if val is not None:
            v = evaluate(model, val, cfg.eval_batch_size)
            metrics.update(val_acc=v["acc"], val_loss=v["loss"])
        close_epoch(result, model, state, epoch, metrics, t0, on_epoch)
    result.seconds = time.perf_counter() - t0
    if dynamics is not None:
        result.dynamics = dynamics.result()
    return result
