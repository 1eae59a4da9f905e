import numpy as np

from kdprune.options import Option
from kdprune.scores.base import ScoreContext, register_score, softmax


@register_score(
    "el2n_proxy", balance="class", budget="round_half_up",
    keep="high",
    hard="high",
    variant="paper / data_diet code: mean over independently initialised proxies of the error norm of a clean "
    "(no augmentation) eval-mode pass, read early (epoch `scores.el2n_proxy.epoch`) in a run on the teacher's full "
    "schedule (`teacher.epochs`), stopped at `proxy_epochs`",
    needs=("proxy_logits",),
    input_options={"epoch": Option(int, 3, "proxy epoch (1-based) the logits are read at: a clean eval-mode pass "
                                   "over the train split", low=1)},
    check=lambda o, p: (f"scores.el2n_proxy.epoch: {o['epoch']} is after the proxies' last epoch; allowed: "
                        f"1..scores.proxy_epochs ({p.scores.proxy_epochs})"
                        if o["epoch"] > p.scores.proxy_epochs else None),
)
def el2n_proxy(ctx: ScoreContext) -> np.ndarray:
    """EL2N averaged over proxies: mean over runs of ||softmax(logits) - onehot(label)||_2.

    Paul et al. (2021), "Deep Learning on a Data Diet", and their data_diet code: a fixed early
    checkpoint of a run on the full training schedule (their CIFAR recipe: epoch ~10-20 of 200),
    scored in eval mode on clean data, averaged over ~10 independently initialised models. Reads
    ``ctx.proxy_logits``: one [N, C] array per proxy, its logits at the read epoch. High = hard;
    the usual recipe keeps high. ``el2n`` is the single-teacher, training-pass variant.
    Selection: per class by default (``balance="class"``: DeepCore, the KD paper's framework, balances
    every method it runs), budget ``round_half_up`` (kdprune's: every method at a fraction keeps the same count).
    """
    runs = list(ctx.proxy_logits)
    if not runs:
        raise ValueError("el2n_proxy needs at least one proxy run in proxy_logits")
    onehot = np.eye(ctx.num_classes)[ctx.labels]
    total = np.zeros(len(ctx.ids))
    for i, logits in enumerate(runs):
        logits = np.asarray(logits, dtype=np.float64)
        if logits.shape != onehot.shape:
            raise ValueError(f"proxy run {i}: logits of shape {logits.shape}, expected {onehot.shape}")
        total += np.linalg.norm(softmax(logits) - onehot, axis=1)
    return total / len(runs)
