import numpy as np

from kdprune.options import Option
from kdprune.scores.base import ScoreContext, register_score

VARIANTS = ("class", "global_rank")


def median_distances(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Euclidean distance of each feature to the coordinate-wise median feature of its class."""
    features = np.asarray(features, dtype=np.float64)
    d = np.zeros(len(features))
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        d[rows] = np.linalg.norm(features[rows] - np.median(features[rows], axis=0), axis=1)
    return d


@register_score(
    "moderate_ds", balance="global", budget="median_band",
    keep="high",
    hard="low",  # the far end of the band: distances furthest from the median
    variant="score = -|rank(d) - (N-1)/2| over all examples (variant='global_rank', default: the published "
    "code's global band of distance ranks around the median), or -|d - median of d in the class| "
    "(variant='class'); d = distance to the class's coordinate-wise median feature",
    needs=("embeddings",),
    options={"variant": Option(str, "global_rank", "global_rank (the published code: a global band of distance "
                               "ranks) or class (-|d - the class's median d|)", choices=VARIANTS)},
)
def moderate_ds(ctx: ScoreContext, variant: str = "global_rank") -> np.ndarray:
    """Moderate-DS: keep examples whose distance to their class median feature is moderate.

    Xia et al. (2023), "Moderate Coreset": d = ||f - median_c||_2 with median_c the coordinate-wise
    median of class c's features (``ctx.embeddings``). The recipe keeps the examples whose d is
    nearest the median distance, so the score is the NEGATED closeness: ``variant="global_rank"``
    (default) follows the published code, which keeps a band of ranks around the middle of all
    examples' sorted d (globally, not per class): -|rank(d) - (N-1)/2| (ties by position). With
    its budget rule the kept count is the code's band size; the kept ranks are the code's band
    wherever that band is centred on the middle rank, and one rank off at one edge (taken at
    random between the two tied ranks) where its half-to-even rounding shifts it; ``variant="class"`` scores
    -|d - median(d over the class)|, a per-class band.
    Either way, keep high = nearest the median distance.
    Selection: over the whole pool by default (``balance="global"``: the published code keeps one band
    of distance ranks across all classes), budget ``median_band``: the band is
    ``[round(N * (0.5 - f/2)), round(N * (0.5 + f/2)))`` as its ``get_prune_idx`` (Python's round, half to
    even: 129 kept at N = 1295, f = 0.1, not 130).
    """
    if variant not in VARIANTS:
        raise ValueError(f"moderate_ds variant must be one of {VARIANTS}, got {variant!r}")
    emb = np.asarray(ctx.embeddings)
    if emb.ndim != 2 or emb.shape[0] != len(ctx.ids):
        raise ValueError(f"embeddings must be [{len(ctx.ids)}, D], got {emb.shape}")
    d = median_distances(emb, ctx.labels)
    if variant == "global_rank":
        rank = np.empty(len(d))
        rank[np.argsort(d, kind="stable")] = np.arange(len(d))
        return -np.abs(rank - (len(d) - 1) / 2.0)
    out = np.zeros(len(d))
    for c in np.unique(ctx.labels):
        rows = np.flatnonzero(ctx.labels == c)
        out[rows] = -np.abs(d[rows] - np.median(d[rows]))
    return out
