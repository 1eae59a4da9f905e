"""What every score gets and returns.

A score is a pure function ``fn(ctx: ScoreContext, **options) -> np.ndarray`` giving one float
per training example, in the order of ``ctx.ids``. Its registration states which end the usual
recipe keeps (``"high"``, ``"low"`` or ``None`` for scores with no direction, like random) and
the variant implemented; its docstring states the definition and source.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from kdprune.registry import Registry


@dataclass
class ScoreContext:
    ids: np.ndarray  # int64 [N] sample ids of the train split
    labels: np.ndarray  # int64 [N]
    num_classes: int
    seed: int = 0
    # teacher training dynamics: logits of every example at every epoch, [E, N, C]
    dynamics: Optional[np.ndarray] = None


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
