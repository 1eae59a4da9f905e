import numpy as np

from kdprune.options import Option
from kdprune.scores.base import ScoreContext, register_score

NEVER_LEARNED = ("epochs", "zero")


@register_score(
    "forgetting", balance="class", budget="round_half_up",
    keep="high",
    hard="high",
    variant="teacher's training-pass predictions once per epoch; never-learned examples score E (epochs), "
    "above any possible count",
    needs=("dynamics",), stats=("correct",),
    options={"never_learned": Option(str, "epochs", "what an example never classified correctly scores: epochs (E, "
                                     "above any count: most forgotten, as Toneva et al.) or zero (0, as the CCS code)",
                                     choices=NEVER_LEARNED)},
)
def forgetting(ctx: ScoreContext, never_learned: str = "epochs") -> np.ndarray:
    """Forgetting: the number of correct -> incorrect transitions between consecutive presentations.

    Toneva et al. (2019). Correctness of an example at an epoch is argmax(logits) == label on its
    training presentation. An example never classified correctly counts as most forgotten: it
    scores E, the number of epochs, which exceeds the largest possible count (floor(E / 2)).
    The usual recipe keeps high (often-forgotten = hard). From per-example statistics: ``correct``.

    ``never_learned="epochs"`` (default) scores those examples E as above; ``"zero"`` scores them 0,
    as the CCS code does (its ``last_correctness`` starts at 0, so an example never correct has no
    correct -> incorrect transition): they then rank with the never-forgotten, easy examples.
    Selection: per class by default (``balance="class"``: DeepCore, the KD paper's framework, balances
    every method it runs), budget ``round_half_up`` (kdprune's: every method at a fraction keeps the same count).
    """
    if ctx.dynamics is None:
        correct = np.asarray(ctx.stats["correct"]) == 1  # [E, N]
    else:
        correct = ctx.dynamics.argmax(axis=2) == ctx.labels[None, :]  # [E, N]
    events = (correct[:-1] & ~correct[1:]).sum(axis=0).astype(np.float64)
    if never_learned not in NEVER_LEARNED:
        raise ValueError(f"forgetting never_learned must be one of {NEVER_LEARNED}, got {never_learned!r}")
    never = ~correct.any(axis=0)
    events[never] = float(correct.shape[0]) if never_learned == "epochs" else 0.0
    return events
