"""Graph cut (submodular; as DeepCore's ``Submodular`` with ``GraphCut``), lazy greedy."""
from __future__ import annotations

import numpy as np

from kdprune.selection.joint.base import (MAX_MATRIX_MB, METRIC, SIMILARITY_INPUT, SIMILARITY_INPUT_NEEDS, Option,
                                         Picked, Similarity, lazy_greedy, register_joint)


@register_joint(
    "graph_cut", needs=(), seeded=False, balance=True, option_needs=SIMILARITY_INPUT_NEEDS,
    options={"input": SIMILARITY_INPUT, "metric": METRIC, "max_matrix_mb": MAX_MATRIX_MB,
             "lam": Option(float, 1.0, "weight of the coverage term (DeepCore's lam)", low=0.0)},
    variant="lazy greedy on the teacher's penultimate features (input='features', default) or its last-layer "
            "gradients (input='gradients', as DeepCore's Submodular); similarity (1 + cos)/2 or d_max - d; "
            "exact marginal gain (DeepCore's omits the constant -s_jj); per class by default",
    cost="one teacher forward; similarities O(N^2*D) time per pool (one pass + one column per pick), memory "
         "min(N^2, max_matrix_mb) + O(N)")
def graph_cut(inputs, k, rng, input="features", metric="cosine", max_matrix_mb=512.0, lam=1.0):
    """Graph cut: maximise G(S) = lam * sum_{i in V, j in S} s_ij - sum_{i in S, j in S} s_ij,
    coverage of the pool minus redundancy within the kept set (submodular for s >= 0, not monotone).

    The marginal gain of j is lam * sum_i s_ij - 2 * sum_{i in S} s_ij - s_jj, kept up to date with
    one similarity column per pick; lazy greedy (equal to plain greedy) picks exactly k. Iyer et
    al. (2021); DeepCore (Guo et al. 2022) ``Submodular(function="GraphCut")``. ``input`` as facility
    location's: penultimate features (default) or last-layer gradients (DeepCore's ``Submodular``).
    """
    sim = Similarity(getattr(inputs, input), metric, max_matrix_mb)
    colsum = sim.column_sums()
    diag = sim.diagonal()
    acc = np.zeros(len(colsum), dtype=np.float64)  # sum_{i in S} s_ij

    def gain(j):
        return lam * colsum[j] - 2.0 * acc[j] - diag[j]

    def add(j):
        acc[:] += sim.columns([j])[:, 0]

    return Picked(lazy_greedy(lam * colsum - diag, k, gain, add))
