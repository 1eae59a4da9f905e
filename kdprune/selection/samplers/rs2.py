"""RS2 (Okanovic et al. 2024): a fresh random subset each epoch, without replacement across epochs."""
from __future__ import annotations

import numpy as np

from kdprune.budgets import BUDGET_RULES
from kdprune.selection.samplers.base import Sampler, register_sampler


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
