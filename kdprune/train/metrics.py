"""What the training loop records, accumulated on the device and read once per epoch: the epoch's
train loss and accuracy (with the per-example losses a sampler asks for), and the training
dynamics that scores read: each example's logits at its presentation in every epoch, or (for
datasets where those are too big: epochs x N x classes) per-example statistics of them, whose size
does not depend on the classes (:data:`STATS`, one registered function each)."""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from kdprune.registry import Registry
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


# ---------------------------------------------------------------- training dynamics

DYNAMICS_FORMATS = ("auto", "logits", "stats")  # teacher.dynamics
# teacher.dynamics: auto records the full logits when they take less than this (epochs x N x classes x 2
# bytes: CIFAR-10 at 200 epochs, 180 MB, keeps them; CIFAR-100 at 200 epochs, 1.8 GB, records statistics)
AUTO_LOGITS_MAX_BYTES = 256 * 2**20


def dynamics_format(option: str, epochs: int, n: int, num_classes: int) -> str:
    """What the teacher records for ``teacher.dynamics`` = ``option``: ``"logits"`` or ``"stats"``."""
    if option not in DYNAMICS_FORMATS:
        raise ValueError(f"teacher.dynamics: got {option!r}, allowed: {', '.join(DYNAMICS_FORMATS)}")
    if option != "auto":
        return option
    return "logits" if logits_bytes(epochs, n, num_classes) < AUTO_LOGITS_MAX_BYTES else "stats"


def logits_bytes(epochs: int, n: int, num_classes: int) -> int:
    """Size of the full-logits dynamics (float16)."""
    return epochs * n * num_classes * 2


@dataclass(frozen=True)
class Stat:
    """One per-example statistic of the dynamics: recorded per epoch from the training-pass logits
    (rounded to float16, as the logits format stores them, then computed in float64) and the label,
    stored as ``dtype`` (``fill`` where the example was not presented that epoch)."""
    name: str
    dtype: str  # NumPy dtype of the stored values
    definition: str
    fn: Callable[["_Logits"], torch.Tensor]

    @property
    def fill(self):
        return -1 if np.dtype(self.dtype).kind == "i" else float("nan")

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize


STATS: Registry[Stat] = Registry("dynamics statistic")


def register_stat(name: str, dtype: str, definition: str):
    def deco(fn: Callable[["_Logits"], torch.Tensor]):
        STATS.register(name)(Stat(name, dtype, definition, fn))
        return fn
    return deco


class _Logits:
    """One batch's logits and labels, and what several statistics share (computed once, on the device)."""

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor):
        # float16 first: the statistics describe the same logits the full-logits format stores; float64
        # (CPU and CUDA have it) so that 1 - p and small margins keep their digits until stored
        self.z = logits.detach().to(torch.float16).to(torch.float64)
        self.y = labels.to(self.z.device).long()
        self.rows = torch.arange(self.z.shape[0], device=self.z.device)

    @functools.cached_property
    def logprob(self) -> torch.Tensor:
        return torch.log_softmax(self.z, dim=1)

    @functools.cached_property
    def prob(self) -> torch.Tensor:
        return self.logprob.exp()

    def others(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` with the label's column at -inf."""
        out = values.clone()
        out[self.rows, self.y] = float("-inf")
        return out


@register_stat("correct", "int8", "1 when argmax of the logits (the first on a tie) is the label, else 0")
def _correct(b: _Logits) -> torch.Tensor:
    return (b.z.argmax(dim=1) == b.y).to(torch.int8)


@register_stat("target_logprob", "float32", "log softmax(logits)[label], the negative cross-entropy loss")
def _target_logprob(b: _Logits) -> torch.Tensor:
    return b.logprob[b.rows, b.y]


@register_stat("other_logprob", "float32", "the largest log softmax(logits)[c] over the classes c other than the label")
def _other_logprob(b: _Logits) -> torch.Tensor:
    return b.others(b.logprob).max(dim=1).values


@register_stat("top2_logprob", "float32", "the second largest log softmax(logits)[c] over all classes")
def _top2_logprob(b: _Logits) -> torch.Tensor:
    return b.logprob.topk(2, dim=1).values[:, 1]


@register_stat("l2_error", "float32", "the L2 norm of softmax(logits) minus the one-hot label (EL2N at that epoch)")
def _l2_error(b: _Logits) -> torch.Tensor:
    d = b.prob.clone()
    d[b.rows, b.y] -= 1.0
    return d.square().sum(dim=1).sqrt()


@register_stat("entropy", "float32", "-sum_c p_c log p_c of p = softmax(logits) (natural log)")
def _entropy(b: _Logits) -> torch.Tensor:
    return -(b.prob * b.logprob).sum(dim=1)


def example_stats(logits: torch.Tensor, labels: torch.Tensor, names=None) -> dict[str, torch.Tensor]:
    """The statistics ``names`` (default: every registered one) of each row of ``logits`` [B, C] with
    its label, each a [B] tensor of the statistic's dtype, on the logits' device."""
    b = _Logits(logits, labels)
    out = {}
    for name in (STATS.names() if names is None else names):
        s = STATS.get(name)
        out[name] = s.fn(b).to(getattr(torch, s.dtype))
    return out


def stats_bytes(names=None) -> int:
    """Bytes per example and epoch of the statistics ``names`` (default: every registered one)."""
    return sum(STATS.get(n).itemsize for n in (STATS.names() if names is None else names))


class HostColumns:
    """The recorded epochs of a :class:`Dynamics` on the host, one ``[epochs, n, ...]`` array per column,
    in memory (the default: proxies, students, tests)."""

    def __init__(self, columns: dict, epochs: int, n: int):
        self.columns = columns
        self.arrays = {k: np.full((epochs, n, *shape), fill, dtype=dt) for k, (dt, shape, fill) in columns.items()}

    def write_epoch(self, epoch: int, values: dict[str, np.ndarray]) -> None:
        for k, v in values.items():
            self.arrays[k][epoch - 1] = v

    def upto(self, epoch: int) -> dict[str, torch.Tensor]:
        """Epochs 1..``epoch`` on the CPU (what a checkpoint keeps)."""
        return {k: torch.from_numpy(v[:epoch].copy()) for k, v in self.arrays.items()}

    def restore(self, saved: dict) -> None:
        for k, v in saved.items():
            self.arrays[k][: v.shape[0]] = v.numpy()

    def result(self) -> dict[str, np.ndarray]:
        return dict(self.arrays)


class FileColumns:
    """The recorded epochs in ``directory`` on the host's disk, one preallocated ``<column>.npy`` each
    (NumPy's format, the header ``np.save`` writes: the finished file is the DVC out's bytes), so the
    host memory does not grow with the epochs. Each epoch's rows are written in place (``os.pwrite`` at
    the epoch's offset, then fsync) when it ends; no file stays mapped, so the process holds no page
    of them. A checkpoint keeps the sha256 of every epoch written; a resume checks the file's epochs
    against them and continues the same file. ``result`` maps the files read-only."""

    def __init__(self, directory, columns: dict, epochs: int, n: int):
        self.columns, self.epochs, self.n = columns, epochs, n
        self.dir = Path(directory)
        self.paths = {k: self.dir / f"{k}.npy" for k in columns}
        self.digests: dict[int, dict[str, str]] = {}  # epoch written -> column -> sha256 of its rows
        self.offsets: dict[str, int] = {}
        self._ready = False

    def _row(self, name: str) -> tuple[np.dtype, tuple, int]:
        dt, shape, _ = self.columns[name]
        dt = np.dtype(dt)
        return dt, (self.n, *shape), int(np.prod((self.n, *shape), dtype=np.int64)) * dt.itemsize

    def _create(self) -> None:
        """Every column's file, afresh: the header, then each epoch's rows at the column's fill value."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for k, path in self.paths.items():
            dt, shape, size = self._row(k)
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=dt, shape=(self.epochs, *shape))
            self.offsets[k] = mm.offset
            del mm
            fill = np.full(shape, self.columns[k][2], dtype=dt).tobytes()
            with open(path, "r+b") as f:
                for e in range(self.epochs):
                    os.pwrite(f.fileno(), fill, self.offsets[k] + e * size)
        self.digests, self._ready = {}, True

    def _open(self) -> None:
        """The existing files, checked to be this run's shape (a resume)."""
        for k, path in self.paths.items():
            dt, shape, _ = self._row(k)
            try:
                mm = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ValueError(f"the checkpoint's dynamics file {path} is missing or unreadable ({e}); delete the "
                                 f"checkpoint ({self.dir.parent}) to start afresh") from None
            if mm.dtype != dt or mm.shape != (self.epochs, *shape):
                raise ValueError(f"{path} holds {mm.dtype} {mm.shape}, this run records {dt} {(self.epochs, *shape)}; "
                                 f"delete the checkpoint ({self.dir.parent}) to start afresh")
            self.offsets[k] = mm.offset
            del mm
        self._ready = True

    def write_epoch(self, epoch: int, values: dict[str, np.ndarray]) -> None:
        if not self._ready:
            self._create()
        digests = {}
        for k, v in values.items():
            dt, shape, size = self._row(k)
            data = np.ascontiguousarray(v, dtype=dt).reshape(shape).tobytes()
            with open(self.paths[k], "r+b") as f:
                os.pwrite(f.fileno(), data, self.offsets[k] + (epoch - 1) * size)
                os.fsync(f.fileno())  # on disk before the checkpoint that names it
            digests[k] = hashlib.sha256(data).hexdigest()
        self.digests = {e: d for e, d in self.digests.items() if e < epoch}
        self.digests[epoch] = digests

    def upto(self, epoch: int) -> dict:
        """What a checkpoint keeps: the sha256 of each column's rows in epochs 1..``epoch`` (the rows
        are in the files)."""
        return {"files": [[e, dict(d)] for e, d in sorted(self.digests.items()) if e <= epoch]}

    def restore(self, saved: dict) -> None:
        if "files" not in saved:  # a checkpoint that holds the arrays (written before the file format)
            self._create()
            for e in range(_leaves_count(saved)):
                self.write_epoch(e + 1, {k: v[e].numpy() for k, v in saved.items()})
            return
        self._open()
        for e, want in saved["files"]:
            got = {}
            for k in want:
                _, _, size = self._row(k)
                with open(self.paths[k], "rb") as f:
                    got[k] = hashlib.sha256(os.pread(f.fileno(), size, self.offsets[k] + (e - 1) * size)).hexdigest()
            if got != want:
                raise ValueError(f"the dynamics files in {self.dir} do not hold the epoch {e} the checkpoint "
                                 f"recorded (changed or from another run); delete the checkpoint ({self.dir.parent}) "
                                 "to start afresh")
        self.digests = {int(e): dict(d) for e, d in saved["files"]}

    def result(self) -> dict[str, np.ndarray]:
        if not self._ready:
            self._create()
        return {k: np.load(p, mmap_mode="r", allow_pickle=False) for k, p in self.paths.items()}


def _leaves_count(saved: dict) -> int:
    return next(iter(saved.values())).shape[0]


class Dynamics:
    """The training dynamics, recorded per epoch and example position (rows in subset order):
    ``kind="logits"``: float16 [epochs, n, classes] (NaN where an example was not presented: a sampler
    skipped it, or the step budget ended the epoch); ``kind="stats"``: every registered statistic
    (:data:`STATS`), one [epochs, n] array each, whose size does not depend on the classes.

    ``record`` writes a batch into the current epoch's buffer on the device (no host sync);
    ``end_epoch`` copies that epoch to the host (one transfer per epoch), so the device holds one
    epoch. The host keeps every epoch in memory, or, with ``directory``, in preallocated files there
    (:class:`FileColumns`: the host memory does not grow with the epochs; the teacher stage's, beside
    its checkpoint). Positions may be any subset: a worker of a data-parallel run records its share
    of an epoch, and kdprune/train/distributed.py merges the workers' records by position."""

    def __init__(self, kind: str, epochs: int, n: int, num_classes: int, device: torch.device, directory=None):
        if kind not in ("logits", "stats"):
            raise ValueError(f"dynamics kind must be 'logits' or 'stats', got {kind!r}")
        if kind == "stats" and num_classes < 2:
            raise ValueError("dynamics statistics need at least 2 classes")
        self.kind, self.epochs, self.n, self.device = kind, epochs, n, device
        if kind == "logits":
            self.columns = {"logits": ("float16", (num_classes,), float("nan"))}
        else:
            self.columns = {s: (STATS.get(s).dtype, (), STATS.get(s).fill) for s in STATS.names()}
        self.host = HostColumns(self.columns, epochs, n) if directory is None else \
            FileColumns(directory, self.columns, epochs, n)
        self._buf: dict[str, torch.Tensor] = {}
        self._epoch = 0

    @classmethod
    def for_model(cls, model, record, epochs: int, n: int, device: torch.device, directory=None) -> "Dynamics":
        """The recorder ``TrainConfig.record_dynamics`` asks for (True: the logits, or "logits" / "stats")
        for a model with a linear ``head``; ``directory``: the host's epochs in files there."""
        if not hasattr(model, "head"):
            raise ValueError("record_dynamics needs a model with a linear `head`")
        return cls("logits" if record is True else record, epochs, n, model.head.out_features, device, directory)

    def _start(self, epoch: int) -> None:
        self._buf = {k: torch.full((self.n, *shape), fill, dtype=getattr(torch, dt), device=self.device)
                     for k, (dt, shape, fill) in self.columns.items()}
        self._epoch = epoch

    def record(self, epoch: int, positions: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch of epoch ``epoch`` (1-based): the examples at ``positions`` (int64 [B], into the
        subset), their training-pass ``logits`` [B, C] and ``labels`` [B]."""
        if epoch != self._epoch:
            if self._epoch:
                self.end_epoch(self._epoch)
            self._start(epoch)
        if self.kind == "logits":
            values = {"logits": logits.detach().to(torch.float16)}
        else:
            values = example_stats(logits, labels)
        for k, v in values.items():
            self._buf[k][positions] = v

    def end_epoch(self, epoch: int) -> None:
        """Copy epoch ``epoch``'s records to the host (a no-op when nothing of it was recorded)."""
        if self._epoch != epoch:
            return
        self.host.write_epoch(epoch, {k: t.cpu().numpy() for k, t in self._buf.items()})
        self._buf, self._epoch = {}, 0

    def epoch_rows(self, positions: np.ndarray) -> "np.ndarray | dict[str, np.ndarray]":
        """The current epoch's rows at ``positions`` (a data-parallel worker's share, on the host), without
        storing the epoch: the logits [k, classes], or name -> [k] statistics."""
        rows = {k: np.ascontiguousarray(t.cpu().numpy()[positions]) for k, t in self._buf.items()}
        return rows["logits"] if self.kind == "logits" else rows

    def write_epoch(self, epoch: int, values: "np.ndarray | dict[str, np.ndarray]") -> None:
        """Store a whole epoch recorded elsewhere (the workers' records merged by position)."""
        values = {"logits": values} if self.kind == "logits" else values
        if set(values) != set(self.columns):
            raise ValueError(f"epoch {epoch}: got {sorted(values)}, this recorder stores {sorted(self.columns)}")
        self.host.write_epoch(epoch, values)

    def upto(self, epoch: int) -> dict:
        """What a checkpoint keeps of epochs 1..``epoch``: the arrays (CPU tensors), or, for files, their digests."""
        return self.host.upto(epoch)

    def restore(self, saved) -> None:
        if isinstance(saved, torch.Tensor):  # a checkpoint written before the statistics: the logits
            saved = {"logits": saved}
        saved = {k: v for k, v in saved.items() if k != "recorded"}  # checkpoints before the file format
        names = set(saved["files"][0][1]) if "files" in saved and saved["files"] else set(saved) - {"files"}
        if "files" in saved and not isinstance(self.host, FileColumns):
            raise ValueError("the checkpoint's dynamics are in files, but this run keeps them in memory; delete the "
                             "checkpoint to start afresh")
        if names and names != set(self.columns):
            raise ValueError(f"the checkpoint's dynamics hold {sorted(names)}, this run records {sorted(self.columns)}; "
                             "delete the checkpoint to start afresh")
        self.host.restore(saved)

    def result(self):
        """logits: the float16 [epochs, n, classes] array; stats: name -> [epochs, n] array (read-only
        memory maps of the files with ``directory``)."""
        out = self.host.result()
        return out["logits"] if self.kind == "logits" else out
