"""Static (once, before training) selection of a kept subset.

Every selector maps (ids, labels, scores, fraction, seed) to the kept ids, sorted ascending.
Ties in score are broken by sample id so the result never depends on input order.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from kdprune.registry import Registry

Selector = Callable[[np.ndarray, np.ndarray, np.ndarray, float, int], np.ndarray]
SELECTORS: Registry[Selector] = Registry("selector")
register_selector = SELECTORS.register


def budget(n: int, fraction: float) -> int:
    """Number of examples kept at ``fraction`` of ``n``: round half up, at least 1."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"kept fraction must be in (0, 1], got {fraction}")
    return max(1, min(n, int(np.floor(fraction * n + 0.5))))


def _order(ids: np.ndarray, scores: np.ndarray, descending: bool) -> np.ndarray:
    # lexsort: last key is primary. Secondary key: id ascending.
    primary = -scores if descending else scores
    return np.lexsort((ids, primary))


@register_selector("keep_high")
def keep_high(ids, labels, scores, fraction, seed):
    """Keep the ``fraction`` of examples with the highest score."""
    k = budget(len(ids), fraction)
    return np.sort(ids[_order(ids, scores, descending=True)[:k]])


@register_selector("keep_low")
def keep_low(ids, labels, scores, fraction, seed):
    """Keep the ``fraction`` of examples with the lowest score."""
    k = budget(len(ids), fraction)
    return np.sort(ids[_order(ids, scores, descending=False)[:k]])


def select(selector: str, ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    if not (len(ids) == len(labels) == len(scores)):
        raise ValueError("ids, labels and scores must have the same length")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    out = SELECTORS.get(selector)(ids, labels, scores, fraction, seed)
    return out.astype(np.int64)
