import numpy as np

from kdprune.scores.base import ScoreContext, register_score


def memorization_estimate(masks: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """mean(correct | in) - mean(correct | out) per column of bool [M, N] arrays; 0 where either side is empty."""
    masks = np.asarray(masks, dtype=bool)
    correct = np.asarray(correct, dtype=bool)
    if masks.shape != correct.shape or masks.ndim != 2:
        raise ValueError(f"memo_masks and memo_correct must both be [M, N], got {masks.shape} and {correct.shape}")
    n_in = masks.sum(axis=0)
    n_out = masks.shape[0] - n_in
    hit_in = (correct & masks).sum(axis=0)
    hit_out = (correct & ~masks).sum(axis=0)
    both = (n_in > 0) & (n_out > 0)
    out = np.zeros(masks.shape[1])
    out[both] = hit_in[both] / n_in[both] - hit_out[both] / n_out[both]
    return out


@register_score(
    "memorization", balance="class", budget="round_half_up",
    keep="high",
    hard="high",
    variant="subsample estimator from M models on random subsets; 0 for examples never in or never out",
    needs=("memo_masks", "memo_correct"),
)
def memorization(ctx: ScoreContext) -> np.ndarray:
    """Memorization: P(correct on x | x in training) - P(correct on x | x held out).

    Feldman & Zhang (2020), "What Neural Networks Memorize and Why", subsampling estimator: M models
    trained on random subsets; ``ctx.memo_masks[m, n]`` says example n was in model m's subset and
    ``ctx.memo_correct[m, n]`` that model m classifies it correctly. An example that is in every
    subset or in none has no estimate and scores 0. Cost: M full trainings (the original used
    thousands of 70% subsets per dataset); the estimate's noise shrinks like 1/sqrt(M).
    High = memorised (atypical or mislabelled); the usual recipe keeps high.
    Selection: per class by default (``balance="class"``: DeepCore, the KD paper's framework, balances
    every method it runs), budget ``round_half_up`` (kdprune's: every method at a fraction keeps the same count).
    """
    masks = np.asarray(ctx.memo_masks)
    if masks.ndim != 2 or masks.shape[1] != len(ctx.ids):
        raise ValueError(f"memo_masks must be [M, {len(ctx.ids)}], got {masks.shape}")
    return memorization_estimate(masks, ctx.memo_correct)
