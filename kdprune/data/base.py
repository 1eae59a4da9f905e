"""Canonical dataset form shared by every stage.

A dataset loader returns a :class:`RawDataset`: uint8 images in NCHW, int64 labels, and for the
training pool a stable int64 id per example (its index in the source's own training order).
The prepare stage holds a validation split out of the training pool with
:func:`stratified_split`; sample ids survive the split, so every later stage refers to ids.

Loaders read local files only. Missing files raise :class:`DatasetUnavailable` whose message
says exactly how to get them; a file that exists but is not in the expected format raises
:class:`DatasetFormatError` naming the file. Loaders that torchvision can download fetch only
when the environment variable ``KDPRUNE_ALLOW_DOWNLOAD=1`` is set.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from kdprune.registry import Registry


@dataclass
class RawDataset:
    train_x: np.ndarray  # uint8 [N, C, H, W]
    train_y: np.ndarray  # int64 [N]
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    source: str

    def __post_init__(self) -> None:
        for name in ("train_x", "test_x"):
            arr = getattr(self, name)
            if arr.dtype != np.uint8 or arr.ndim != 4:
                raise ValueError(f"{name} must be uint8 NCHW, got {arr.dtype} {arr.shape}")
        for name in ("train_y", "test_y"):
            if getattr(self, name).dtype != np.int64:
                raise ValueError(f"{name} must be int64")


@dataclass
class PreparedSplit:
    """One split as stored on disk: images, labels and stable sample ids. A streamed split has no
    images (``x`` None) but its index: each row's file (relative to data.root) and byte size."""

    x: Optional[np.ndarray]  # uint8 [N, C, H, W]; None when streamed
    y: np.ndarray  # int64 [N]
    ids: np.ndarray  # int64 [N], sorted ascending
    files: Optional[np.ndarray] = None  # bytes [N]: UTF-8 paths relative to data.root (streamed)
    sizes: Optional[np.ndarray] = None  # int64 [N]: each file's size in bytes when prepared (streamed)

    @property
    def streamed(self) -> bool:
        return self.x is None

    def __len__(self) -> int:
        return len(self.y)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of the given sample ids; unknown ids are an error."""
        pos = np.searchsorted(self.ids, ids)
        pos = np.clip(pos, 0, len(self.ids) - 1)
        bad = self.ids[pos] != ids
        if bad.any():
            raise KeyError(f"{int(bad.sum())} sample ids are not in this split, e.g. {ids[bad][:5].tolist()}")
        return pos


DATASETS: Registry[Callable[..., RawDataset]] = Registry("dataset")
register_dataset = DATASETS.register

DOWNLOAD_ENV = "KDPRUNE_ALLOW_DOWNLOAD"


class DatasetUnavailable(RuntimeError):
    """The dataset's files are not on this machine; the message says how to get them."""


class DatasetFormatError(ValueError):
    """A dataset file exists but is not in the expected format; the message names the file."""


def download_allowed() -> bool:
    """True only when ``KDPRUNE_ALLOW_DOWNLOAD=1``: loaders never reach the network otherwise."""
    return os.environ.get(DOWNLOAD_ENV, "").strip() == "1"


def torchvision_howto(calls: Sequence[str], root: str | os.PathLike | None) -> str:
    """How to fetch a torchvision-downloadable dataset, as one paste-able instruction.

    ``calls`` are constructor calls with ``ROOT`` as the root argument, e.g.
    ``'CIFAR10(ROOT, download=True)'``.
    """
    where = str(Path(root).expanduser().resolve()) if root else "ROOT"
    code = "; ".join(f"torchvision.datasets.{c}" for c in calls).replace("ROOT", repr(where))
    return (
        f"download it with torchvision on a machine with internet: "
        f"python -c \"import torchvision; {code}\" then copy {where} to this machine and set "
        f"data.root: {where} (or, if this machine has internet, set data.root and run with "
        f"{DOWNLOAD_ENV}=1 to let kdprune download it)"
    )


def torchvision_download(dataset: str, root: str | os.PathLike | None, calls: Sequence[tuple[str, dict]]) -> None:
    """Download with torchvision into ``root``; only called when :func:`download_allowed`.

    ``calls`` are (torchvision.datasets class name, keyword arguments) pairs.
    """
    if not root:
        raise DatasetUnavailable(
            f"{dataset}: {DOWNLOAD_ENV}=1 is set but data.root is not: set data.root to the "
            "directory to download into"
        )
    import torchvision.datasets as tvd  # only on explicit request

    root = str(Path(root).expanduser())
    for cls_name, kwargs in calls:
        try:
            getattr(tvd, cls_name)(root, download=True, **kwargs)
        except Exception as e:  # network errors, checksum errors, disk full...
            raise DatasetUnavailable(
                f"{dataset}: download with torchvision.datasets.{cls_name} into {root} failed: "
                f"{type(e).__name__}: {e}"
            ) from e


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into (keep, held_out), holding out ``fraction`` of every class.

    Deterministic for a given seed; both outputs are sorted.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        pos = np.flatnonzero(y == c)
        n_out = int(round(len(pos) * fraction))
        held.append(rng.permutation(pos)[:n_out])
    held_out = np.sort(np.concatenate(held))
    keep = np.setdiff1d(np.arange(len(y)), held_out)
    return keep, held_out


def stratified_subsample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted positions of exactly ``n`` examples, each class in proportion to its share of ``y``
    (largest remainders get the rounding); deterministic for a given seed."""
    if not 0 < n <= len(y):
        raise ValueError(f"subsample size must be in [1, {len(y)}], got {n}")
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * (n / len(y))
    take = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - take), kind="stable")[: n - int(take.sum())]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))
