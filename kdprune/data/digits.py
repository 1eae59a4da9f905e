"""scikit-learn's digits: 1,797 8x8 grey images, 10 classes; shipped with scikit-learn.

It has no official test split, so a stratified 20% test split is cut from it with a fixed
seed (seed 0). Pixel values 0..16 are scaled to 0..255 uint8. Sample ids are the row numbers
in scikit-learn's own order.
"""
from __future__ import annotations

import numpy as np

from kdprune.data.base import RawDataset, register_dataset, stratified_split


@register_dataset("digits")
def load_digits(root: str | None = None) -> RawDataset:
    from sklearn.datasets import load_digits as _load  # scikit-learn ships the data

    bunch = _load()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    train_pos, test_pos = stratified_split(y, 0.2, seed=0)
    return RawDataset(
        train_x=x[train_pos],
        train_y=y[train_pos],
        test_x=x[test_pos],
        test_y=y[test_pos],
        classes=[str(c) for c in range(10)],
        source="sklearn.datasets.load_digits (UCI optical digits, 8x8)",
    )
