"""What the training loop records, accumulated on the device and read once per epoch: the epoch's
train loss and accuracy (with the per-example losses a sampler asks for), and the training
dynamics that scores read: each example's logits at its presentation in every epoch, or (for
datasets where those are too big: epochs x N x classes) per-example statistics of them, whose size
does not depend on the classes (:data:`STATS`, one registered function each)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
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


class Dynamics:
    """The training dynamics, recorded per epoch and example position (rows in subset order):
    ``kind="logits"``: float16 [epochs, n, classes] (NaN where an example was not presented: a sampler
    skipped it, or the step budget ended the epoch); ``kind="stats"``: every registered statistic
    (:data:`STATS`), one [epochs, n] array each, whose size does not depend on the classes.

    ``record`` writes a batch into the current epoch's buffer on the device (no host sync);
    ``end_epoch`` copies that epoch to the host arrays (one transfer per epoch), so the device holds
    one epoch, the host every epoch. Positions may be any subset: a worker of a data-parallel run
    records its share, and :func:`merge_dynamics` joins the workers' parts by position, checking
    that each was recorded exactly once per epoch."""

    def __init__(self, kind: str, epochs: int, n: int, num_classes: int, device: torch.device):
        if kind not in ("logits", "stats"):
            raise ValueError(f"dynamics kind must be 'logits' or 'stats', got {kind!r}")
        if kind == "stats" and num_classes < 2:
            raise ValueError("dynamics statistics need at least 2 classes")
        self.kind, self.epochs, self.n, self.device = kind, epochs, n, device
        if kind == "logits":
            self.columns = {"logits": ("float16", (num_classes,), float("nan"))}
        else:
            self.columns = {s: (STATS.get(s).dtype, (), STATS.get(s).fill) for s in STATS.names()}
        self.host = {k: np.full((epochs, n, *shape), fill, dtype=dt) for k, (dt, shape, fill) in self.columns.items()}
        self.recorded = np.zeros((epochs, n), dtype=bool)
        self._buf: dict[str, torch.Tensor] = {}
        self._mask: Optional[torch.Tensor] = None
        self._epoch = 0

    @classmethod
    def for_model(cls, model, record, epochs: int, n: int, device: torch.device) -> "Dynamics":
        """The recorder ``TrainConfig.record_dynamics`` asks for (True: the logits, or "logits" / "stats")
        for a model with a linear ``head``."""
        if not hasattr(model, "head"):
            raise ValueError("record_dynamics needs a model with a linear `head`")
        return cls("logits" if record is True else record, epochs, n, model.head.out_features, device)

    def _start(self, epoch: int) -> None:
        self._buf = {k: torch.full((self.n, *shape), fill, dtype=getattr(torch, dt), device=self.device)
                     for k, (dt, shape, fill) in self.columns.items()}
        self._mask = torch.zeros(self.n, dtype=torch.bool, device=self.device)
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
        self._mask[positions] = True

    def end_epoch(self, epoch: int) -> None:
        """Copy epoch ``epoch``'s records to the host (a no-op when nothing of it was recorded)."""
        if self._epoch != epoch:
            return
        for k, t in self._buf.items():
            self.host[k][epoch - 1] = t.cpu().numpy()
        self.recorded[epoch - 1] = self._mask.cpu().numpy()
        self._buf, self._mask, self._epoch = {}, None, 0

    def upto(self, epoch: int) -> dict[str, torch.Tensor]:
        """Epochs 1..``epoch`` on the CPU (what a checkpoint keeps)."""
        out = {k: torch.from_numpy(v[:epoch].copy()) for k, v in self.host.items()}
        out["recorded"] = torch.from_numpy(self.recorded[:epoch].copy())
        return out

    def restore(self, saved) -> None:
        if isinstance(saved, torch.Tensor):  # a checkpoint written before the statistics: the logits
            saved = {"logits": saved}
        if set(saved) - {"recorded"} != set(self.host):
            raise ValueError(f"the checkpoint's dynamics hold {sorted(saved)}, this run records {sorted(self.host)}; "
                             "delete the checkpoint to start afresh")
        for k, v in saved.items():
            e = v.shape[0]
            if k == "recorded":
                self.recorded[:e] = v.numpy()
            else:
                self.host[k][:e] = v.numpy()

    def part(self) -> dict:
        """What a data-parallel worker hands back: its host arrays and which positions it recorded."""
        return {"kind": self.kind, "arrays": self.host, "recorded": self.recorded}

    def result(self):
        """logits: the float16 [epochs, n, classes] array; stats: name -> [epochs, n] array."""
        return self.host["logits"] if self.kind == "logits" else dict(self.host)


def merge_dynamics(parts: list[dict]):
    """Join the :meth:`Dynamics.part` of several workers, each of which recorded some positions of
    the same epochs; every (epoch, position) must be recorded by exactly one worker. Returns what
    :meth:`Dynamics.result` returns."""
    if not parts:
        raise ValueError("merge_dynamics: no parts")
    kinds = {p["kind"] for p in parts}
    if len(kinds) != 1:
        raise ValueError(f"merge_dynamics: parts of different kinds {sorted(kinds)}")
    count = sum(p["recorded"].astype(np.int64) for p in parts)
    if (count != 1).any():
        e, pos = np.nonzero(count != 1)
        raise ValueError(f"merge_dynamics: {len(e)} (epoch, position) pairs were recorded {int(count[e[0], pos[0]])} "
                         f"times, not once, e.g. epoch {int(e[0]) + 1} position {int(pos[0])}")
    merged = {k: v.copy() for k, v in parts[0]["arrays"].items()}
    for p in parts[1:]:
        for k, v in p["arrays"].items():
            merged[k][p["recorded"]] = v[p["recorded"]]
    kind = kinds.pop()
    return merged["logits"] if kind == "logits" else merged
