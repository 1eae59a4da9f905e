"""Data-parallel training (PyTorch DDP) of one model on several workers, and the merge of what each
worker recorded.

The run is the single-process run of trainer.py cut across ``world`` workers: every epoch walks the
permutation drawn from (order_seed, epoch), batch by batch as one process would, and worker ``rank``
trains on rows rank, rank + world, ... of each batch (``Epoch.batches(shard=...)``); augmentation
stays a pure function of (aug_seed, epoch, row). A split streamed from files (StreamData) is cut
the same way: each worker's decoding processes read only its rows of every batch, each image
cropped and flipped from (aug_seed, epoch, sample id) as in one process. The global batch, the number of steps and the LR
schedule are those of one process. DistributedDataParallel all-reduces (averages) the gradients;
each worker's loss is its rows' summed loss times world / (rows in the whole batch), so the average
is the whole batch's mean loss, the uneven last batch included.

BatchNorm: plain BatchNorm per worker (statistics over the worker's share of the batch), the way
the standard ImageNet data-parallel recipes train (torchvision's references; Goyal et al. 2017,
"Accurate, Large Minibatch SGD", normalise over each GPU's 32 images). torch's SyncBatchNorm runs
on CUDA only (its forward refuses CPU tensors in torch 2.15), so it could not be the same on the
CPU path this project tests; it would also add a collective per BN layer per step. DDP broadcasts
rank 0's buffers (running statistics) before each forward, and after each epoch they are broadcast
again, so every worker holds rank 0's model: that is the model validated, checkpointed and saved.
With N workers the BN batch is batch_size / N: a run with N workers is a different training from
a run with one, not only by float reduction order.

Dynamics: each worker records, per epoch, what the recorder of metrics.py records for the positions
it trained (a fresh one-epoch recorder per epoch); at the end of the epoch rank 0 gathers every
worker's (positions, rows) and :func:`merge_epoch` puts them in position order, checking that every
position was recorded exactly once, and stores the epoch in its recorder (in host memory, or
written into preallocated files: ``dynamics_dir``). Positions are rows of the training data, so position order is
id order (the train split's rows are its sample ids, sorted). The payload per position is whatever
the recorder holds (an array with a leading position axis, or a dict of them).

Checkpoints: rank 0 loads the saved state and broadcasts it, every worker restores it, and rank 0
saves after every epoch (trainer.py's TrainingState with a store that does so). Validation runs on
rank 0 and its metrics are broadcast, so every worker selects the same epoch.

The caller starts the process group (Ray Train's TorchTrainer: execution/ddp.py) and pins the device.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from kdprune.train.batches import BatchSource
from kdprune.train.metrics import Dynamics, EpochMeter
from kdprune.train.state import CheckpointStore, TrainingState, fingerprint
from kdprune.train.stream import StreamData
from kdprune.train.trainer import TrainStep, close_epoch, evaluate, progress
from kdprune.train.types import DeviceData, TrainConfig, TrainResult


class DynamicsMergeError(ValueError):
    """The workers' records of an epoch do not cover every position exactly once."""


def tree_map(fn: Callable, tree: Any) -> Any:
    """``fn`` on every array of a payload: an array, or a dict of arrays (statistics by name)."""
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    return fn(tree)


def _leaves(tree: Any) -> list:
    return [x for v in tree.values() for x in _leaves(v)] if isinstance(tree, dict) else [tree]


def check_shards(n: int, batch_size: int, world: int) -> None:
    """Every worker gets at least one row of every batch of an ``n``-example epoch, or ValueError."""
    last = n % batch_size
    if batch_size < world or 0 < last < world:
        small = batch_size if batch_size < world else last
        raise ValueError(
            f"teacher.workers: {world} workers split every batch of teacher.batch_size {batch_size} over {n} examples, "
            f"but a batch of {small} rows leaves {world - small} of them without a row; use a batch size whose "
            f"batches (the last one is {last or batch_size} rows) have at least {world} rows, or fewer workers")


def shard_sizes(batch: int, world: int) -> list[int]:
    """Rows of a ``batch``-row batch each rank trains on (rows rank, rank + world, ...)."""
    return [len(range(r, batch, world)) for r in range(world)]


def merge_epoch(parts: list[tuple[np.ndarray, Any]], n: int, epoch: int) -> Any:
    """One epoch's records from every worker, ``parts`` = [(positions int64 [k], payload with a
    leading axis of k rows), ...], as one payload of ``n`` rows in position order. Every position
    in 0..n-1 must be recorded exactly once across the workers (DynamicsMergeError otherwise)."""
    if not parts:
        raise DynamicsMergeError(f"epoch {epoch}: no worker recorded anything")
    positions = [np.asarray(p, dtype=np.int64).reshape(-1) for p, _ in parts]
    for r, (pos, (_, payload)) in enumerate(zip(positions, parts)):
        rows = {int(a.shape[0]) for a in _leaves(payload)}
        if rows != {pos.size}:
            raise DynamicsMergeError(f"epoch {epoch}: worker {r} sent {pos.size} positions but {sorted(rows)} rows")
    every = np.concatenate(positions)
    outside = every[(every < 0) | (every >= n)]
    if outside.size:
        raise DynamicsMergeError(f"epoch {epoch}: positions outside 0..{n - 1} recorded: {outside[:5].tolist()}")
    counts = np.bincount(every, minlength=n)
    missing, twice = np.flatnonzero(counts == 0), np.flatnonzero(counts > 1)
    if missing.size or twice.size:
        raise DynamicsMergeError(
            f"epoch {epoch}: every example must be recorded exactly once per epoch; {missing.size} of {n} positions "
            f"were recorded by no worker (first: {missing[:5].tolist()}), {twice.size} more than once "
            f"(first: {twice[:5].tolist()})")
    out = tree_map(lambda a: np.empty((n, *a.shape[1:]), dtype=a.dtype), parts[0][1])
    for pos, (_, payload) in zip(positions, parts):
        _assign(out, pos, payload)
    return out


def _assign(out: Any, pos: np.ndarray, payload: Any) -> None:
    if isinstance(out, dict):
        if set(out) != set(payload):
            raise DynamicsMergeError(f"workers recorded different statistics: {sorted(out)} vs {sorted(payload)}")
        for k in out:
            _assign(out[k], pos, payload[k])
    else:
        out[pos] = payload


class RankStore:
    """A checkpoint store for one worker: rank 0 reads ``store`` and broadcasts what it read to every
    worker; only rank 0 writes. ``store`` None: nothing saved, nothing resumed."""

    def __init__(self, store: Optional[CheckpointStore], rank: int):
        self.store, self.rank = store, rank

    def load(self) -> Optional[dict]:
        box = [self.store.load() if self.rank == 0 and self.store is not None else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def save(self, state: dict) -> None:
        if self.rank == 0 and self.store is not None:
            self.store.save(state)


def train_distributed(model: nn.Module, data: "DeviceData | StreamData", cfg: TrainConfig, rank: int, world: int,
                      val: Optional[DeviceData] = None, on_epoch: Optional[Callable[[int, dict], None]] = None,
                      checkpoint: Optional[CheckpointStore] = None,
                      dynamics_dir=None) -> tuple[TrainResult, list[list[int]]]:
    """Train ``model`` on all of ``data`` as worker ``rank`` of ``world`` (the process group is up,
    the model identical on every worker, ``data`` whole on every worker's device, or every worker's
    index of a split streamed from files, of which it reads its shard). Cross-entropy
    from scratch, the teacher's training: no KD, sampler, per-example weights or step budget.

    Returns the TrainResult (on rank 0 with the merged dynamics when ``cfg.record_dynamics``;
    elsewhere without dynamics) and, on rank 0, the rows each worker recorded per epoch (from the
    first epoch this call trained). ``on_epoch`` runs on every worker after the epoch's checkpoint.
    ``dynamics_dir``: rank 0 writes each merged epoch into preallocated files there (metrics.FileColumns),
    not host memory.
    """
    if cfg.max_steps is not None or cfg.stop_after is not None:
        raise ValueError("data-parallel training is the teacher's: no max_steps or stop_after")
    check_shards(len(data), cfg.batch_size, world)
    device = data.device
    batches = BatchSource(data, cfg)
    if batches.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.to(device)
    # DDP broadcasts rank 0's parameters and buffers now, and its buffers before every forward
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    step = TrainStep(ddp, cfg, device, batches.channels_last)
    # rank 0 stores the merged epochs (the other ranks only their epoch's share)
    dynamics = Dynamics.for_model(model, cfg.record_dynamics, cfg.epochs, batches.n, device, dynamics_dir) \
        if cfg.record_dynamics and rank == 0 else None
    result = TrainResult(best_state={}, best_epoch=0, best_score=-1.0,
                         selected_on="train_acc" if val is None else "val_acc")
    state = TrainingState(RankStore(checkpoint, rank), {**fingerprint(cfg, batches, False), "world": world},
                          model, step.optimizer, result, dynamics, None)
    start_epoch, elapsed = state.restore(device)
    t0 = time.perf_counter() - elapsed
    shares: list[list[int]] = []
    for epoch in range(start_epoch, cfg.epochs + 1):
        ddp.train()
        ep = batches.epoch(epoch)
        meter = EpochMeter(ep.size, device, keep_losses=False)
        recorder = Dynamics.for_model(model, cfg.record_dynamics, 1, batches.n, device) if cfg.record_dynamics else None
        mine = []
        for batch in ep.batches(shard=(rank, world)):
            whole = min(cfg.batch_size, ep.size - batch.start)
            scale = world * len(batch.y) / whole  # DDP averages the workers' losses: the batch mean
            batch = dataclasses.replace(batch, weights=torch.full((len(batch.y),), scale, device=device))
            per_example, logits = step(batch, progress(cfg, epoch, batch.index, ep.num_batches, result.steps))
            meter.add(batch, per_example, logits)
            if recorder is not None:
                recorder.record(1, batch.local, logits, batch.y)
                mine.append(batch.local)
            result.steps += 1
        seen = torch.tensor(meter.seen, device=device)
        for t in (meter.loss_sum, meter.correct, seen):
            dist.all_reduce(t)
        meter.seen = int(seen)
        for b in model.buffers():  # every worker holds rank 0's running statistics
            dist.broadcast(b, src=0)
        if recorder is not None:
            positions = torch.cat(mine)
            pos = positions.cpu().numpy()
            part = (pos, recorder.epoch_rows(pos))
            parts = [None] * world if rank == 0 else None
            dist.gather_object(part, parts, dst=0)
            if rank == 0:
                dynamics.write_epoch(epoch, merge_epoch(parts, batches.n, epoch))
                shares.append([len(p) for p, _ in parts])
        result.samples_seen += meter.seen
        metrics = {**meter.metrics(), "lr": step.lr, "samples_seen": float(result.samples_seen)}
        if val is not None:
            box = [evaluate(model, val, cfg.eval_batch_size) if rank == 0 else None]
            dist.broadcast_object_list(box, src=0)
            metrics.update(val_acc=box[0]["acc"], val_loss=box[0]["loss"])
        close_epoch(result, model, state, epoch, metrics, t0, on_epoch)
    result.seconds = time.perf_counter() - t0
    if dynamics is not None:
        result.dynamics = dynamics.result()
    return result, shares
