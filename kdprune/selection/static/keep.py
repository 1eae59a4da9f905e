"""``keep_high`` / ``keep_low``: the top of a score (the selector of every score method that is not
class-balanced); ties as the package docstring says."""
from __future__ import annotations

import numpy as np

from kdprune.selection.static.base import class_quotas, kept_count, register_selector, tie_ranks


def _rank_within(groups: np.ndarray, n_groups: int) -> np.ndarray:
    """For rows already in the wanted order: each row's position among the rows of its group."""
    o = np.argsort(groups, kind="stable")
    starts = np.concatenate(([0], np.cumsum(np.bincount(groups, minlength=n_groups))[:-1]))
    r = np.empty(len(groups), dtype=np.int64)
    r[o] = np.arange(len(groups)) - starts[groups[o]]
    return r


def _top_k(ids, labels, scores, k: int, descending: bool, seed: int) -> np.ndarray:
    """Positions of the ``k`` best scores; equal scores in a seeded random order, and a group of equal
    scores that straddles the cut is split across its classes in proportion to their sizes in it."""
    primary = -np.asarray(scores, dtype=np.float64) if descending else np.asarray(scores, dtype=np.float64)
    order = np.lexsort((tie_ranks(ids, seed), primary))  # best first; ties in random order
    if k >= len(order) or primary[order[k - 1]] != primary[order[k]]:
        return order[:k]
    edge = primary[order[k - 1]]
    ranked = primary[order]
    above, group = order[ranked < edge], order[ranked == edge]
    classes, inv, sizes = np.unique(np.asarray(labels)[group], return_inverse=True, return_counts=True)
    quotas = class_quotas(sizes, k - len(above))
    take = group[_rank_within(inv, len(classes)) < quotas[inv]]
    return np.concatenate((above, take))


@register_selector("keep_high")
def keep_high(ids, labels, scores, fraction, seed, size=None):
    """Keep the ``fraction`` of examples with the highest score (ties: see the module docstring);
    ``size``: the count, when the method's budget rule is not ``budget``'s."""
    return np.sort(ids[_top_k(ids, labels, scores, kept_count(len(ids), fraction, size), True, seed)])


@register_selector("keep_low")
def keep_low(ids, labels, scores, fraction, seed, size=None):
    """Keep the ``fraction`` of examples with the lowest score (ties: see the module docstring);
    ``size`` as ``keep_high``."""
    return np.sort(ids[_top_k(ids, labels, scores, kept_count(len(ids), fraction, size), False, seed)])
