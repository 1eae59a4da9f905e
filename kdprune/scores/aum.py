import numpy as np

from kdprune.options import Option
from kdprune.scores.base import ScoreContext, read_stats, register_score, softmax

VARIANTS = ("logit", "prob")


def margins(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Assigned-class value minus the largest other value, per epoch and example: [E, N, C] -> [E, N]."""
    n = np.arange(values.shape[1])
    assigned = values[:, n, labels]
    others = values.copy()
    others[:, n, labels] = -np.inf
    return assigned - others.max(axis=2)


@register_score(
    "aum", balance="class", budget="round_half_up",
    keep="low",
    hard="low",
    variant="teacher training-pass dynamics; variant='logit' (paper, default: logit margin averaged over "
    "epochs) or 'prob' (CCS code: softmax-probability margin summed over epochs)",
    needs=("dynamics",), stats=("target_logprob", "other_logprob"),
    options={"variant": Option(str, "logit", "logit (paper: logit margin averaged over epochs) or prob (CCS code: "
                               "probability margin summed)", choices=("logit", "prob"))},
)
def aum(ctx: ScoreContext, variant: str = "logit") -> np.ndarray:
    """AUM, area under the margin: assigned-class logit minus the largest other logit, averaged over epochs.

    Pleiss et al. (2020), "Identifying Mislabeled Data using the Area Under the Margin Ranking",
    from the logits of each example's training presentation in every epoch (``ctx.dynamics``).
    ``variant="prob"`` is the coverage-centric coreset selection code (Zheng et al. 2023): the same
    margin on softmax probabilities, summed (not averaged) over epochs. Low AUM = hard (very
    negative flags likely mislabels); the usual recipe keeps low, CCS first drops the lowest.
    From per-example statistics (``ctx.stats``): the logit margin is the log-probability margin
    (target_logprob - other_logprob: the log-sum-exp cancels), the probabilities their exponentials.
    Selection: per class by default (``balance="class"``: DeepCore, the KD paper's framework, balances
    every method it runs), budget ``round_half_up`` (kdprune's: every method at a fraction keeps the same count).
    """
    if variant not in VARIANTS:
        raise ValueError(f"aum variant must be one of {VARIANTS}, got {variant!r}")
    if ctx.dynamics is None:
        target, other = read_stats(ctx, "target_logprob", "other_logprob")
        if variant == "logit":
            return (target - other).mean(axis=0)
        return (np.exp(target) - np.exp(other)).sum(axis=0)
    dyn = np.asarray(ctx.dynamics, dtype=np.float64)
    if variant == "logit":
        return margins(dyn, ctx.labels).mean(axis=0)
    return margins(softmax(dyn), ctx.labels).sum(axis=0)


@register_score(
    "aum_prob", balance="class", budget="round_half_up",
    keep="low",
    hard="low",
    variant="the CCS code's AUM: softmax-probability margin summed over the teacher's training epochs "
    "(= aum with variant 'prob'); CCS always cuts its lowest as the mislabel cut",
    needs=("dynamics",), stats=("target_logprob", "other_logprob"),
)
def aum_prob(ctx: ScoreContext) -> np.ndarray:
    """AUM as the coverage-centric coreset selection code computes it: assigned-class probability
    minus the largest other probability, summed over epochs.

    Zheng et al. (2023), reference code ``accumulated_margin`` (from Pleiss et al. 2020). Registered
    under its own name because CCS needs it for its mislabel cut whatever score it stratifies.
    Selection: per class by default (``balance="class"``: DeepCore, the KD paper's framework, balances
    every method it runs), budget ``round_half_up`` (kdprune's: every method at a fraction keeps the same count).
    """
    return aum(ctx, variant="prob")
