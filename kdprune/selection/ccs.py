"""Coverage-centric coreset selection (CCS; Zheng et al., "Coverage-centric Coreset Selection for
High Pruning Rates", ICLR 2023; reference code github.com/haizhongzheng/Coverage-centric-coreset-selection,
``stratified_sampling`` / ``bin_allocate``).

Recipe, on a difficulty score such as AUM where the LOW end is hard (and flags mislabels):

1. Drop the ``floor(beta * N)`` hardest examples (the mislabel cut; ties in a seeded random order).
   Their README uses beta = 0.3 at 90% pruning on CIFAR-10; the default here is beta = 0
   (no cut), so pass ``beta`` explicitly to follow that recipe.
2. Split the remaining examples' score range [min, max] into ``k`` (default 50) equal-width
   strata: stratum ``i`` holds scores in [min + i*w, min + (i+1)*w) with w = (max - min) / k, and
   the maximum goes to the last stratum. When all remaining scores are equal, all are stratum 0.
3. Allocate the budget with ``ccs_allocation`` (smallest stratum first, each gets
   min(size, remaining budget // remaining strata)).
4. Sample uniformly at random inside each stratum with ``np.random.default_rng(seed)``.
"""
from __future__ import annotations

import numpy as np

from kdprune.selection.static import budget, register_selector, tie_ranks

_EPS = 1e-9  # guards floor(beta * N) against float error, e.g. 0.29 * 100 = 28.999999999999996


def ccs_allocation(stratum_sizes, total: int) -> np.ndarray:
    """Per-stratum counts for a budget ``total`` (pure; the CCS ``bin_allocate``).

    Strata are visited from the smallest to the largest (equal sizes in stratum-index order);
    each gets ``min(size, remaining // strata_left)`` where ``remaining`` is the budget not yet
    given and ``strata_left`` counts the strata not yet visited, itself included. Integer floor
    division, as in the reference code: the rounding leftovers flow to the larger strata visited
    later, and the last (largest) stratum takes whatever remains. The counts sum to exactly
    ``min(total, sum(sizes))`` — when ``total <= sum(sizes)``, at every step the remaining
    budget never exceeds what the unvisited strata hold — and no stratum exceeds its size.

    Example: sizes [1, 2, 10, 10], total 12 -> [1, 2, 4, 5]
    (12//4=3 -> 1; 11//3=3 -> 2; 9//2=4 -> 4; 5//1=5 -> 5).
    """
    sizes = np.asarray(stratum_sizes, dtype=np.int64)
    if sizes.ndim != 1 or (sizes < 0).any():
        raise ValueError("stratum sizes must be a 1-D array of non-negative counts")
    if total < 0:
        raise ValueError(f"budget must be non-negative, got {total}")
    order = np.argsort(sizes, kind="stable")
    out = np.zeros_like(sizes)
    remaining = int(total)
    for i, s in enumerate(order):
        take = min(int(sizes[s]), remaining // (len(order) - i))
        out[s] = take
        remaining -= take
    return out


def ccs_strata(scores: np.ndarray, k: int) -> np.ndarray:
    """Stratum index in [0, k) of each score: k equal-width bins over [min, max], max in the last."""
    scores = np.asarray(scores, dtype=np.float64)
    lo, hi = float(scores.min()), float(scores.max())
    if hi <= lo:
        return np.zeros(len(scores), dtype=np.int64)
    width = (hi - lo) / k
    return np.clip(np.floor((scores - lo) / width).astype(np.int64), 0, k - 1)


@register_selector("ccs")
def ccs(ids, labels, scores, fraction, seed, beta: float = 0.0, k: int = 50, hard: str = "low"):
    """Coverage-centric coreset selection (see the module docstring for the recipe).

    ``beta`` in [0, 1): share of N dropped as hardest before stratifying. ``k``: number of
    equal-width strata. ``hard``: which score end is hard, ``"low"`` (AUM, default) or
    ``"high"`` (EL2N, forgetting, ...). The budget ``budget(N, fraction)`` must fit in what the
    cut leaves; otherwise a ValueError names beta and fraction. Returns sorted ids.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"ccs beta (share dropped as hardest) must be in [0, 1), got {beta}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"ccs k (number of strata) must be a positive integer, got {k!r}")
    if hard not in ("low", "high"):
        raise ValueError(f"ccs hard must be 'low' or 'high', got {hard!r}")
    ids = np.asarray(ids)
    scores = np.asarray(scores, dtype=np.float64)
    n = len(ids)
    want = budget(n, fraction)
    cut = int(np.floor(beta * n + _EPS))
    if want > n - cut:
        raise ValueError(f"ccs: budget {want} (fraction {fraction} of {n}) exceeds the {n - cut} examples left "
                         f"after dropping floor(beta * N) = {cut} hardest (beta {beta}); lower beta or fraction")
    # hardest first, ties in the seeded random order; keep the rest
    order = np.lexsort((tie_ranks(ids, seed), scores if hard == "low" else -scores))
    rest = order[cut:]
    rest = rest[np.argsort(ids[rest], kind="stable")]  # id order, so the random draws are input-order free
    strata = ccs_strata(scores[rest], int(k))
    sizes = np.bincount(strata, minlength=int(k))
    counts = ccs_allocation(sizes, want)
    rng = np.random.default_rng(seed)
    kept = []
    for s in range(int(k)):
        if counts[s] == 0:
            continue
        pool = ids[rest[strata == s]]
        kept.append(pool[rng.permutation(len(pool))[: counts[s]]])
    return np.sort(np.concatenate(kept))
