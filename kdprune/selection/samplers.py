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
draws (what a step budget divides by).

Registered: ``rs2``, ``infobatch``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from kdprune.options import Option, resolve_options
from kdprune.registry import Registry
from kdprune.budgets import BUDGET_RULES

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


@register_sampler("rs2")
class RS2Sampler(Sampler):
    """RS2 without replacement (Okanovic et al. 2024, "Repeated Random Sampling for Minimizing the
    Time-to-Accuracy of Learning"; reference code github.com/PatrikOkanovic/RS2,
    ``UniformNoReplacement``): every epoch a fresh random subset of ``round(ratio * n)`` positions
    (budget rule ``round``: Python's round, half to even, at least 1, as its ``coreset_size =
    round(self.n_train * fraction)``: 388 at n = 1295, ratio 0.3, where the static selectors' round half
    up keeps 389), taken as the next chunk of a shuffled permutation. No scoring cost; ``update``
    is a no-op and the weights are None.

    Pass ``j`` walks permutation P_j, drawn from ``default_rng([seed, j])``. When fewer than a
    chunk's worth of positions are left in P_j, the epoch takes all of them plus the first
    positions of the next permutation, which is drawn fresh and then has those leftover positions
    moved to its end (the rest keep their random order). So no epoch repeats a position, and every
    pass shows every position exactly once: over any run of whole passes each position appears the
    same number of times. When ``ratio`` makes ``n`` a multiple of the chunk, no chunk straddles.
    """

    name = "rs2"
    fraction_option = "ratio"  # the kept fraction is the share of the data each epoch draws

    budget = "round"  # its budget rule (kdprune.budgets.BUDGET_RULES): the reference's round(n * fraction)

    @classmethod
    def epoch_size(cls, n: int, ratio: float, **_) -> int:
        return BUDGET_RULES[cls.budget](n, ratio)

    def __init__(self, n: int, epochs: int, seed: int = 0, ratio: float | None = None):
        super().__init__(n, epochs, seed)
        if ratio is None or not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"rs2: ratio (share of the data per epoch) must be in (0, 1], got {ratio!r}")
        self.ratio = float(ratio)
        self.chunk = self.epoch_size(self.n, self.ratio)
        self._pass = 0
        self._perm = self._permutation(0)
        self._cursor = 0

    def _permutation(self, j: int) -> np.ndarray:
        return np.random.default_rng([self.seed, j]).permutation(self.n).astype(np.int64)

    def _draw(self, epoch: int):
        m, n = self.chunk, self.n
        head = self._perm[self._cursor : self._cursor + m]
        self._cursor += len(head)
        if len(head) < m:  # this permutation is spent: straddle into a fresh one
            self._pass += 1
            new = self._permutation(self._pass)
            leftover = np.zeros(n, dtype=bool)
            leftover[head] = True
            new = np.concatenate([new[~leftover[new]], new[leftover[new]]])
            need = m - len(head)
            head = np.concatenate([head, new[:need]])
            self._perm, self._cursor = new, need
        return np.sort(head), None

    def state_dict(self) -> dict:
        out = super().state_dict()
        out.update(chunk=self.chunk, pass_index=self._pass, cursor=self._cursor, perm=self._perm.copy())
        return out

    def load_state_dict(self, state: dict) -> None:
        if int(state["chunk"]) != self.chunk:
            raise ValueError(f"rs2: state has chunk {int(state['chunk'])}, this sampler {self.chunk} (ratio differs)")
        super().load_state_dict(state)
        self._pass, self._cursor = int(state["pass_index"]), int(state["cursor"])
        self._perm = np.asarray(state["perm"], dtype=np.int64).copy()


@register_sampler("infobatch")
class InfoBatchSampler(Sampler):
    """InfoBatch (Qin et al., ICLR 2024, "InfoBatch: Lossless Training Speed Up by Unbiased Dynamic
    Data Pruning"; reference code github.com/NUS-HPC-AI-Lab/InfoBatch, ``infobatch/infobatch.py``).

    Options: ``prune_ratio`` r in [0, 0.9] (default 0.5), ``delta`` in (0, 1] (default 0.875).
    For 1-based epoch k <= delta * epochs, and once losses have been recorded: the "well-learned"
    positions are those whose last recorded loss is strictly below the mean of all recorded
    losses; ``int((1 - r) * count)`` of them are kept (rounded down, as the reference's
    ``int(keep_ratio * len(well_learned_indices))``: 0.7 * 90 -> 62), chosen uniformly at random
    with ``default_rng([seed, epoch])``, the rest are dropped for this epoch. Kept well-learned
    positions get loss weight 1/(1 - r), all other returned positions 1 (rescaling keeps the
    expected gradient unbiased). Positions never recorded are never well-learned (always kept,
    weight 1) and do not enter the mean. Before any loss is recorded (epoch 1) and for epochs
    k > delta * epochs: all n positions, weights None (= all 1).

    The last pruned epoch is the reference code's, ``floor(delta * epochs)`` (1-based; the product
    compared in floating point as the code does, no tolerance): its ``IBSampler`` constructor calls
    ``reset()`` once (counter 0 -> 1) and each epoch's ``__iter__`` calls it again, so the epoch
    with 0-based index e runs with counter e + 1 and prunes while e + 1 <= delta * epochs
    (8 epochs, delta 0.875: epochs 1-7 prune, 8 is full; 5 epochs, delta 0.3: none prunes).

    Budget rule: the kept count of the well-learned floors, ``int((1 - r) * count)``, no tolerance.
    r above 0.9 is refused: the reference clamps its kept share at 0.1
    (``keep_ratio = max(0.1, 1 - prune_ratio)``), so r > 0.9 would silently act as 0.9 there.

    ``update(epoch, positions, losses)`` stores each position's loss (the unweighted per-sample
    training loss, as in the reference code); positions not trained in an epoch keep their
    previous loss.
    """

    name = "infobatch"
    MAX_PRUNE_RATIO = 0.9  # the reference clamps its kept share at 0.1: r above this would act as 0.9 there
    options = {"prune_ratio": Option(float, 0.5, "share of the below-mean-loss examples dropped each epoch; at most "
                                     "0.9 (the reference code clamps the kept share at 0.1)",
                                     low=0.0, high=MAX_PRUNE_RATIO),
               "delta": Option(float, 0.875, "prunes epochs 1..floor(delta * epochs) (as its code), then full data",
                               low=0.0, high=1.0, low_open=True)}

    def __init__(self, n: int, epochs: int, seed: int = 0, prune_ratio: float = 0.5, delta: float = 0.875):
        super().__init__(n, epochs, seed)
        if not 0.0 <= float(prune_ratio) <= self.MAX_PRUNE_RATIO:
            raise ValueError(f"infobatch: prune_ratio must be in [0, {self.MAX_PRUNE_RATIO}], got {prune_ratio!r} (the "
                             f"reference code keeps at least a share 0.1 of the well-learned examples: above "
                             f"{self.MAX_PRUNE_RATIO} it would silently act as {self.MAX_PRUNE_RATIO})")
        if not 0.0 <= float(delta) <= 1.0:
            raise ValueError(f"infobatch: delta must be in [0, 1], got {delta!r}")
        self.prune_ratio, self.delta = float(prune_ratio), float(delta)
        # last epoch that prunes (1-based): the largest k with k <= delta * epochs, compared in floating point as the
        # reference's ``iterations > stop_prune`` is (0.29 * 100 = 28.999999999999996: epoch 28)
        self.stop_epoch = max((k for k in range(1, self.epochs + 1) if k <= self.delta * self.epochs), default=0)
        self.keep_ratio = 1.0 - self.prune_ratio  # the reference's keep_ratio (its clamp at 0.1 is refused above)
        self.losses = np.zeros(self.n, dtype=np.float64)
        self.recorded = np.zeros(self.n, dtype=bool)

    def _draw(self, epoch: int):
        everything = np.arange(self.n, dtype=np.int64)
        if epoch > self.stop_epoch or not self.recorded.any():
            return everything, None
        rec = np.flatnonzero(self.recorded)
        mean = self.losses[rec].mean()
        well = rec[self.losses[rec] < mean]
        keep_n = int(self.keep_ratio * len(well))  # the reference's int(keep_ratio * len): 0.7 * 90 -> 62
        rng = np.random.default_rng([self.seed, epoch])
        kept_well = well[rng.permutation(len(well))[:keep_n]]
        keep = np.ones(self.n, dtype=bool)
        keep[well] = False
        keep[kept_well] = True
        pos = everything[keep]
        weights = np.ones(len(pos), dtype=np.float32)
        boosted = np.zeros(self.n, dtype=bool)
        boosted[kept_well] = True
        weights[boosted[pos]] = 1.0 / self.keep_ratio
        return pos, (weights if len(kept_well) and self.prune_ratio > 0 else None)

    def update(self, epoch: int, positions, per_sample_losses) -> None:
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        losses = np.asarray(per_sample_losses, dtype=np.float64).reshape(-1)
        if positions.shape != losses.shape:
            raise ValueError(f"infobatch: {len(positions)} positions but {len(losses)} losses")
        if len(positions) and (positions.min() < 0 or positions.max() >= self.n):
            raise ValueError(f"infobatch: positions must be in [0, {self.n})")
        if not np.isfinite(losses).all():
            raise ValueError("infobatch: per-sample losses contain NaN or infinite values")
        self.losses[positions] = losses
        self.recorded[positions] = True

    def state_dict(self) -> dict:
        out = super().state_dict()
        out.update(losses=self.losses.copy(), recorded=self.recorded.copy())
        return out

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.losses = np.asarray(state["losses"], dtype=np.float64).copy()
        self.recorded = np.asarray(state["recorded"], dtype=bool).copy()


def make_sampler(name: str, n: int, epochs: int, seed: int = 0, **options) -> Sampler:
    """Build a registered sampler; an option it does not declare (``options``, ``fraction_option``) is a
    ValueError listing the valid ones (values are checked by the sampler itself)."""
    cls = SAMPLERS.get(name)
    allowed = [*cls.options, *([cls.fraction_option] if cls.fraction_option else [])]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"sampler {name!r} does not take option(s) {', '.join(unknown)}; it takes: {', '.join(allowed)}")
    return cls(n, epochs, seed, **options)
