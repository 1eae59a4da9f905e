import numpy as np

from kdprune.scores.base import ScoreContext, register_score


@register_score(
    "forgetting",
    keep="high",
    hard="high",
    variant="teacher's training-pass predictions once per epoch; never-learned examples score E (epochs), "
    "above any possible count",
    needs=("dynamics",),
)
def forgetting(ctx: ScoreContext) -> np.ndarray:
    """Forgetting: the number of correct -> incorrect transitions between consecutive presentations.

    Toneva et al. (2019). Correctness of an example at an epoch is argmax(logits) == label on its
    training presentation. An example never classified correctly counts as most forgotten: it
    scores E, the number of epochs, which exceeds the largest possible count (floor(E / 2)).
    The usual recipe keeps high (often-forgotten = hard).
    """
    correct = ctx.dynamics.argmax(axis=2) == ctx.labels[None, :]  # [E, N]
    events = (correct[:-1] & ~correct[1:]).sum(axis=0).astype(np.float64)
    never = ~correct.any(axis=0)
    events[never] = float(correct.shape[0])
    return events
