"""CRAIG (Mirzasoleiman, Bilmes & Leskovec 2020, "Coresets for Data-efficient Training of Machine
Learning Models"; as DeepCore's ``Craig``)."""
from __future__ import annotations

import numpy as np

from kdprune.selection.joint.base import MAX_MATRIX_MB, Picked, register_joint
from kdprune.selection.joint.facility_location import facility_location_greedy


@register_joint(
    "craig", needs=("gradients",), seeded=False, balance=True, weighted=True,
    options={"max_matrix_mb": MAX_MATRIX_MB},
    variant="facility location (lazy greedy) on the teacher's last-layer CE gradients, similarity d_max - d "
            "(Euclidean, d_max over the pool); weight = size of the element's cluster (DeepCore adds 1); per class",
    cost="one teacher forward; similarities O(N^2*G) per pool (G = C*(D+1)), memory min(N^2, max_matrix_mb) + O(N*G)")
def craig(inputs, k, rng, max_matrix_mb=512.0):
    """CRAIG: facility location on per-example gradients, with per-element step sizes.

    Choose S greedily to maximise sum_i max_{j in S} (d_max - ||g_i - g_j||), g the last-layer
    gradient of the loss; the weight of j in S is gamma_j = |{i : j is i's most similar element of
    S}| (ties to the earlier pick), so sum_j gamma_j g_j approximates the full gradient. The
    weights multiply each kept example's loss in the student's training (scaled to mean 1).
    """
    g = inputs.gradients
    order, sim = facility_location_greedy(g, k, "euclidean", max_matrix_mb)
    best = np.full(len(g), -np.inf)
    owner = np.zeros(len(g), dtype=np.int64)
    for t in range(0, k, sim.chunk):  # columns of the kept set, in selection order, a block at a time
        cols = order[t:t + sim.chunk]
        s = sim.columns(cols)
        arg = s.argmax(axis=1)
        val = s[np.arange(len(g)), arg]
        better = val > best
        best[better], owner[better] = val[better], t + arg[better]
    return Picked(order, np.bincount(owner, minlength=k).astype(np.float64))
