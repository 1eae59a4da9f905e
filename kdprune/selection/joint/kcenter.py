"""k-Center greedy (Sener & Savarese 2018, "Active Learning for Convolutional Neural Networks:
A Core-Set Approach"; as in DeepCore's ``kCenterGreedy``)."""
from __future__ import annotations

import numpy as np

from kdprune.selection.joint.base import Picked, register_joint


@register_joint(
    "kcenter", needs=("features",), seeded=True, balance=False,
    variant="farthest-point greedy on the teacher's penultimate features, Euclidean; the first center is a "
            "seeded uniform draw (DeepCore; the paper starts from the already-labelled set)",
    cost="one teacher forward; O(k*N*D) time, O(N) memory beyond the features")
def kcenter(inputs, k, rng):
    """k-Center greedy: repeatedly add the example farthest from its nearest kept example.

    With kept set S, pick argmax_x min_{s in S} ||x - s||_2 (ties: lowest position), which is the
    2-approximation of the minimax facility location (k-center) problem. S starts from one example
    drawn uniformly with the seed. Distances by scikit-learn ``pairwise_distances``, one new column
    per step.
    """
    from sklearn.metrics import pairwise_distances

    x = np.asarray(inputs.features, dtype=np.float32)
    first = int(rng.integers(len(x)))
    out = [first]
    mind = pairwise_distances(x, x[[first]]).ravel().astype(np.float64)
    mind[first] = -1.0
    for _ in range(k - 1):
        j = int(np.argmax(mind))
        out.append(j)
        np.minimum(mind, pairwise_distances(x, x[[j]]).ravel(), out=mind)
        mind[j] = -1.0  # kept examples stay at -1 (the minimum never raises them)
    return Picked(np.asarray(out, dtype=np.int64))
