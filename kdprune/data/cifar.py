"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from the official "python version" archives.

Layout under ``data.root`` (as torchvision's ``CIFAR10(root, download=True)`` leaves it, or
as extracted from cifar-10-python.tar.gz / cifar-100-python.tar.gz):

- ``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
  ``batches.meta`` (``label_names``); each batch is a dict with ``data`` (uint8 [N, 3072], rows
  of 1024 red, 1024 green, 1024 blue values, each plane row-major 32x32) and ``labels``.
- ``cifar-100-python/``: ``train``, ``test`` with ``fine_labels`` (100 classes) and ``meta``
  (``fine_label_names``).

``data.root`` may also be that folder itself. Images -> uint8 [N, 3, 32, 32]; official splits
50,000 / 10,000; sample ids are the row order of the batches (data_batch_1 first).

The files are Python pickles: that is the official distribution format, and pickle is used
here only to read these official CIFAR files. They are read with
``pickle.Unpickler(f, encoding='bytes')`` restricted to the few globals a pickled NumPy array
needs, so a tampered file cannot run code; nothing in kdprune writes pickles.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

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

# the globals a pickled ndarray/dtype needs (NumPy 1.x and 2.x module names), and
# _codecs.encode, which Python 3 protocol-2 pickles use for bytes
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def read_cifar_pickle(path: Path) -> dict:
    """One official CIFAR pickle (batch or meta) as a dict with bytes keys."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise DatasetFormatError(f"{path}: not an official CIFAR python pickle: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def _get(d: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):  # bytes keys in the official files; str if re-pickled in Python 3
        if k in d:
            return d[k]
    keys = ", ".join(sorted(k.decode() if isinstance(k, bytes) else str(k) for k in d))
    raise DatasetFormatError(f"{path}: no {key!r} entry (entries: {keys})")


def _read_batches(paths: list[Path], label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for p in paths:
        d = read_cifar_pickle(p)
        data = np.asarray(_get(d, "data", p))
        labels = np.asarray(_get(d, label_key, p))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetFormatError(f"{p}: 'data' must be uint8 [N, 3072], found {data.dtype} {list(data.shape)}")
        if labels.shape != (len(data),):
            raise DatasetFormatError(f"{p}: {len(data)} images but {label_key!r} has shape {list(labels.shape)}")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DatasetFormatError(f"{p}: {label_key!r} outside 0..{num_classes - 1}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels.astype(np.int64))
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def _class_names(path: Path, key: str) -> list[str]:
    names = _get(read_cifar_pickle(path), key, path)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _find_dir(root: Path, folder: str, marker: str) -> Path | None:
    for d in (root / folder, root):
        if (d / marker).is_file():
            return d
    return None


def _load(
    name: str, root: str | None, folder: str, train: list[str], test: list[str],
    meta: str, names_key: str, label_key: str, tv_class: str, description: str,
) -> RawDataset:
    howto = torchvision_howto([f"{tv_class}(ROOT, download=True)"], root)
    if root is None:
        raise DatasetUnavailable(
            f"{name}: data.root is not set; it must point at the directory holding {folder}/. "
            f"No copy ships with this machine; to get it: {howto}"
        )
    r = Path(root).expanduser()
    files = train + test + [meta]
    d = _find_dir(r, folder, meta)
    if d is None and download_allowed():
        torchvision_download(name, root, [(tv_class, {"train": True})])
        d = _find_dir(r, folder, meta)
    if d is None:
        raise DatasetUnavailable(
            f"{name}: {folder}/{meta} not found in {r / folder} or {r}. To get it: {howto}"
        )
    missing = [f for f in files if not (d / f).is_file()]
    if missing:
        raise DatasetUnavailable(f"{name}: {d} lacks {', '.join(missing)} (incomplete extraction?). To get it: {howto}")
    classes = _class_names(d / meta, names_key)
    train_x, train_y = _read_batches([d / f for f in train], label_key, len(classes))
    test_x, test_y = _read_batches([d / f for f in test], label_key, len(classes))
    return RawDataset(
        train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=classes,
        source=f"{description}, official python batches in {d.resolve()} ({', '.join(files)})",
    )


@register_dataset("cifar10")
def load_cifar10(root: str | None = None) -> RawDataset:
    """CIFAR-10: 50,000 + 10,000 32x32 colour images, 10 classes."""
    return _load(
        "cifar10", root, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
        "batches.meta", "label_names", "labels", "CIFAR10", "CIFAR-10 (Krizhevsky 2009)",
    )


@register_dataset("cifar100")
def load_cifar100(root: str | None = None) -> RawDataset:
    """CIFAR-100: 50,000 + 10,000 32x32 colour images, 100 fine classes (the coarse labels are unused)."""
    return _load(
        "cifar100", root, "cifar-100-python", ["train"], ["test"],
        "meta", "fine_label_names", "fine_labels", "CIFAR100", "CIFAR-100 (Krizhevsky 2009)",
    )
