"""GradMatch (Killamsetty et al. 2021, "GRAD-MATCH: Gradient Matching based Data Subset Selection for
Efficient Deep Model Training"; as DeepCore's ``GradMatch``)."""
from __future__ import annotations

import numpy as np
from scipy.linalg import solve_triangular

from kdprune.selection.joint.base import Option, Picked, register_joint


def omp(a: np.ndarray, b: np.ndarray, k: int, lam: float = 0.0, tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Orthogonal matching pursuit with a non-negative selection rule and ridge refits.

    ``a``: [N, G] candidate vectors (rows), ``b``: [G] target. Repeats up to k times: pick
    j = argmax over unpicked rows of a_j . r (the most positively correlated with the residual;
    stop if none is positive), then refit w = argmin ||A_S^T w - b||^2 + lam ||w||^2 on all picks
    and set r = b - A_S^T w; stop once ||r|| <= tol ||b||. The refit uses a Cholesky factor of
    the Gram matrix grown by one row per pick (O(|S| G + |S|^2) per step, no N x N matrix).
    Returns (picked positions in order, their weights, ||r|| after each pick). With lam = 0 the
    residual is orthogonal to every picked row; with lam > 0, A_S r = lam w.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = len(a)
    k = min(k, n)
    r = b.copy()
    bnorm = float(np.linalg.norm(b))
    picked: list[int] = []
    free = np.ones(n, dtype=bool)
    L = np.zeros((k, k))
    atb = np.zeros(k)
    w = np.zeros(0)
    norms: list[float] = []
    while len(picked) < k and float(np.linalg.norm(r)) > tol * bnorm:
        corr = a @ r
        corr[~free] = -np.inf
        j = int(np.argmax(corr))
        if not corr[j] > 0:
            break
        m = len(picked)
        cross = a[picked] @ a[j] if m else np.zeros(0)
        l = solve_triangular(L[:m, :m], cross, lower=True) if m else np.zeros(0)
        d2 = float(a[j] @ a[j]) + lam - float(l @ l)
        if d2 <= 1e-12 * max(1.0, float(a[j] @ a[j])):  # a_j (nearly) in the span of the picks: unusable
            free[j] = False
            continue
        L[m, :m], L[m, m] = l, np.sqrt(d2)
        atb[m] = a[j] @ b
        picked.append(j)
        free[j] = False
        m += 1
        y = solve_triangular(L[:m, :m], atb[:m], lower=True)
        w = solve_triangular(L[:m, :m], y, lower=True, trans="T")
        r = b - w @ a[picked]
        norms.append(float(np.linalg.norm(r)))
    return np.asarray(picked, dtype=np.int64), w, norms


@register_joint(
    "gradmatch", needs=("gradients",), seeded=True, balance=True, weighted=True,
    options={"lam": Option(float, 1.0, "ridge regularisation of the OMP weight refit (DeepCore's lam)", low=0.0),
             "tol": Option(float, 1e-4, "stop OMP once ||residual|| <= tol * ||target||", low=0.0)},
    variant="OMP on the teacher's last-layer CE gradients matching the pool's gradient sum, positive selection "
            "rule, ridge refit (DeepCore's parallel OMP); negative weights dropped to 0; when OMP stops early the "
            "budget is filled by a seeded uniform draw with weight 1 (kdprune's: DeepCore's code returns only the "
            "picks with nonzero weight, so its subset can fall short of the budget)",
    cost="one teacher forward; O(k*N*G) time, O(N*G + k^2) memory")
def gradmatch(inputs, k, rng, lam=1.0, tol=1e-4):
    """GradMatch: choose S and weights w >= 0 so that sum_{j in S} w_j g_j matches the pool's full
    gradient sum_i g_i, by orthogonal matching pursuit (see :func:`omp`).

    The OMP weights are scaled so that their mean is 1 before the uniform fill (weight 1) is
    added; the weights multiply each kept example's loss in the student's training. The fill is
    kdprune's, so every method keeps the same budget: DeepCore's ``GradMatch`` keeps only the
    examples OMP gave a nonzero weight (``np.nonzero(cur_weights)``) and fills nothing.
    """
    g = np.asarray(inputs.gradients, dtype=np.float64)
    picked, w, _ = omp(g, g.sum(axis=0), k, lam, tol)
    w = np.maximum(w, 0.0)
    w = w * (len(w) / w.sum()) if w.sum() > 0 else np.ones(len(w))
    rest = np.setdiff1d(np.arange(len(g)), picked)
    fill = rest[rng.permutation(len(rest))[: k - len(picked)]]
    return Picked(np.concatenate([picked, fill]), np.concatenate([w, np.ones(len(fill))]))
