import numpy as np

from kdprune.options import Option
from kdprune.scores.base import ScoreContext, read_stats, register_score, softmax


def windowed_std(series: np.ndarray, window: int, ddof: int = 0) -> np.ndarray:
    """Mean over all sliding windows of ``window`` consecutive rows of the per-column std: [E, N] -> [N].

    A window longer than E is cut to E (one window). A one-row window has std 0.
    """
    e = series.shape[0]
    w = min(window, e)
    if w - ddof <= 0:
        return np.zeros(series.shape[1])
    wins = np.lib.stride_tricks.sliding_window_view(series, w, axis=0)  # [E - w + 1, N, w]
    return wins.std(axis=2, ddof=ddof).mean(axis=0)


@register_score(
    "dynamic_uncertainty", balance="class", budget="round_half_up",
    keep="high",
    hard="high",
    variant="teacher training-pass dynamics; window 10 (whole run if fewer epochs); population std "
    "(ddof=0) by default",
    needs=("dynamics",), stats=("target_logprob",),
    options={"window": Option(int, 10, "sliding window (epochs); the whole run if it has fewer", low=1),
             "ddof": Option(int, 0, "delta degrees of freedom of the std (0: population, 1: sample)", choices=(0, 1))},
)
def dynamic_uncertainty(ctx: ScoreContext, window: int = 10, ddof: int = 0) -> np.ndarray:
    """Dynamic uncertainty: std of the target-class probability over a sliding window of epochs, averaged.

    He et al. (2024), "Large-scale Dataset Pruning with Dynamic Uncertainty": for every window of
    ``window`` consecutive epochs (J = 10 in the paper) take the std of softmax(logits)[label], then
    average over the E - J + 1 windows. If E < window the whole run is one window. ``ddof=1`` gives
    the sample std; with equal-length windows it only rescales, so the ranking is the same.
    High = hard; the usual recipe keeps high. From per-example statistics: exp(``target_logprob``).
    Selection: per class by default (``balance="class"``: DeepCore, the KD paper's framework, balances
    every method it runs), budget ``round_half_up`` (kdprune's: every method at a fraction keeps the same count).
    """
    if window < 1:
        raise ValueError(f"dynamic_uncertainty window must be >= 1, got {window}")
    if ctx.dynamics is None:
        target = np.exp(read_stats(ctx, "target_logprob")[0])  # [E, N]
    else:
        p = softmax(np.asarray(ctx.dynamics, dtype=np.float64))
        target = p[:, np.arange(p.shape[1]), ctx.labels]  # [E, N]
    return windowed_std(target, window, ddof)
