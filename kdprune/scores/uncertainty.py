"""Uncertainty of one model's prediction: entropy, least confidence and margin (one family)."""
import numpy as np

from kdprune.scores.base import ScoreContext, register_score, softmax

_SOURCE = ("ctx.final_logits when given (e.g. the teacher in eval mode), else the last epoch of the teacher dynamics "
           "(its logits, or its per-example statistics)")


def final_probs(ctx: ScoreContext) -> np.ndarray:
    """Softmax of ``ctx.final_logits`` [N, C], or of the last epoch of ``ctx.dynamics`` when that is None."""
    if ctx.final_logits is not None:
        logits = ctx.final_logits
    elif ctx.dynamics is not None:
        logits = ctx.dynamics[-1]
    else:
        raise ValueError("uncertainty scores need final_logits or dynamics, which the context lacks")
    return softmax(np.asarray(logits, dtype=np.float64))


def last_stats(ctx: ScoreContext, *names: str) -> list[np.ndarray] | None:
    """The last epoch of the dynamics statistics ``names`` (float64 [N]) when those are what the
    context holds (no final_logits, no full logits), else None."""
    if ctx.final_logits is not None or ctx.dynamics is not None or ctx.stats is None:
        return None
    return [np.asarray(ctx.stats[n][-1], dtype=np.float64) for n in names]


def _top1_logprob(target: np.ndarray, other: np.ndarray) -> np.ndarray:
    return np.maximum(target, other)


@register_score("entropy", balance="class", budget="round_half_up",
                keep="high", hard="high", variant=f"natural log; {_SOURCE}", prefers=("final_logits",),
                stats=("entropy",))
def entropy(ctx: ScoreContext) -> np.ndarray:
    """Entropy of the predicted distribution, -sum_c p_c log p_c (natural log).

    Uncertainty sampling (Lewis & Gale 1994; as a pruning score in Coleman et al. 2020, "Selection
    via Proxy", and DeepCore). High = uncertain = hard; the usual recipe keeps high.
    Selection: per class by default (``balance="class"``: DeepCore, the KD paper's framework, balances
    every method it runs), budget ``round_half_up`` (kdprune's: every method at a fraction keeps the same count).
    """
    stats = last_stats(ctx, "entropy")
    if stats is not None:
        return stats[0]
    p = final_probs(ctx)
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)


@register_score("least_confidence", balance="class", budget="round_half_up",
                keep="high", hard="high", variant=_SOURCE, prefers=("final_logits",),
                stats=("target_logprob", "other_logprob"))
def least_confidence(ctx: ScoreContext) -> np.ndarray:
    """Least confidence: 1 - max_c p_c.

    Coleman et al. (2020), DeepCore. High = uncertain = hard; the usual recipe keeps high.
    Selection: per class by default (``balance="class"``: DeepCore, the KD paper's framework, balances
    every method it runs), budget ``round_half_up`` (kdprune's: every method at a fraction keeps the same count).
    """
    stats = last_stats(ctx, "target_logprob", "other_logprob")
    if stats is not None:  # the top class is the label or the best other class; 1 - p without cancellation
        return -np.expm1(_top1_logprob(*stats))
    return 1.0 - final_probs(ctx).max(axis=1)


@register_score("margin", balance="class", budget="round_half_up",
                keep="low", hard="low", variant=f"top-1 minus top-2 probability; {_SOURCE}",
                prefers=("final_logits",), stats=("target_logprob", "other_logprob", "top2_logprob"))
def margin(ctx: ScoreContext) -> np.ndarray:
    """Margin: p_top1 - p_top2, the gap between the two most probable classes (label not used).

    Coleman et al. (2020), DeepCore. A SMALL margin means uncertain = hard, so the usual recipe
    keeps LOW scores (unlike entropy and least confidence, which keep high).
    Selection: per class by default (``balance="class"``: DeepCore, the KD paper's framework, balances
    every method it runs), budget ``round_half_up`` (kdprune's: every method at a fraction keeps the same count).
    """
    stats = last_stats(ctx, "target_logprob", "other_logprob", "top2_logprob")
    if stats is not None:
        return np.exp(_top1_logprob(*stats[:2])) - np.exp(stats[2])
    top2 = np.sort(final_probs(ctx), axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]
