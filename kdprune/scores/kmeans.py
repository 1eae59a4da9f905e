"""Seeded, deterministic k-means (k-means++ init, Lloyd iterations) in NumPy, for the embedding scores."""
from __future__ import annotations

import numpy as np

CHUNK = 16384  # rows per distance block, bounds memory at CHUNK x k


def nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and squared Euclidean distance to the nearest centroid, per row of ``x``."""
    cn = (centroids**2).sum(axis=1)
    idx = np.empty(len(x), dtype=np.int64)
    d2 = np.empty(len(x))
    for i in range(0, len(x), CHUNK):
        xb = x[i : i + CHUNK]
        d = (xb**2).sum(axis=1)[:, None] - 2.0 * xb @ centroids.T + cn[None, :]
        idx[i : i + CHUNK] = d.argmin(axis=1)
        d2[i : i + CHUNK] = np.maximum(d[np.arange(len(xb)), idx[i : i + CHUNK]], 0.0)
    return idx, d2


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with prob. proportional to D(x)^2."""
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = d2.sum()
        j = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
        centres.append(x[j])
        d2 = np.minimum(d2, ((x - x[j]) ** 2).sum(axis=1))
    return np.stack(centres)


def kmeans(x: np.ndarray, k: int, seed, max_iter: int = 100, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on rows of ``x`` [N, D]: returns (centroids [k, D], assignment [N]).

    Deterministic for a given ``seed`` (anything ``np.random.default_rng`` takes). Stops after
    ``max_iter`` iterations or when the summed squared centroid shift falls below ``tol`` times the
    mean per-dimension variance of ``x``. An empty cluster is re-seeded with the point farthest from
    its centroid.
    """
    x = np.asarray(x, dtype=np.float64)
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means needs 1 <= k <= N, got k={k}, N={len(x)}")
    rng = np.random.default_rng(seed)
    centroids = kmeans_pp(x, k, rng)
    threshold = tol * float(x.var(axis=0).mean())
    for _ in range(max_iter):
        assign, d2 = nearest(x, centroids)
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, x)
        new = sums / np.maximum(counts, 1)[:, None]
        for c in np.flatnonzero(counts == 0):
            far = int(d2.argmax())
            new[c] = x[far]
            d2[far] = 0.0
        shift = float(((new - centroids) ** 2).sum())
        centroids = new
        if shift <= threshold:
            break
    return centroids, nearest(x, centroids)[0]
