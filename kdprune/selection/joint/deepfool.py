"""DeepFool distances (Ducoffe & Precioso 2018, "Adversarial Active Learning for Deep Networks: a
Margin Based Approach"; attack of Moosavi-Dezfooli et al. 2016; as DeepCore's ``DeepFool``)."""
from __future__ import annotations

import numpy as np

from kdprune.selection.joint.base import Option, Picked, register_joint


def deepfool_distances(model, inputs, max_iter: int = 50, overshoot: float = 0.02, batch_size: int = 256) -> np.ndarray:
    """L2 norm of the DeepFool perturbation that changes ``model``'s prediction, per input.

    Per example, from x_0 = x and r = 0: while the prediction at x_0 + (1 + overshoot) r is still
    the original class o and fewer than ``max_iter`` steps were taken, linearise the logits f
    there, take l = argmin_{c != o} |f_c - f_o| / ||grad f_c - grad f_o|| and add
    (that ratio + 1e-4) * w_l / ||w_l|| (w_l = grad f_l - grad f_o) to r. Returns
    ||(1 + overshoot) r|| (for an affine classifier: (1 + overshoot) * (distance to the nearest
    decision boundary + 1e-4), reached in one step). Examples not flipped within max_iter keep the
    norm reached. Gradients by autograd, one backward per class on a batch (examples independent:
    the model must be in eval mode).
    """
    import torch

    model.eval()
    out = np.zeros(len(inputs))
    for s in range(0, len(inputs), batch_size):
        x0 = inputs[s:s + batch_size].float()
        with torch.no_grad():
            orig = model(x0).argmax(1)
        r = torch.zeros_like(x0)
        active = torch.arange(len(x0), device=x0.device)
        for _ in range(max_iter):
            xa = (x0[active] + (1 + overshoot) * r[active]).requires_grad_(True)
            logits = model(xa)
            o = orig[active]
            still = logits.argmax(1) == o
            if not still.any():
                break
            rows = torch.arange(len(active), device=x0.device)
            grads = torch.stack([torch.autograd.grad(logits[:, c].sum(), xa, retain_graph=c < logits.shape[1] - 1)[0]
                                 for c in range(logits.shape[1])], 1).flatten(2)  # [b, C, P]
            w = grads - grads[rows, o][:, None]
            f = (logits - logits[rows, o][:, None]).detach()
            wn = w.norm(dim=2)
            ratio = f.abs() / wn.clamp_min(1e-12)
            ratio[rows, o] = float("inf")
            l = ratio.argmin(1)
            step = (ratio[rows, l] + 1e-4)[:, None] * w[rows, l] / wn[rows, l].clamp_min(1e-12)[:, None]
            keep = still.nonzero().squeeze(1)
            r[active[keep]] += step[keep].view_as(x0[active[keep]])
            active = active[keep]
        out[s:s + len(x0)] = ((1 + overshoot) * r).flatten(1).norm(dim=1).detach().cpu().numpy()
    return out


@register_joint(
    "deepfool", needs=("model",), seeded=False, balance=False,
    options={"max_iter": Option(int, 50, "DeepFool iterations per example (DeepCore: 50)", low=1),
             "overshoot": Option(float, 0.02, "DeepFool overshoot (Moosavi-Dezfooli et al.: 0.02)", low=0.0)},
    variant="DeepFool L2 attack on the trained teacher (DeepCore: a proxy trained for a few epochs), all classes as "
            "candidates, normalised inputs; keep the k smallest perturbations, ties by position",
    cost="per example up to max_iter forward passes and C backward passes of the teacher; memory O(batch * C * P)")
def deepfool(inputs, k, rng, max_iter=50, overshoot=0.02):
    """DeepFool: keep the examples closest to the model's decision boundary, measured by the norm
    of the smallest (DeepFool-approximated) input perturbation that changes the prediction.

    Ducoffe & Precioso (2018) use it as a margin for active learning (query the smallest); as a
    coreset (DeepCore) the k smallest are kept.
    """
    d = deepfool_distances(inputs.model, inputs.inputs, max_iter, overshoot)
    return Picked(np.lexsort((np.arange(len(d)), d))[:k])
