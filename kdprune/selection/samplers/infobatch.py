"""InfoBatch (Qin et al. 2024): drop a share of the low-loss examples each epoch, rescale the rest."""
from __future__ import annotations

import numpy as np

from kdprune.options import Option
from kdprune.selection.samplers.base import Sampler, register_sampler


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

    @classmethod
    def check(cls, options: dict, params) -> str | None:
        """A step budget divides by the epoch size, which InfoBatch varies from epoch to epoch."""
        if params.student.budget == "steps":
            return ("student.budget: 'steps' cannot be used with select.methods 'infobatch' (its epochs have "
                    "varying sizes); allowed with infobatch: 'epochs'")
        return None

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
