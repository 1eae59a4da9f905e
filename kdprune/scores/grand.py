"""GraNd (Paul et al. 2021): expected norm of the per-example loss gradient, over proxy models near init.

Per-sample gradient norms come from one batched backward pass with closed forms per layer (Conv2d,
Linear, BatchNorm2d: ``_layer_norms``); models with other parametrized layers use batched
per-sample gradients from ``torch.func`` (``functional_call`` + ``vmap(grad)``). ``grand_loop`` is
the per-example reference with ``torch.autograd.grad`` (for tests and the benchmark).
Every model is used in eval mode (BatchNorm reads its running statistics, so an example's gradient does
not depend on the rest of its batch) on a private copy: the caller's models are never changed.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from kdprune.options import Option
from kdprune.scores.base import ScoreContext, register_score

Transform = Optional[Callable[[torch.Tensor], torch.Tensor]]


def _eval_copy(model: nn.Module, device: torch.device) -> nn.Module:
    return copy.deepcopy(model).to(device).eval()


def _full_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||d CE(model(x_i), y_i) / d theta||_2 over all parameters, for every row of one batch."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, (p, buffers), (xi[None],)), yi[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.stack([g.flatten(1).pow(2).sum(1) for g in grads.values()]).sum(0).sqrt()


_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def _layer_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
    """The same norms as ``_full_norms`` from one batched backward pass, per layer in closed form
    (the per-example gradient-norm identities used for differentially private training): for a
    layer with input a_i and output gradient g_i of example i,

    - Linear: ||dW_i||^2 = ||a_i||^2 ||g_i||^2, ||db_i||^2 = ||g_i||^2;
    - Conv2d: dW_i = G_i U_i^T with U_i = unfold(a_i) [in*k*k, P], G_i [out, P]: its squared norm
      from dW_i itself or, when smaller, from the P x P Gram matrices, <U_i^T U_i, G_i^T G_i>
      (one bmm each for the batch); db_i = G_i summed over positions;
    - BatchNorm2d in eval mode: dgamma_i = sum over positions of g_i * x_hat_i, dbeta_i = sum of g_i.

    Returns None (the caller falls back to vmap) when the model has a parameter outside these
    layers, a layer used twice in one forward pass, a grouped or non-zero-padded convolution, or a
    Linear on more than 2-d input."""
    layers = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    for m in layers:
        if not isinstance(m, _LAYERS):
            return None
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str)):
            return None
        if isinstance(m, nn.BatchNorm2d) and (m.training or not m.track_running_stats or not m.affine):
            return None
    seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
    twice = []

    def keep(m, inputs, out):
        if m in seen:
            twice.append(m)
        seen[m] = (inputs[0].detach(), out)
        return out.clone()  # a following in-place op (ReLU(inplace=True)) must not overwrite the tensor kept here

    handles = [m.register_forward_hook(keep) for m in layers]
    try:
        with torch.enable_grad():
            logits = model(x)
            if twice or any(m not in seen for m in layers):
                return None
            if any(a.dim() != 2 for m, (a, _) in seen.items() if isinstance(m, nn.Linear)):
                return None
            loss = F.cross_entropy(logits, y, reduction="sum")  # row i of each output gradient: example i's
            outs = [seen[m][1] for m in layers]
            grads = torch.autograd.grad(loss, outs)
    finally:
        for h in handles:
            h.remove()
    sq = torch.zeros(len(x), device=x.device, dtype=torch.float32)
    for m, g in zip(layers, grads):
        a = seen[m][0]
        if isinstance(m, nn.Linear):
            gg = g.pow(2).sum(1)
            sq += a.pow(2).sum(1) * gg + (gg if m.bias is not None else 0.0)
        elif isinstance(m, nn.Conv2d):
            u = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)  # [B, I*k*k, P]
            gf = g.flatten(2)  # [B, O, P]
            ik, o, p = u.shape[1], gf.shape[1], gf.shape[2]
            if p * (ik + o) < o * ik:  # ||G U^T||_F^2 = <U^T U, G^T G>: P x P Gram matrices are smaller
                sq += (torch.bmm(u.transpose(1, 2), u) * torch.bmm(gf.transpose(1, 2), gf)).flatten(1).sum(1)
            else:
                sq += torch.bmm(gf, u.transpose(1, 2)).flatten(1).pow(2).sum(1)
            if m.bias is not None:
                sq += gf.sum(2).pow(2).sum(1)
        else:  # BatchNorm2d, eval mode
            x_hat = (a - m.running_mean[None, :, None, None]) / torch.sqrt(m.running_var[None, :, None, None] + m.eps)
            sq += (g * x_hat).sum((2, 3)).pow(2).sum(1) + g.sum((2, 3)).pow(2).sum(1)
    return sq.sqrt()


def _head_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Closed form for the final linear layer: grad_W = (p - e_y) h^T, grad_b = p - e_y, so
    ||g|| = ||p - e_y|| * sqrt(||h||^2 + 1) (without the +1 when the head has no bias)."""
    h = model.features(x)
    err = torch.softmax(model.head(h), dim=1) - F.one_hot(y, model.head.out_features).to(h.dtype)
    hh = h.pow(2).sum(1) + (1.0 if model.head.bias is not None else 0.0)
    return err.norm(dim=1) * hh.sqrt()


def grand_norms(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, batch_size: int = 128,
                last_layer: bool = False, transform: Transform = None) -> torch.Tensor:
    """GraNd per example [N] (float32, on x's device): per-sample gradient norm averaged over ``models``.

    ``x`` [N, C, H, W] float inputs, already normalised (or raw, with ``transform`` applied per
    batch, e.g. ``DeviceData.normalise`` on uint8); ``y`` [N] int64 labels. ``last_layer`` restricts
    the gradient to ``model.head`` (closed form from features and softmax). Memory per batch of the
    full variant: ``batch_size`` x number of parameters floats.
    """
    if not models:
        raise ValueError("GraNd needs at least one proxy model")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = x.device
    y = torch.as_tensor(y, dtype=torch.int64, device=device)
    total = torch.zeros(len(x), device=device)
    for model in models:
        m = _eval_copy(model, device)
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            xb = (xb if transform is None else transform(xb)).float()
            if last_layer:
                with torch.no_grad():
                    total[i : i + batch_size] += _head_norms(m, xb, y[i : i + batch_size])
            else:
                norms = _layer_norms(m, xb, y[i : i + batch_size])
                if norms is None:
                    norms = _full_norms(m, xb, y[i : i + batch_size])
                total[i : i + batch_size] += norms.detach()
    return total / len(models)


def grand_loop(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, last_layer: bool = False,
               transform: Transform = None) -> torch.Tensor:
    """Reference GraNd: one backward pass per example with ``torch.autograd.grad``; same output as grand_norms."""
    device = x.device
    y = torch.as_tensor(y, dtype=torch.int64, device=device)
    total = torch.zeros(len(x), device=device)
    for model in models:
        m = _eval_copy(model, device)
        params = list(m.head.parameters() if last_layer else m.parameters())
        for i in range(len(x)):
            xi = x[i : i + 1] if transform is None else transform(x[i : i + 1])
            loss = F.cross_entropy(m(xi.float()), y[i : i + 1])
            total[i] += torch.stack([g.pow(2).sum() for g in torch.autograd.grad(loss, params)]).sum().sqrt().detach()
    return total / len(models)


def _score(ctx: ScoreContext, batch_size: int, last_layer: bool) -> np.ndarray:
    if len(ctx.inputs) != len(ctx.ids):
        raise ValueError(f"inputs has {len(ctx.inputs)} rows, expected {len(ctx.ids)} (one per id)")
    y = torch.as_tensor(ctx.labels, dtype=torch.int64)
    return grand_norms(list(ctx.proxy_models), ctx.inputs, y, batch_size, last_layer).cpu().double().numpy()


@register_score(
    "grand", balance="class", budget="round_half_up",
    keep="high",
    hard="high",
    variant="paper: gradient w.r.t. all parameters, models in eval mode, mean over proxy models",
    needs=("proxy_models", "inputs"),
    options={"batch_size": Option(int, 128, "examples per backward pass (memory vs speed; same values)", low=1)},
    check=lambda o, p: (f"scores.grand_epoch: {p.scores.grand_epoch} is after the proxies' last epoch; allowed: "
                        f"0..scores.proxy_epochs ({p.scores.proxy_epochs})"
                        if p.scores.grand_epoch > p.scores.proxy_epochs else None),
)
def grand(ctx: ScoreContext, batch_size: int = 128) -> np.ndarray:
    """GraNd: E_models ||grad_theta CE(f(x), y)||_2, the expected per-example gradient norm.

    Paul et al. (2021), "Deep Learning on a Data Diet": at or near initialisation, averaged over
    independently initialised models (``ctx.proxy_models``) on ``ctx.inputs`` (normalised, [N, C, H, W]).
    All parameters; each model in eval mode (BatchNorm on running statistics). High = hard; keep high.
    Selection: per class by default (``balance="class"``: DeepCore, the KD paper's framework, balances
    every method it runs), budget ``round_half_up`` (kdprune's: every method at a fraction keeps the same count).
    """
    return _score(ctx, batch_size, last_layer=False)


@register_score(
    "grand_last_layer", balance="class", budget="round_half_up",
    keep="high",
    variant="DeepCore: gradient w.r.t. the final linear layer (model.head) only, closed form, models in "
    "eval mode, mean over proxy models",
    hard="high",
    needs=("proxy_models", "inputs"),
    options={"batch_size": Option(int, 1024, "examples per forward pass (memory vs speed; same values)", low=1)},
    check=lambda o, p: (f"scores.grand_epoch: {p.scores.grand_epoch} is after the proxies' last epoch; allowed: "
                        f"0..scores.proxy_epochs ({p.scores.proxy_epochs})"
                        if p.scores.grand_epoch > p.scores.proxy_epochs else None),
)
def grand_last_layer(ctx: ScoreContext, batch_size: int = 1024) -> np.ndarray:
    """GraNd on the last layer: E_models ||grad_{W,b} CE||_2 = E ||p - onehot|| * sqrt(||h||^2 + 1).

    The DeepCore variant of Paul et al. (2021): the gradient w.r.t. the final linear layer only,
    with h the penultimate features and p the softmax; each model in eval mode. High = hard; keep high.
    Selection: per class by default (``balance="class"``: DeepCore, the KD paper's framework, balances
    every method it runs), budget ``round_half_up`` (kdprune's: every method at a fraction keeps the same count).
    """
    return _score(ctx, batch_size, last_layer=True)
