import numpy as np

from kdprune.scores.base import ScoreContext, register_score


@register_score("random", balance="class", budget="round_half_up", keep=None, hard=None, seeded=True,
                variant="uniform [0, 1) draws from numpy's PCG64 seeded by scores.seed")
def random_score(ctx: ScoreContext) -> np.ndarray:
    """Random: an i.i.d. uniform score per example; keeping the top k is a uniform random subset.

    No model is consulted. Costs nothing beyond drawing N numbers.
    Selection: per class by default (``balance="class"``: DeepCore, the KD paper's framework, balances
    every method it runs), budget ``round_half_up`` (kdprune's: every method at a fraction keeps the same count).
    """
    return np.random.default_rng(ctx.seed).random(len(ctx.ids))
