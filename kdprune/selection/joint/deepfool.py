"""DeepFool distances (Ducoffe & Precioso 2018, "Adversarial Active Learning for Deep Networks: a
Margin Based Approach"; attack of Moosavi-Dezfooli et al. 2016; as DeepCore's ``DeepFool``)."""
from __future__ import annotations

import numpy as np

from kdprune.selection.joint.base import Option, Picked, register_joint


def candidate_classes(logits, candidates: int):
    """[N, m] the classes each example's attack may aim at: every class but the predicted one
    (``candidates`` 0 or >= C - 1), in class order, or the ``candidates`` highest other logits,
    highest first (ties: lowest class)."""
    import torch

    n, c = logits.shape
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, 1:]  # drop the predicted class
    if 0 < candidates < c - 1:
        return order[:, :candidates]
    return order.sort(dim=1).values


def inference_copy(model):
    """An eval-mode copy of ``model`` with the same function and frozen parameters, faster to
    differentiate w.r.t. its input: batch norms folded into the convolutions before them
    (``torch.fx``'s ``fuse``; a model that cannot be traced symbolically is copied as it is) and
    channels-last memory layout."""
    import copy

    import torch
    from torch.fx.experimental.optimization import fuse

    model = model.eval()
    try:
        fast = fuse(model)
    except Exception:  # not symbolically traceable (data-dependent control flow): unfused
        fast = copy.deepcopy(model)
    return fast.to(memory_format=torch.channels_last).eval().requires_grad_(False)


def boundary_gradients(model, x, orig, cand):
    """For each example i and candidate j: f_ij = z_c - z_o and w_ij = grad_x (z_c - z_o) at x_i,
    c = cand[i, j], o = orig[i]; returns (f [n, m], w [n, m, P]).

    One forward and one backward pass over the n*m rows (x_i repeated once per candidate, row
    (i, j) back-propagating its own difference): rows of an eval-mode model are independent, so the
    gradient of the summed differences w.r.t. a row is that row's own gradient.
    """
    import torch

    n, m = cand.shape
    rows = x[:, None].expand(n, m, *x.shape[1:]).reshape(n * m, *x.shape[1:])
    if rows.dim() == 4:
        rows = rows.contiguous(memory_format=torch.channels_last)
    rows = rows.detach().requires_grad_(True)
    with torch.enable_grad():
        z = model(rows)
        idx = torch.arange(n * m, device=z.device)
        diff = z[idx, cand.reshape(-1)] - z[idx, orig.repeat_interleave(m)]
        (grad,) = torch.autograd.grad(diff.sum(), rows)
    return diff.detach().view(n, m), grad.reshape(n, m, -1)


def deepfool_distances(model, inputs, max_iter: int = 50, overshoot: float = 0.02, candidates: int = 9,
                       batch_size: int = 512) -> np.ndarray:
    """L2 norm of the DeepFool perturbation that changes ``model``'s prediction, per input.

    Per example, with o the class predicted at x and r = 0: while the prediction at
    x + (1 + overshoot) r is still o and fewer than ``max_iter`` steps were taken, linearise the
    logits z there, take l = argmin over the candidate classes c of |z_c - z_o| / ||w_c||
    (w_c = grad z_c - grad z_o) and add (that ratio + 1e-4) * w_l / ||w_l|| to r. Returns
    ||(1 + overshoot) r|| (for an affine classifier: (1 + overshoot) * (distance to the nearest
    decision boundary + 1e-4), reached in one step). Examples not flipped within max_iter keep the
    norm reached; the flip is checked against every class.

    ``candidates``: the classes c the linearisation may aim at. 0, or any value >= C - 1: every
    class but o (Ducoffe & Precioso's definition). k: the k classes with the highest logits at the
    clean x, other than o, fixed for the whole attack (as the DeepFool authors' reference code
    does with its ``num_classes``, 10 counting o). It trades accuracy for cost: each step costs
    k vector-Jacobian products instead of C - 1 (time and memory proportional to k), and a
    boundary with a class outside the k is never aimed at, so the distance can only come out
    larger for an affine model (the minimum over fewer classes) and differs for a network whenever
    a step's nearest linearised boundary belongs to such a class. The default 9 is every class on
    10-class data.

    Batched: ``batch_size`` model rows per pass (each example uses one row per candidate, so
    about batch_size / k examples per Jacobian), examples leave the batch once flipped; the
    Jacobian rows come from :func:`boundary_gradients` (one backward pass for all candidates).
    Memory: the model's activations and input gradients for ``batch_size`` rows. The attack runs
    on :func:`inference_copy` of the model in eval mode (examples must be independent; batch norms
    folded, the same function up to float rounding).
    """
    import torch

    if candidates < 0:
        raise ValueError(f"deepfool: candidates must be >= 0 (0: all classes), got {candidates}")
    model = inference_copy(model)
    out = np.zeros(len(inputs))
    with torch.no_grad():
        for s in range(0, len(inputs), batch_size):
            x0 = inputs[s:s + batch_size].float()
            z0 = model(x0)
            orig = z0.argmax(1)
            cand = candidate_classes(z0, candidates)
            per_jac = max(1, batch_size // cand.shape[1])  # examples per Jacobian pass
            r = torch.zeros_like(x0)
            active = torch.arange(len(x0), device=x0.device)
            for it in range(max_iter):
                if it:  # which examples still have their original prediction
                    still = torch.cat([model(x0[a] + (1 + overshoot) * r[a]).argmax(1) == orig[a]
                                       for a in active.split(batch_size)])
                    active = active[still]
                if len(active) == 0:
                    break
                for a in active.split(per_jac):
                    f, w = boundary_gradients(model, x0[a] + (1 + overshoot) * r[a], orig[a], cand[a])
                    wn = w.norm(dim=2).clamp_min(1e-12)
                    ratio = f.abs() / wn
                    rows = torch.arange(len(a), device=x0.device)
                    l = ratio.argmin(1)
                    step = (ratio[rows, l] + 1e-4)[:, None] * w[rows, l] / wn[rows, l][:, None]
                    r[a] += step.view_as(r[a])
            out[s:s + len(x0)] = ((1 + overshoot) * r).flatten(1).norm(dim=1).cpu().numpy()
    return out


@register_joint(
    "deepfool", needs=("model",), seeded=False, balance=False,
    options={"max_iter": Option(int, 50, "DeepFool iterations per example (DeepCore: 50)", low=1),
             "overshoot": Option(float, 0.02, "DeepFool overshoot (Moosavi-Dezfooli et al.: 0.02)", low=0.0),
             "candidates": Option(int, 9, "classes each attack may aim at: the k highest other logits of the clean "
                                  "input; 0: all (Ducoffe & Precioso). The default 9 is all on 10-class data; "
                                  "smaller is proportionally cheaper and can overestimate the distance", low=0)},
    variant="DeepFool L2 attack on the trained teacher (DeepCore: a proxy trained for a few epochs), normalised "
            "inputs, candidate classes the 9 highest other logits (all classes on 10-class data); keep the k "
            "smallest perturbations, ties by position",
    cost="per example up to max_iter steps of one forward pass and min(candidates, C - 1) input-gradient "
         "backward passes (batched), plus one forward pass per step to check the flip; memory O(batch rows * P) "
         "activations")
def deepfool(inputs, k, rng, max_iter=50, overshoot=0.02, candidates=9):
    """DeepFool: keep the examples closest to the model's decision boundary, measured by the norm
    of the smallest (DeepFool-approximated) input perturbation that changes the prediction.

    Ducoffe & Precioso (2018) use it as a margin for active learning (query the smallest); as a
    coreset (DeepCore) the k smallest are kept. The distances depend neither on the budget nor
    on the pool's other examples, so per class and over the whole pool cost the same.
    """
    d = deepfool_distances(inputs.model, inputs.inputs, max_iter, overshoot, candidates)
    return Picked(np.lexsort((np.arange(len(d)), d))[:k])
