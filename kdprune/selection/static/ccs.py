"""Coverage-centric coreset selection (CCS; Zheng et al., "Coverage-centric Coreset Selection for
High Pruning Rates", ICLR 2023; reference code github.com/haizhongzheng/Coverage-centric-coreset-selection,
``mislabel_mask`` / ``stratified_sampling`` / ``bin_allocate``), as the reference code runs it:

1. The mislabel cut: drop the ``int(beta * N)`` hardest examples by AUM -- the code's AUM,
   softmax-probability margins summed over epochs (score ``aum_prob``), whose hard end is its
   lowest -- whatever score is stratified (params: ``select.ccs.score``; ``cut_scores``, cut at ``cut_end``: the cut score's
   registered hard end, never its keep end; ties in a seeded random order). ``beta`` follows the kept fraction
   (``ccs_beta_at``): the paper uses beta = 0.3 at 90 % pruning (CIFAR-10, ImageNet) and 0.2 at 80 %.
2. Split the remaining examples' stratified score into ``k`` (default 50) strata of equal width over
   [min, max * 1.0001]: stratum ``i`` holds scores in [min + i*w, min + (i+1)*w), w = (max*1.0001 - min) / k
   (the reference's top edge; where max <= 0 that edge would leave the maximum out of every
   stratum, and the last stratum takes it instead).
3. The budget is ``int(fraction * N)`` (budget rule ``floor``, the reference's ``coreset_num =
   int(args.coreset_ratio * total_num)``, with no tolerance: N = 90, f = 0.7 gives 62 as
   0.7 * 90 = 62.99999999999999; unlike the round-half-up ``budget`` of the DeepCore-family scores),
   allocated with ``ccs_allocation`` (smallest stratum first, each gets min(size, remaining budget //
   remaining strata)). The cut is ``int(beta * N)`` likewise (the code's ``mis_num = int(mis_ratio * total_num)``).
4. Sample uniformly at random inside each stratum with ``np.random.default_rng(seed)``.

Balance: the code selects over the whole pool (registration ``balance="global"``: what
``select.balance: auto`` runs). Per class (``select.balance: true`` or ``ccs:balanced``) the budget
``int(fraction * N)`` is split across classes by ``class_quotas`` and steps 1-4 run inside each class,
with a cut of ``int(beta * N_c)`` and the class's own strata, classes in label order on one random stream.
"""
from __future__ import annotations

import numpy as np

from kdprune.options import Option
from kdprune.budgets import budget_floor
from kdprune.selection.static.base import class_quotas, register_selector, tie_ranks

CUT_SCORE = "aum_prob"  # the CCS code cuts its lowest accumulated probability margin, whatever it stratifies

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
    """Stratum index in [0, k) of each score: k equal-width bins [min + i*w, min + (i+1)*w) over
    [min, max * 1.0001] (the reference's edges); a score at or beyond the top edge goes to the last."""
    scores = np.asarray(scores, dtype=np.float64)
    lo, hi = float(scores.min()), float(scores.max()) * 1.0001
    if hi <= lo:  # all equal (or all but equal, below zero): one stratum
        return np.zeros(len(scores), dtype=np.int64)
    width = (hi - lo) / k
    return np.clip(np.floor((scores - lo) / width).astype(np.int64), 0, k - 1)


def ccs_beta_at(beta, fraction: float) -> float:
    """The mislabel-cut share at a kept ``fraction``: ``beta`` itself when it is a number; from a table
    ``[[fraction, beta], ...]`` linearly interpolated between its points and constant beyond its
    first and last point."""
    if isinstance(beta, (int, float)):
        return float(beta)
    pts = sorted((float(f), float(b)) for f, b in beta)
    xs, ys = [f for f, _ in pts], [b for _, b in pts]
    return float(np.interp(fraction, xs, ys))


def beta_error(v) -> str | None:
    """What is wrong with a ``beta`` (a share in [0, 1), or a table [[kept fraction, beta], ...]), or None."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return None if 0.0 <= v < 1.0 else "must be in [0.0, 1.0) or a table [[kept fraction, beta], ...]"
    ok = isinstance(v, list) and v and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in p)
        and 0.0 < p[0] <= 1.0 and 0.0 <= p[1] < 1.0 for p in v)
    if not ok:
        return "must be a share in [0.0, 1.0) or a non-empty table [[kept fraction in (0, 1], beta in [0, 1)], ...]"
    if len({p[0] for p in v}) != len(v):
        return "has the same kept fraction twice"
    return None


def _score_error(v: str) -> str | None:
    from kdprune.scores import SCORES  # the registry, with every score a plugin registered by now
    return None if v in SCORES else f"not a registered score; valid: {', '.join(SCORES.names())}"


def _cut_fits(opts: dict, params) -> str | None:
    """At every kept fraction the cut leaves room for the subset: fraction + beta <= 1."""
    bad = [(f, ccs_beta_at(opts["beta"], f)) for f in params.select.fractions]
    bad = [f"{b:g} at kept fraction {f:g}" for f, b in bad if f + b > 1.0 + 1e-9]
    return (f"select.ccs.beta: {', '.join(bad)} cuts more than the subset leaves (fraction + beta must be <= 1); "
            "lower beta there") if bad else None


# params: select.ccs: {score, beta, strata}
OPTIONS = {
    "score": Option(str, "aum_prob", "the score CCS stratifies (default: the CCS code's AUM)", validate=_score_error),
    "beta": Option(object, [[0.1, 0.3], [0.2, 0.2], [0.5, 0.0]],
                   "mislabel cut, share of N cut as hardest by aum_prob: a number, or a table [[kept fraction, "
                   "beta], ...] linear between its points and constant beyond them (ccs_beta_at)",
                   validate=beta_error),
    "strata": Option(int, 50, "number of equal-width strata (k)", low=1),
}


def ccs_budget(n: int, fraction: float) -> int:
    """The reference's coreset size: ``int(fraction * N)`` (at least 1), no tolerance: N = 90, f = 0.7 -> 62."""
    return budget_floor(n, fraction)


@register_selector("ccs", method=True, options=OPTIONS, check=_cut_fits, balance="global", budget="floor",
                   seeded=True, reads=lambda o: (o["score"], CUT_SCORE),
                   keywords=lambda o, fraction: {"beta": ccs_beta_at(o["beta"], fraction), "k": o["strata"]})
def ccs(ids, labels, scores, fraction, seed, beta: float = 0.0, k: int = 50, cut_scores=None, cut_end: str = "low",
        balance: bool = False):
    """Coverage-centric coreset selection (see the module docstring for the recipe).

    ``scores``: the stratified score. ``cut_scores``: the score whose ``int(beta * N)`` hardest
    examples are cut first (the code's AUM, ``aum_prob``; None: ``scores`` themselves).
    ``cut_end``: where the hard examples of the cut score are, ``"low"`` (AUM) or ``"high"`` (EL2N,
    forgetting): the registration's ``hard``, which differs from its keep end for Moderate-DS.
    ``beta`` in [0, 1): the share cut. ``k``: number of strata. ``balance``: per class (False: over the
    whole pool, as the code). The budget ``int(fraction * N)`` must fit in what the cut leaves;
    otherwise a ValueError names beta and fraction. Returns sorted ids.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"ccs beta (share dropped as hardest) must be in [0, 1), got {beta}")
    if cut_end not in ("high", "low"):
        raise ValueError(f"ccs cut_end (the cut score's hard end) must be 'high' or 'low', got {cut_end!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"ccs k (number of strata) must be a positive integer, got {k!r}")
    ids = np.asarray(ids)
    scores = np.asarray(scores, dtype=np.float64)
    cut_scores = scores if cut_scores is None else np.asarray(cut_scores, dtype=np.float64)
    if cut_scores.shape != scores.shape or not np.isfinite(cut_scores).all():
        raise ValueError("ccs cut_scores must be finite, one per example")
    n = len(ids)
    want = ccs_budget(n, fraction)
    rng = np.random.default_rng(seed)
    if not balance:
        return np.sort(_ccs_pool(ids, scores, cut_scores, want, int(beta * n), int(k), cut_end, seed, rng, fraction, beta))
    labels = np.asarray(labels)
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    quotas = class_quotas(sizes, want)
    kept = [_ccs_pool(ids[inverse == c], scores[inverse == c], cut_scores[inverse == c], int(quotas[c]),
                      int(beta * sizes[c]), int(k), cut_end, seed, rng, fraction, beta)
            for c in range(len(classes)) if quotas[c] > 0]
    return np.sort(np.concatenate(kept))


def _ccs_pool(ids, scores, cut_scores, want: int, cut: int, k: int, cut_end: str, seed: int, rng, fraction, beta):
    """Steps 1-4 on one pool (the whole data, or one class): cut ``cut`` hardest, ``want`` kept over k strata."""
    n = len(ids)
    if want > n - cut:
        raise ValueError(f"ccs: budget {want} (fraction {fraction} of {n}) exceeds the {n - cut} examples left "
                         f"after dropping int(beta * N) = {cut} hardest (beta {beta}); lower beta or fraction")
    # hardest first (lowest, or highest for cut_end "high"), ties in the seeded random order; keep the rest
    order = np.lexsort((tie_ranks(ids, seed), cut_scores if cut_end == "low" else -cut_scores))
    rest = order[cut:]
    rest = rest[np.argsort(ids[rest], kind="stable")]  # id order, so the random draws are input-order free
    strata = ccs_strata(scores[rest], k)
    sizes = np.bincount(strata, minlength=k)
    counts = ccs_allocation(sizes, want)
    kept = []
    for s in range(k):
        if counts[s] == 0:
            continue
        pool = ids[rest[strata == s]]
        kept.append(pool[rng.permutation(len(pool))[: counts[s]]])
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
