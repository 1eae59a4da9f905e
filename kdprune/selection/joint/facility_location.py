"""Facility location (submodular; as DeepCore's ``Submodular`` with ``FacilityLocation``), lazy greedy."""
from __future__ import annotations

import numpy as np

from kdprune.selection.joint.base import (MAX_MATRIX_MB, METRIC, SIMILARITY_INPUT, SIMILARITY_INPUT_NEEDS, Picked,
                                         Similarity, lazy_greedy, register_joint)


def facility_location_greedy(x: np.ndarray, k: int, metric: str, max_matrix_mb: float) -> tuple[np.ndarray, Similarity]:
    """Lazy-greedy maximiser of F(S) = sum_i max_{j in S} s_ij over the rows of ``x``; returns the
    positions in selection order and the similarity oracle (CRAIG reads it for its weights)."""
    sim = Similarity(x, metric, max_matrix_mb)
    cur = np.zeros(len(x), dtype=np.float64)  # max similarity of each row to the kept set (s >= 0)

    def gain(j):
        return float(np.maximum(sim.columns([j])[:, 0] - cur, 0.0).sum())

    def add(j):
        np.maximum(cur, sim.columns([j])[:, 0], out=cur)

    return lazy_greedy(sim.column_sums(), k, gain, add), sim


@register_joint(
    "facility_location", needs=(), seeded=False, balance=True,
    options={"input": SIMILARITY_INPUT, "metric": METRIC, "max_matrix_mb": MAX_MATRIX_MB},
    option_needs=SIMILARITY_INPUT_NEEDS,
    variant="lazy greedy on the teacher's penultimate features (input='features', default) or its last-layer "
            "gradients (input='gradients', as DeepCore's Submodular); similarity (1 + cos)/2 (DeepCore's default) "
            "or d_max - d; per class by default",
    cost="one teacher forward; similarities O(N^2*D) time per pool, memory min(N^2, max_matrix_mb) + O(N)")
def facility_location(inputs, k, rng, input="features", metric="cosine", max_matrix_mb=512.0):
    """Facility location: maximise F(S) = sum over all examples i of max_{j in S} s_ij, the
    similarity of each example to its most similar kept one (a monotone submodular coverage).

    Lazy greedy (Minoux 1978): equal to plain greedy, within (1 - 1/e) of the optimum
    (Nemhauser et al. 1978). Iyer et al. (2021) "Submodular combinatorial information measures";
    DeepCore (Guo et al. 2022) ``Submodular(function="FacilityLocation", greedy="LazyGreedy")``.

    ``input``: the rows compared, the teacher's penultimate features (default) or its per-example
    last-layer gradients, which DeepCore's ``Submodular`` compares (``cossim_np`` of ``calc_gradient``).
    """
    order, _ = facility_location_greedy(getattr(inputs, input), k, metric, max_matrix_mb)
    return Picked(order)
