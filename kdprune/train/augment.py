"""Vectorised on-device augmentation with per-sample parameters drawn per epoch.

Augmentation parameters are drawn for *every* example of the full training split at each epoch
from a generator seeded by (aug_seed, epoch), then looked up by the example's position. A run
on a subset therefore applies exactly the shifts and flips the full run applies to the same
examples at the same epoch: the subset is the only thing that changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EpochAug:
    dy: torch.Tensor  # int64 [N] vertical shift in [-pad, pad]
    dx: torch.Tensor  # int64 [N]
    flip: torch.Tensor | None  # bool [N], None when flipping is off


def _generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))
    return g


def epoch_augmentation(n: int, epoch: int, seed: int, pad: int, flip: bool, device: torch.device) -> EpochAug:
    g = _generator(seed, epoch, device)
    if pad > 0:
        shifts = torch.randint(-pad, pad + 1, (2, n), generator=g, device=device)
    else:
        shifts = torch.zeros((2, n), dtype=torch.int64, device=device)
    flips = (torch.rand(n, generator=g, device=device) < 0.5) if flip else None
    return EpochAug(dy=shifts[0], dx=shifts[1], flip=flips)


def augment_batch(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor | None, pad: int) -> torch.Tensor:
    """Translate each image by (dy, dx) with zero padding, then flip horizontally where asked.

    x: [B, C, H, W]; dy, dx: int [B] in [-pad, pad]; flip: bool [B] or None. One gather, no Python loop.
    """
    if pad > 0:
        b, c, h, w = x.shape
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        rows = torch.arange(h, device=x.device)[None, :] + (pad - dy)[:, None]  # [B, H]
        cols = torch.arange(w, device=x.device)[None, :] + (pad - dx)[:, None]  # [B, W]
        bidx = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip is not None:
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x
