"""Per-epoch (dynamic) samplers: which training positions an epoch uses, and with what loss weight.

A sampler is built once per training run and asked, epoch by epoch (1-based, consecutive),
for the positions to train on:

    sampler = SAMPLERS.get(name)(n, epochs, seed=0, **options)   # or make_sampler(...)
    for epoch in range(1, epochs + 1):
        pos = sampler.epoch_positions(epoch)   # int64 positions in [0, n), sorted, no repeats
        w = sampler.loss_weights(epoch)        # float32 aligned with pos, or None (= all 1)
        ... train on pos (in any order), per-sample loss multiplied by w ...
        sampler.update(epoch, pos_seen, per_sample_losses)   # unweighted losses, any order
        ckpt["sampler"] = sampler.state_dict()

``n`` is the size of the pool the positions index (the training set, or a static subset of it:
map with ``subset[pos]``). Asking for the same epoch again returns the same positions (and
counts them once); skipping an epoch or going back is a ValueError — use ``load_state_dict``
to resume. ``samples_seen`` is the total number of positions returned so far (each epoch
counted once). ``state_dict()`` holds only ints and NumPy arrays; ``load_state_dict`` restores a
sampler built with the same (n, epochs, seed, options), after which the next epoch is exactly
what the uninterrupted run would have produced. No global RNG is touched: randomness comes from
``np.random.default_rng([seed, ...])`` streams keyed by the seed and the pass/epoch.

Each sampler declares what the pipeline needs to know about it: ``options``, named under it in
params (``select.<sampler>: {option: value}``, validated from the declaration before any compute);
``fraction_option``, the option the kept fraction sets (one manifest per fraction), or None for a
sampler that trains on the full data (fraction 1.0 only); ``epoch_size``, the positions one epoch
draws (what a step budget divides by); ``check``, its cross-key rule ``(resolved options, params) ->
error text or None``, run by params validation before any compute (as a score's).

One module each in this package (``rs2``, ``infobatch``): ``@register_sampler("name")`` on the subclass.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from kdprune.options import Option, resolve_options
from kdprune.registry import Registry

SAMPLERS: Registry[type] = Registry("sampler")
register_sampler = SAMPLERS.register


class Sampler:
    """Base class; subclasses implement ``_draw(epoch) -> (positions, weights | None)``."""

    name = "sampler"
    options: dict[str, Option] = {}  # its options in params, under select.<name>
    fraction_option: Optional[str] = None  # the option a kept fraction sets; None: full data, fraction 1.0 only

    @classmethod
    def resolve(cls, given: Optional[dict]) -> dict:
        """Its options from params (defaults filled in); ValueError naming a bad or unknown one."""
        return resolve_options(f"select.{cls.name}", cls.options, given)

    @classmethod
    def check(cls, options: dict, params) -> Optional[str]:
        """Its cross-key rule, run by params validation when a select.methods entry names it: ``options``
        resolved (:meth:`resolve`), ``params`` validated; an error text naming the key, or None."""
        return None

    @classmethod
    def options_at(cls, fraction: float, given: Optional[dict]) -> dict:
        """The options a manifest at kept ``fraction`` records and the sampler is built with."""
        return {**cls.resolve(given), **({cls.fraction_option: fraction} if cls.fraction_option else {})}

    @classmethod
    def fractions(cls, fractions: list[float]) -> list[float]:
        """The kept fractions it runs at: each of select.fractions, or the full data only."""
        return list(fractions) if cls.fraction_option else [1.0]

    @classmethod
    def epoch_size(cls, n: int, **options) -> int:
        """How many of the ``n`` pool positions one epoch draws (at most; InfoBatch draws fewer)."""
        return n

    def __init__(self, n: int, epochs: int, seed: int = 0):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{self.name}: pool size n must be a positive integer, got {n!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"{self.name}: epochs must be a positive integer, got {epochs!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"{self.name}: seed must be a non-negative integer, got {seed!r}")
        self.n, self.epochs, self.seed = int(n), int(epochs), int(seed)
        self.samples_seen = 0
        self._epoch = 0  # last epoch drawn
        self._positions = np.zeros(0, dtype=np.int64)
        self._weights: np.ndarray | None = None

    # -- public interface -------------------------------------------------------------------
    def epoch_positions(self, epoch: int) -> np.ndarray:
        """Positions (int64, sorted, unique, in [0, n)) to train on in 1-based ``epoch``."""
        self._advance(epoch)
        return self._positions.copy()

    def loss_weights(self, epoch: int) -> np.ndarray | None:
        """Per-position loss multipliers aligned with ``epoch_positions(epoch)``, or None if all 1."""
        self._advance(epoch)
        return None if self._weights is None else self._weights.copy()

    def update(self, epoch: int, positions, per_sample_losses) -> None:
        """Record the (unweighted) per-sample losses seen in ``epoch``. No-op by default."""

    def state_dict(self) -> dict:
        return {
            "n": self.n, "seed": self.seed, "epochs": self.epochs, "samples_seen": self.samples_seen,
            "epoch": self._epoch, "positions": self._positions.copy(),
            "weights": np.zeros(0, np.float32) if self._weights is None else self._weights.copy(),
            "has_weights": int(self._weights is not None),
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("n", "seed", "epochs"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(f"{self.name}: state has {key}={int(state[key])}, this sampler {getattr(self, key)}")
        self.samples_seen = int(state["samples_seen"])
        self._epoch = int(state["epoch"])
        self._positions = np.asarray(state["positions"], dtype=np.int64).copy()
        self._weights = np.asarray(state["weights"], dtype=np.float32).copy() if int(state["has_weights"]) else None

    # -- internals --------------------------------------------------------------------------
    def _advance(self, epoch: int) -> None:
        epoch = int(epoch)
        if epoch == self._epoch and epoch >= 1:
            return
        if epoch != self._epoch + 1:
            raise ValueError(f"{self.name}: epochs are drawn in order; asked for epoch {epoch} after epoch "
                             f"{self._epoch} (resume with load_state_dict)")
        pos, w = self._draw(epoch)
        self._positions = np.asarray(pos, dtype=np.int64)
        self._weights = None if w is None else np.asarray(w, dtype=np.float32)
        self._epoch = epoch
        self.samples_seen += len(self._positions)

    def _draw(self, epoch: int):
        raise NotImplementedError


def make_sampler(name: str, n: int, epochs: int, seed: int = 0, **options) -> Sampler:
    """Build a registered sampler; an option it does not declare (``options``, ``fraction_option``) is a
    ValueError listing the valid ones (values are checked by the sampler itself)."""
    cls = SAMPLERS.get(name)
    allowed = [*cls.options, *([cls.fraction_option] if cls.fraction_option else [])]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"sampler {name!r} does not take option(s) {', '.join(unknown)}; it takes: {', '.join(allowed)}")
    return cls(n, epochs, seed, **options)
