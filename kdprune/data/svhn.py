"""SVHN (Netzer et al. 2011), cropped-digits format: 73,257 train / 26,032 test 32x32 colour digits.

Reads ``train_32x32.mat`` and ``test_32x32.mat`` from ``data.root`` (where torchvision's
``SVHN(root, split=..., download=True)`` puts them) with :func:`scipy.io.loadmat`. In the files
``X`` is uint8 [32, 32, 3, N] and ``y`` is [N, 1] with label 10 meaning digit 0; here images
are uint8 [N, 3, 32, 32] and labels 0..9 (10 -> 0). The optional ``extra_32x32.mat`` is not
used. Sample ids are the row order of the files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kdprune.data.base import (
    DatasetFormatError,
    DatasetUnavailable,
    RawDataset,
    download_allowed,
    register_dataset,
    torchvision_download,
    torchvision_howto,
)

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        m = loadmat(path, variable_names=["X", "y"])
    except Exception as e:  # scipy raises ValueError/TypeError/OSError/MatReadError for bad files
        raise DatasetFormatError(f"{path}: cannot read as a MATLAB .mat file: {type(e).__name__}: {e}") from e
    if "X" not in m or "y" not in m:
        raise DatasetFormatError(f"{path}: expected variables 'X' and 'y', found {sorted(k for k in m if not k.startswith('__'))}")
    x, y = m["X"], np.asarray(m["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise DatasetFormatError(f"{path}: 'X' must be uint8 [H, W, 3, N], found {x.dtype} {list(x.shape)}")
    if len(y) != x.shape[3]:
        raise DatasetFormatError(f"{path}: {x.shape[3]} images but {len(y)} labels")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() > 10):
        raise DatasetFormatError(f"{path}: labels outside 0..10")
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y


@register_dataset("svhn")
def load_svhn(root: str | None = None) -> RawDataset:
    howto = torchvision_howto(["SVHN(ROOT, split='train', download=True)", "SVHN(ROOT, split='test', download=True)"], root)
    if root is None:
        raise DatasetUnavailable(
            f"svhn: data.root is not set; it must point at the directory holding {FILES['train']} and "
            f"{FILES['test']}. No copy ships with this machine; to get them: {howto}"
        )
    r = Path(root).expanduser()
    missing = [f for f in FILES.values() if not (r / f).is_file()]
    if missing and download_allowed():
        torchvision_download("svhn", root, [("SVHN", {"split": s}) for s, f in FILES.items() if f in missing])
        missing = [f for f in FILES.values() if not (r / f).is_file()]
    if missing:
        raise DatasetUnavailable(f"svhn: {', '.join(missing)} not found in {r}. To get them: {howto}")
    train_x, train_y = _read_mat(r / FILES["train"])
    test_x, test_y = _read_mat(r / FILES["test"])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DatasetFormatError(f"{r}: train images are {train_x.shape[1:]} but test images are {test_x.shape[1:]}")
    return RawDataset(
        train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
        classes=[str(c) for c in range(10)],
        source=f"SVHN cropped digits (Netzer et al. 2011), {', '.join(FILES.values())} in {r.resolve()}",
    )
