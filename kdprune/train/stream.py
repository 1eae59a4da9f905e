"""A split streamed from files, the trainer's other data source beside the device-resident DeviceData.

``StreamData`` has DeviceData's face where the trainer needs it (``len``, ``y`` and the normalisation
on the device, ``device``) and, instead of a pixel tensor, batches of uint8 images read, decoded and
transformed by DataLoader workers (kdprune/data/stream.py). The trainer asks for its rows in the
epoch's order (the permutation drawn from (order_seed, epoch), as for in-memory data); a batch
sampler hands each worker whole batches of keys (row, seed, epoch, flip), so every image's
transform is a pure function of its key and the batches come back in order, whatever the number
of workers A data-parallel worker (kdprune/train/distributed.py) asks for its shard of every batch:
its decoding workers read only its share of the files. One DataLoader with persistent workers serves training and evaluation of the split.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional

import numpy as np
import torch

from kdprune.data.stream import Key, StreamDataset


class _Plan(torch.utils.data.Sampler):
    """A batch sampler that yields the batches it was last given (set before each pass)."""

    def __init__(self):
        self.batches: list[list[Key]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # decoding is per image; the training process keeps the cores' threads


class StreamData:
    """One split read from files: ``dataset`` (the files and transforms), its labels, the training
    split's per-channel mean and std, the device batches go to, and ``workers`` decoding processes
    (0: decode in the training process)."""

    def __init__(self, dataset: StreamDataset, y: np.ndarray, mean, std, device: torch.device, workers: int = 0):
        if len(dataset) != len(y):
            raise ValueError(f"{len(dataset)} files but {len(y)} labels")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        device = torch.device(device)
        self.dataset, self.workers, self._device = dataset, int(workers), device
        self.y = torch.from_numpy(np.ascontiguousarray(y)).to(device)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device)
        self._plan = _Plan()
        self._loader: Optional[torch.utils.data.DataLoader] = None

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def random_crop(self) -> bool:
        """True when training batches are randomly cropped (cached teacher logits cannot be used then)."""
        return self.dataset.spec.random_crop

    def __len__(self) -> int:
        return self.y.shape[0]

    def normalise(self, xb: torch.Tensor) -> torch.Tensor:
        return (xb.float().div_(255.0) - self.mean[None, :, None, None]) / self.std[None, :, None, None]

    def loader(self) -> torch.utils.data.DataLoader:
        if self._loader is None:
            w = self.workers
            self._loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=self._plan, num_workers=w, persistent_workers=w > 0,
                pin_memory=self._device.type == "cuda", worker_init_fn=_one_thread if w > 0 else None,
                prefetch_factor=4 if w > 0 else None,
                multiprocessing_context="fork" if w > 0 and os.name == "posix" else None)
        return self._loader

    def _run(self, batches: list[list[Key]]) -> Iterator[torch.Tensor]:
        self._plan.batches = batches
        for x, rows in self.loader():
            yield x.to(self._device, non_blocking=True)

    def train_batches(self, rows: torch.Tensor, epoch: int, seed: int, flip: bool, batch_size: int,
                      limit: Optional[int] = None, shard: Optional[tuple[int, int]] = None) -> Iterator[torch.Tensor]:
        """uint8 [B, C, S, S] training batches of ``rows`` (the epoch's order), ``batch_size`` each, at most
        ``limit`` of them; each image cropped and flipped from (seed, epoch, its sample id).

        ``shard`` (rank, world): a data-parallel worker's share, rows rank, rank + world, ... of every
        batch (as ``Epoch.batches(shard=...)`` takes them): its decoding workers read only those files,
        and each image gets the crop it gets in one process (its key does not depend on the shard)."""
        if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
            raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
        r = rows.cpu().tolist()
        whole = [r[s : s + batch_size] for s in range(0, len(r), batch_size)]
        if limit is not None:
            whole = whole[:limit]
        if shard is not None:
            whole = [b[shard[0] :: shard[1]] for b in whole]
        return self._run([[Key(i, True, seed, epoch, flip) for i in b] for b in whole])

    def eval_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """uint8 evaluation batches of every row in order (resize + centre crop)."""
        n = len(self)
        return self._run([[Key(i) for i in range(s, min(s + batch_size, n))] for s in range(0, n, batch_size)])

    def close(self) -> None:
        """Stop the workers (they also stop when this object is collected)."""
        it = getattr(self._loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader = None
