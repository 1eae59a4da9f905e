"""CAL, contrastive active learning (Margatina et al. 2021, "Active Learning by Acquiring Contrastive
Examples", EMNLP; as DeepCore's ``Cal``)."""
from __future__ import annotations

import numpy as np

from kdprune.selection.joint.base import Option, Picked, register_joint


def cal_scores(features: np.ndarray, probs: np.ndarray, neighbours: int) -> np.ndarray:
    """Mean KL(p_neighbour || p_x) over each example's ``neighbours`` nearest other examples
    (Euclidean, scikit-learn ``NearestNeighbors``; the example itself excluded)."""
    from sklearn.neighbors import NearestNeighbors

    n = len(features)
    m = min(neighbours, n - 1)
    if m < 1:
        return np.zeros(n)
    x = np.asarray(features, dtype=np.float32)
    idx = NearestNeighbors(n_neighbors=m + 1).fit(x).kneighbors(x, return_distance=False)
    # drop the example itself (normally column 0; with exact duplicates it may be elsewhere)
    rows = np.arange(n)[:, None]
    not_self = idx != rows
    keep = np.where(not_self.all(axis=1)[:, None], np.arange(m + 1)[None, :] < m, not_self)
    nbr = idx[keep].reshape(n, m)
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)
    logp = np.log(p)
    pn = p[nbr]  # [n, m, C]
    kl = (pn * (logp[nbr] - logp[:, None, :])).sum(axis=2)
    return kl.mean(axis=1)


@register_joint(
    "cal", needs=("features", "probs"), seeded=False, balance=True,
    options={"neighbours": Option(int, 10, "nearest neighbours in feature space (DeepCore: 10)", low=1)},
    variant="neighbours among the pool (per class by default) in the teacher's penultimate feature space, "
            "teacher probabilities; keep the k highest mean KL(p_neighbour || p_x), ties by position",
    cost="one teacher forward; k-NN search (scikit-learn) O(N log N * D) to O(N^2 * D), memory O(N * neighbours)")
def cal(inputs, k, rng, neighbours=10):
    """CAL: keep the examples whose predicted distribution differs most from those of their
    nearest neighbours in feature space ("contrastive" examples: close in features, far in output).

    Score s(x) = (1/m) sum over the m nearest neighbours x_l of KL(p(y|x_l) || p(y|x)); the k
    highest scores are kept.
    """
    s = cal_scores(inputs.features, inputs.probs, neighbours)
    order = np.lexsort((np.arange(len(s)), -s))
    return Picked(order[:k])
