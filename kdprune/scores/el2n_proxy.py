import numpy as np

from kdprune.scores.base import ScoreContext, register_score, softmax


@register_score(
    "el2n_proxy",
    keep="high",
    variant="paper: mean over independently initialised short proxy runs of their training-pass logits "
    "at epoch `epoch` (1-based)",
    needs=("proxy_dynamics",),
)
def el2n_proxy(ctx: ScoreContext, epoch: int) -> np.ndarray:
    """EL2N averaged over proxies: mean over runs of ||softmax(logits) - onehot(label)||_2.

    Paul et al. (2021), "Deep Learning on a Data Diet": the error L2 norm early in training
    (their CIFAR recipe: epoch ~20), averaged over ~10 independently initialised models. Reads
    ``ctx.proxy_dynamics``, one [E, N, C] logit array per proxy run, at epoch ``epoch`` (1-based).
    High = hard; the usual recipe keeps high. ``el2n`` is the single-teacher variant.
    """
    runs = list(ctx.proxy_dynamics)
    if not runs:
        raise ValueError("el2n_proxy needs at least one proxy run in proxy_dynamics")
    onehot = np.eye(ctx.num_classes)[ctx.labels]
    total = np.zeros(len(ctx.ids))
    for i, dyn in enumerate(runs):
        if not 1 <= epoch <= dyn.shape[0]:
            raise ValueError(f"el2n_proxy epoch must be in [1, {dyn.shape[0]}] (epochs of proxy run {i}), got {epoch}")
        p = softmax(np.asarray(dyn[epoch - 1], dtype=np.float64))
        total += np.linalg.norm(p - onehot, axis=1)
    return total / len(runs)
