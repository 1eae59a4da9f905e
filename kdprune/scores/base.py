"""What every score gets and returns.

A score is a pure function ``fn(ctx: ScoreContext, **options) -> np.ndarray`` giving one float
per training example, in the order of ``ctx.ids``. Its registration states which end the usual
recipe keeps (``"high"``, ``"low"`` or ``None`` for scores with no direction, like random) and
the variant implemented; its docstring states the definition and source.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from kdprune.registry import Registry

if TYPE_CHECKING:  # the context only carries torch objects; the scores that use them import torch
    import torch


@dataclass
class ScoreContext:
    ids: np.ndarray  # int64 [N] sample ids of the train split
    labels: np.ndarray  # int64 [N]
    num_classes: int
    seed: int = 0
    # teacher training dynamics: logits of every example at every epoch, [E, N, C]
    dynamics: Optional[np.ndarray] = None
    # Optional inputs of the other scores; every array/tensor is in the order of ``ids``.
    # el2n_proxy: one [N, C] logit array per independently initialised proxy run: a clean eval-mode
    # pass at the read epoch
    proxy_logits: Optional[Sequence[np.ndarray]] = None
    # grand, grand_last_layer: proxy models at/near initialisation (one per seed, torch nn.Module,
    # each with a linear ``head``), and the float inputs [N, C, H, W], already normalised
    proxy_models: Optional[Sequence[Any]] = None
    inputs: Optional["torch.Tensor"] = None
    # entropy, least_confidence, margin: final logits [N, C] (e.g. the teacher in eval mode);
    # when None they read the last epoch of ``dynamics``
    final_logits: Optional[np.ndarray] = None
    # prototypes, prototypes_supervised, moderate_ds: one embedding per example [N, D]
    embeddings: Optional[np.ndarray] = None
    # memorization: bool [M, N]: example n was in model m's training subset / model m is correct on n
    memo_masks: Optional[np.ndarray] = None
    memo_correct: Optional[np.ndarray] = None


@dataclass
class ScoreSpec:
    name: str
    fn: Callable[..., np.ndarray]
    keep: Optional[str]  # "high", "low" or None
    variant: str
    needs: tuple[str, ...] = field(default_factory=tuple)

    @property
    def definition(self) -> str:
        return inspect.cleandoc(self.fn.__doc__ or "").split("\n\n")[0]

    def __call__(self, ctx: ScoreContext, **options) -> np.ndarray:
        for need in self.needs:
            if getattr(ctx, need) is None:
                raise ValueError(f"score {self.name!r} needs {need}, which the context lacks")
        out = np.asarray(self.fn(ctx, **options), dtype=np.float64)
        if out.shape != ctx.ids.shape:
            raise ValueError(f"score {self.name!r} returned shape {out.shape}, expected {ctx.ids.shape}")
        return out


SCORES: Registry[ScoreSpec] = Registry("score")


def register_score(name: str, keep: Optional[str], variant: str, needs: tuple[str, ...] = ()):
    if keep not in ("high", "low", None):
        raise ValueError(f"keep must be 'high', 'low' or None, got {keep!r}")

    def deco(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        SCORES.register(name)(ScoreSpec(name, fn, keep, variant, tuple(needs)))
        return fn

    return deco


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)
