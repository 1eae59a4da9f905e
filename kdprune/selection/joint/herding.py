"""Herding (Welling 2009, "Herding dynamical weights to learn"; DeepCore's ``Herding``, with the paper's rule)."""
from __future__ import annotations

import numpy as np

from kdprune.selection.joint.base import Picked, register_joint


@register_joint(
    "herding", needs=("features",), seeded=False, balance=False,
    variant="greedy mean matching on the teacher's penultimate features, Euclidean, no kernel, features not "
            "normalised; at step t pick argmin_x ||t*mu - sum(S) - x|| (the paper's rule; DeepCore's Herding code "
            "takes the argmax of this distance)",
    cost="one teacher forward; O(k*N*D) time, O(N*D) memory")
def herding(inputs, k, rng):
    """Herding: greedily add the example that keeps the mean of the kept features closest to the
    pool's mean feature mu.

    Step t (1-based) picks x_t = argmin over unpicked x of ||t*mu - (x_1 + ... + x_{t-1}) - x||_2,
    i.e. the mean of the first t picks is as close to mu as one more example can make it.
    Ties go to the lowest position. Welling (2009); the coreset form follows Chen, Welling & Smola
    (2010) and DeepCore's paper (Guo et al. 2022). DeepCore's code (``Herding.herding``) takes
    ``torch.argmax`` of this distance, i.e. the example that moves the mean furthest from mu;
    kdprune implements the argmin its paper describes.
    """
    x = np.asarray(inputs.features, dtype=np.float64)
    mu = x.mean(axis=0)
    total = np.zeros_like(mu)
    free = np.ones(len(x), dtype=bool)
    sq = np.einsum("ij,ij->i", x, x)
    out = np.empty(k, dtype=np.int64)
    for t in range(1, k + 1):
        target = t * mu - total
        d = sq - 2.0 * (x @ target)  # ||target - x||^2 - ||target||^2
        d[~free] = np.inf
        j = int(np.argmin(d))
        out[t - 1] = j
        free[j] = False
        total += x[j]
    return Picked(out)
