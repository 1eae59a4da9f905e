"""Prototype distances in an embedding space (Sorscher et al. 2022): self-supervised and supervised variants."""
import numpy as np

from kdprune.options import Option
from kdprune.scores.base import ScoreContext, register_score
from kdprune.scores.kmeans import kmeans, nearest


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _embeddings(ctx: ScoreContext, normalize: bool) -> np.ndarray:
    emb = np.asarray(ctx.embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(ctx.ids):
        raise ValueError(f"embeddings must be [{len(ctx.ids)}, D], got {emb.shape}")
    return l2_normalise(emb) if normalize else emb


@register_score(
    "prototypes", balance="class", budget="round_half_up",
    keep="high",
    hard="high",
    variant="k-means (k = num_classes unless given, k-means++ seeded by scores.seed) on L2-normalised "
    "embeddings; Euclidean distance to the nearest centroid",
    needs=("embeddings",),
    options={"k": Option(int, 0, "k-means clusters; 0: the number of classes", low=0),
             "normalize": Option(bool, True, "L2-normalise the embeddings first"),
             "max_iter": Option(int, 100, "k-means iterations at most", low=1),
             "tol": Option(float, 1e-6, "k-means stops when centroids move less than this", low=0.0)},
)
def prototypes(ctx: ScoreContext, k: int = 0, normalize: bool = True, max_iter: int = 100, tol: float = 1e-6) -> np.ndarray:
    """Self-supervised prototypes: distance of an embedding to its nearest k-means centroid.

    Sorscher et al. (2022), "Beyond neural scaling laws": k-means with k = number of classes
    (``k=0``) on embeddings of a (self-supervised) encoder, no labels used; score = Euclidean
    distance to the nearest centroid, on L2-normalised embeddings by default (``normalize``).
    Far from every prototype = hard. Keep high (hard) when data is abundant; when data is scarce
    the paper finds keeping easy (low) examples is better.
    Selection: per class by default (``balance="class"``: DeepCore, the KD paper's framework, balances
    every method it runs), budget ``round_half_up`` (kdprune's: every method at a fraction keeps the same count).
    """
    x = _embeddings(ctx, normalize)
    centroids, _ = kmeans(x, k or ctx.num_classes, ctx.seed, max_iter, tol)
    return np.sqrt(nearest(x, centroids)[1])


@register_score(
    "prototypes_supervised", balance="class", budget="round_half_up",
    keep="high",
    hard="high",
    variant="per class: distance to the class mean (k-means with k=1) of L2-normalised embeddings; "
    "clusters_per_class > 1 runs k-means inside each class",
    needs=("embeddings",),
    options={"clusters_per_class": Option(int, 1, "k-means clusters inside each class (1: the class mean)", low=1),
             "normalize": Option(bool, True, "L2-normalise the embeddings first"),
             "max_iter": Option(int, 100, "k-means iterations at most", low=1),
             "tol": Option(float, 1e-6, "k-means stops when centroids move less than this", low=0.0)},
)
def prototypes_supervised(ctx: ScoreContext, clusters_per_class: int = 1, normalize: bool = True,
                          max_iter: int = 100, tol: float = 1e-6) -> np.ndarray:
    """Supervised prototypes: distance of an embedding to its own class's prototype.

    The supervised variant of Sorscher et al. (2022): prototypes are found per class with the labels,
    on supervised embeddings (e.g. the teacher's penultimate features). With one cluster per class
    (default) k-means is exact: the prototype is the class mean. With ``clusters_per_class`` > 1,
    k-means inside each class (seeded by scores.seed and the class) and the distance to the nearest
    centroid of the example's own class. Keep high (hard) when data is abundant, low when scarce.
    Selection: per class by default (``balance="class"``: DeepCore, the KD paper's framework, balances
    every method it runs), budget ``round_half_up`` (kdprune's: every method at a fraction keeps the same count).
    """
    x = _embeddings(ctx, normalize)
    out = np.zeros(len(x))
    for c in np.unique(ctx.labels):
        rows = np.flatnonzero(ctx.labels == c)
        k = min(clusters_per_class, len(rows))
        if k == 1:
            centroids = x[rows].mean(axis=0, keepdims=True)
        else:
            centroids, _ = kmeans(x[rows], k, [ctx.seed, int(c)], max_iter, tol)
        out[rows] = np.sqrt(nearest(x[rows], centroids)[1])
    return out
