"""The batch source: what each training step sees.

An epoch trains on positions of the subset (rows of the device-resident data): all of them, or
those a per-epoch sampler picks (RS2, InfoBatch), with loss weights from the sampler and from
per-example coreset weights. The positions are walked in a permutation drawn from
(order_seed, epoch); each batch gathers its rows of the uint8 data, shifts and flips them on the
device with the epoch's per-example parameters (augment.py), normalises them and, when asked,
lays them out channels-last. A split streamed from files (kdprune/train/stream.py) is walked in the
same order; its workers read, crop and flip each image from (aug_seed, epoch, sample id). Everything is a pure function of (seeds, epoch, sampler state):
nothing draws from torch's global RNG, so a resumed run sees the batches of an uninterrupted one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from kdprune.train.augment import augment_batch, epoch_augmentation
from kdprune.train.stream import StreamData
from kdprune.train.types import DeviceData, TrainConfig


@dataclass
class Batch:
    index: int  # 0-based within the epoch
    start: int  # where the batch starts in the epoch's order
    local: torch.Tensor  # int64 [B] positions into the subset
    rows: torch.Tensor  # int64 [B] rows of the data
    x: torch.Tensor  # float [B, C, H, W], augmented and normalised
    y: torch.Tensor  # int64 [B]
    weights: Optional[torch.Tensor]  # float [B] loss multipliers, None when all 1


class Epoch:
    """One epoch's positions, their loss weights, their order and augmentation."""

    def __init__(self, source: "BatchSource", epoch: int, positions: torch.Tensor, weights: Optional[torch.Tensor]):
        cfg = source.cfg
        self.source, self.epoch, self.positions, self.weights = source, epoch, positions, weights
        self.size = positions.numel()
        self.num_batches = math.ceil(self.size / cfg.batch_size)
        self.aug = None if source.streamed else epoch_augmentation(len(source.data), epoch, cfg.aug_seed, cfg.pad,
                                                                    cfg.flip, positions.device)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(cfg.order_seed * 1_000_003 + epoch)
        self.order = torch.randperm(self.size, generator=gen).to(positions.device)  # indices into positions

    def batches(self, limit: Optional[int] = None, shard: Optional[tuple[int, int]] = None) -> Iterator[Batch]:
        """The epoch's batches in order, at most ``limit`` of them (the rest of a step budget).

        ``shard`` (rank, world): this data-parallel worker's share of every batch, its rows
        rank, rank + world, ... of the batch (kdprune/train/distributed.py); the batches, their
        order and augmentation are those of one process, so the world's batch is the whole batch."""
        data, pad, bs = self.source.data, self.source.cfg.pad, self.source.cfg.batch_size
        aug = self.aug
        streamed = None
        if self.source.streamed:  # the workers read the epoch's rows in order, a batch at a time
            cfg = self.source.cfg
            streamed = data.train_batches(self.source.subset[self.positions[self.order]], self.epoch, cfg.aug_seed,
                                          cfg.flip, bs, limit, shard)
        for b, i in enumerate(range(0, self.size, bs)):
            if limit is not None and b >= limit:
                return
            idx = self.order[i : i + bs]
            if shard is not None:
                idx = idx[shard[0] :: shard[1]]
            local = self.positions[idx]
            rows = self.source.subset[local]
            if streamed is not None:
                x = next(streamed)
            else:
                x = augment_batch(data.x[rows], aug.dy[rows], aug.dx[rows], None if aug.flip is None else aug.flip[rows],
                                  pad)
            x = data.normalise(x)
            if self.source.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(b, i, local, rows, x, data.y[rows], None if self.weights is None else self.weights[idx])

    def report(self, seen: int, losses: Optional[torch.Tensor]) -> None:
        """Tell the sampler the unweighted losses of the first ``seen`` examples of the order
        (``losses`` in order, from EpochMeter); a no-op without a sampler."""
        if self.source.sampler is not None:
            trained = self.positions[self.order[:seen]]
            self.source.sampler.update(self.epoch, trained.cpu().numpy(), losses[:seen].cpu().numpy())


class BatchSource:
    """Training batches from ``data[subset]`` (see ``train`` for the arguments)."""

    def __init__(self, data: "DeviceData | StreamData", cfg: "TrainConfig", subset: Optional[torch.Tensor] = None,
                 sampler=None, sample_weights: Optional[torch.Tensor] = None):
        device = data.device
        self.streamed = isinstance(data, StreamData)
        if self.streamed and cfg.pad:
            raise ValueError(f"pad {cfg.pad}: translation is the in-memory augmentation; a streamed dataset is "
                             "augmented by random-resized crops (data.random_crop): set pad: 0")
        subset = torch.arange(len(data), device=device) if subset is None else subset.to(device)
        n = subset.numel()
        if n == 0:
            raise ValueError("cannot train on an empty subset")
        if sample_weights is not None:
            sample_weights = sample_weights.to(device=device, dtype=torch.float32).reshape(-1)
            if (sample_weights.numel() != n or not bool(torch.isfinite(sample_weights).all())
                    or bool((sample_weights < 0).any())):
                raise ValueError(f"sample_weights must be {n} finite non-negative numbers (one per subset example), "
                                 f"got {sample_weights.numel()}")
        if sampler is not None and (sampler.n != n or sampler.epochs != cfg.epochs):
            raise ValueError(f"sampler built for n={sampler.n}, epochs={sampler.epochs}; training has n={n}, "
                             f"epochs={cfg.epochs}")
        self.data, self.cfg, self.subset, self.n = data, cfg, subset, n
        self.sampler, self.sample_weights = sampler, sample_weights
        self.channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
        self._everything = torch.arange(n, device=device)

    def epoch(self, epoch: int) -> Epoch:
        """The 1-based ``epoch``: the sampler's positions and weights (every position, weight 1,
        without one), times the per-example weights."""
        if self.sampler is None:
            positions, weights = self._everything, None
        else:
            positions = torch.from_numpy(self.sampler.epoch_positions(epoch)).to(self.subset.device)
            w = self.sampler.loss_weights(epoch)
            weights = None if w is None else torch.from_numpy(w).to(self.subset.device)
        if self.sample_weights is not None:  # aligned with positions, as the sampler's weights
            own = self.sample_weights[positions]
            weights = own if weights is None else weights * own
        return Epoch(self, epoch, positions, weights)
