import numpy as np

from kdprune.options import Option
from kdprune.scores.base import ScoreContext, read_stats, register_score, softmax


@register_score(
    "el2n", balance="class", budget="round_half_up",
    keep="high",
    hard="high",
    variant="teacher dynamics: one run's training-pass logits at epoch `scores.el2n.epoch` (1-based), no seed averaging",
    needs=("dynamics",), stats=("l2_error",),
    options={"epoch": Option(int, 5, "teacher epoch (1-based) the training-pass logits are read at", low=1)},
    check=lambda o, p: (f"scores.el2n.epoch: {o['epoch']} is after the teacher's last epoch; allowed: "
                        f"1..teacher.epochs ({p.teacher.epochs})" if o["epoch"] > p.teacher.epochs else None),
)
def el2n(ctx: ScoreContext, epoch: int) -> np.ndarray:
    """EL2N: the L2 norm of softmax(output) minus the one-hot label (Paul et al., 2021).

    Computed from the logits recorded for each example during the teacher's training epoch
    ``epoch`` (1-based). The paper averages over ~10 independently initialised short runs; this
    variant uses the single teacher run. High EL2N = hard example; the usual recipe keeps high.
    From per-example statistics: ``l2_error`` at that epoch (the same norm, recorded each epoch).
    Selection: per class by default (``balance="class"``: DeepCore, the KD paper's framework, balances
    every method it runs), budget ``round_half_up`` (kdprune's: every method at a fraction keeps the same count).
    """
    dyn = ctx.dynamics if ctx.dynamics is not None else ctx.stats["l2_error"]
    if not 1 <= epoch <= dyn.shape[0]:
        raise ValueError(f"el2n epoch must be in [1, {dyn.shape[0]}] (the teacher's epochs), got {epoch}")
    if ctx.dynamics is None:
        return np.asarray(dyn[epoch - 1], dtype=np.float64)
    p = softmax(dyn[epoch - 1].astype(np.float64))
    onehot = np.eye(ctx.num_classes)[ctx.labels]
    return np.linalg.norm(p - onehot, axis=1)
