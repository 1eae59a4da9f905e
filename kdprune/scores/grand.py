"""GraNd (Paul et al. 2021): expected norm of the per-example loss gradient, over proxy models near init.

Per-sample gradients are batched with ``torch.func`` (``functional_call`` + ``vmap(grad)``);
``grand_loop`` is the per-example reference with ``torch.autograd.grad`` (for tests and the benchmark).
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
                total[i : i + batch_size] += _full_norms(m, xb, y[i : i + batch_size])
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
    "grand",
    keep="high",
    variant="paper: gradient w.r.t. all parameters, models in eval mode, mean over proxy models",
    needs=("proxy_models", "inputs"),
)
def grand(ctx: ScoreContext, batch_size: int = 128) -> np.ndarray:
    """GraNd: E_models ||grad_theta CE(f(x), y)||_2, the expected per-example gradient norm.

    Paul et al. (2021), "Deep Learning on a Data Diet": at or near initialisation, averaged over
    independently initialised models (``ctx.proxy_models``) on ``ctx.inputs`` (normalised, [N, C, H, W]).
    All parameters; each model in eval mode (BatchNorm on running statistics). High = hard; keep high.
    """
    return _score(ctx, batch_size, last_layer=False)


@register_score(
    "grand_last_layer",
    keep="high",
    variant="DeepCore: gradient w.r.t. the final linear layer (model.head) only, closed form, models in "
    "eval mode, mean over proxy models",
    needs=("proxy_models", "inputs"),
)
def grand_last_layer(ctx: ScoreContext, batch_size: int = 1024) -> np.ndarray:
    """GraNd on the last layer: E_models ||grad_{W,b} CE||_2 = E ||p - onehot|| * sqrt(||h||^2 + 1).

    The DeepCore variant of Paul et al. (2021): the gradient w.r.t. the final linear layer only,
    with h the penultimate features and p the softmax; each model in eval mode. High = hard; keep high.
    """
    return _score(ctx, batch_size, last_layer=True)
