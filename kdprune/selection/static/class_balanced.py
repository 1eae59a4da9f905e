"""``class_balanced_high`` / ``class_balanced_low``: per class, the top of a score; the budget split
across classes in proportion to their sizes (``class_quotas``)."""
from __future__ import annotations

import numpy as np

from kdprune.selection.static.base import class_quotas, kept_count, register_selector, tie_ranks


def _class_balanced(ids, labels, scores, fraction, descending: bool, seed: int, size=None) -> np.ndarray:
    ids = np.asarray(ids)
    labels = np.asarray(labels)
    k = kept_count(len(ids), fraction, size)
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    quotas = class_quotas(sizes, k)
    primary = -np.asarray(scores) if descending else np.asarray(scores)
    # one global order: by class, then score, then the seeded random tie order; then each class's first quota rows
    order = np.lexsort((tie_ranks(ids, seed), primary, inverse))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rank_in_class = np.arange(len(ids)) - starts[inverse[order]]
    kept = order[rank_in_class < quotas[inverse[order]]]
    return np.sort(ids[kept])


@register_selector("class_balanced_high")
def class_balanced_high(ids, labels, scores, fraction, seed, size=None):
    """Per class, keep the highest scores; the budget is split across classes in proportion to
    class size (largest-remainder rounding, see ``class_quotas``: the total is exactly
    ``budget(N, fraction)``, or ``size`` when given, and no class gets more than its size). Ties in a
    seeded random order.

    The ids are returned sorted ascending, which is not a training order: the trainer draws a
    fresh permutation of the subset every epoch, which is the "shuffle after class-balanced
    selection" the recipe asks for.
    """
    return _class_balanced(ids, labels, scores, fraction, descending=True, seed=seed, size=size)


@register_selector("class_balanced_low")
def class_balanced_low(ids, labels, scores, fraction, seed, size=None):
    """Per class, keep the lowest scores; otherwise as ``class_balanced_high`` (same quotas,
    ties in a seeded random order, sorted output that the trainer shuffles every epoch)."""
    return _class_balanced(ids, labels, scores, fraction, descending=False, seed=seed, size=size)
