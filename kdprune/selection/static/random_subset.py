"""``random``: a uniform random subset (scores ignored)."""
from __future__ import annotations

import numpy as np

from kdprune.selection.static.base import kept_count, register_selector


@register_selector("random", needs_scores=False)
def random_subset(ids, labels, scores, fraction, seed, size=None):
    """A uniform random subset of ``budget(N, fraction)`` ids (``size`` ids when given); ``scores`` are ignored.

    The draw is ``np.random.default_rng(seed).permutation(N)[:k]`` applied to the ids sorted
    ascending, so the same (id set, fraction, seed) gives the same subset in any input order.
    """
    k = kept_count(len(ids), fraction, size)
    pool = np.sort(np.asarray(ids))
    pick = np.random.default_rng(seed).permutation(len(pool))[:k]
    return np.sort(pool[pick])
