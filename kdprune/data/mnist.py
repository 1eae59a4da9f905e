"""MNIST and Fashion-MNIST from their official IDX files (gzipped or not).

IDX format (LeCun et al.): a big-endian header of two zero bytes, a type byte (0x08 =
unsigned byte), the number of dimensions, then one uint32 per dimension, then the data. Images
are magic 0x00000803 ([N, rows, cols]); labels 0x00000801 ([N]). The parser checks the magic,
the declared sizes against the bytes present and the label range, and raises
:class:`DatasetFormatError` naming the file otherwise.

A directory holds the four files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each either plain or ``.gz`` (plain
is preferred when both exist). Accepted directories under ``data.root``: the root itself or
torchvision's layout ``root/MNIST/raw`` / ``root/FashionMNIST/raw``.

Fashion-MNIST defaults to ``/usr/share/datasets/fashion-mnist`` (Debian package
``dataset-fashion-mnist``) when ``data.root`` is null. Official splits: 60,000 train / 10,000
test, 28x28 grey -> uint8 [N, 1, 28, 28]. Sample ids are the row numbers in the files.
"""
from __future__ import annotations

import gzip
import struct
import zlib
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

IDX_IMAGES_MAGIC = 0x00000803  # ubyte, 3 dims
IDX_LABELS_MAGIC = 0x00000801  # ubyte, 1 dim

FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
# some mirrors (e.g. Kaggle's MNIST) use a dot before "idx"
_ALT = {k: v.replace("-idx", ".idx") for k, v in FILES.items()}

FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def read_idx(path: str | Path, expect_magic: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes (``.gz`` decompressed on the fly) into a uint8 array."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                buf = f.read()
        else:
            buf = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncated gz is EOFError
        raise DatasetFormatError(f"{path}: cannot read as {'gzip' if path.suffix == '.gz' else 'a file'}: {e}") from e
    if len(buf) < 4:
        raise DatasetFormatError(f"{path}: {len(buf)} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">I", buf[:4])
    if magic != expect_magic:
        raise DatasetFormatError(
            f"{path}: not an IDX {'image' if expect_magic == IDX_IMAGES_MAGIC else 'label'} file: "
            f"magic number 0x{magic:08x}, expected 0x{expect_magic:08x} "
            "(unsigned bytes, "
            f"{expect_magic & 0xFF} dimension{'s' if expect_magic & 0xFF > 1 else ''})"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header ({len(buf)} bytes, need {header})")
    dims = struct.unpack(">" + "I" * ndim, buf[4:header])
    want = int(np.prod(dims, dtype=np.int64))
    have = len(buf) - header
    if have != want:
        raise DatasetFormatError(
            f"{path}: header declares shape {list(dims)} = {want} bytes of data but the file holds "
            f"{have} (truncated or corrupt)"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def _find(directory: Path, key: str) -> Path | None:
    for base in (FILES[key], _ALT[key]):
        for name in (base, base + ".gz"):
            p = directory / name
            if p.is_file():
                return p
    return None


def _locate(dirs: list[Path]) -> tuple[Path, dict[str, Path]] | None:
    """The first directory that holds all four files."""
    for d in dirs:
        found = {k: _find(d, k) for k in FILES}
        if all(found.values()):
            return d, found  # type: ignore[return-value]
    return None


def _read_split(paths: dict[str, Path], split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(paths[f"{split}_x"], IDX_IMAGES_MAGIC)
    y = read_idx(paths[f"{split}_y"], IDX_LABELS_MAGIC)
    if len(x) != len(y):
        raise DatasetFormatError(
            f"{paths[f'{split}_x']} holds {len(x)} images but {paths[f'{split}_y']} holds {len(y)} labels"
        )
    if len(y) and int(y.max()) >= num_classes:
        raise DatasetFormatError(
            f"{paths[f'{split}_y']}: label {int(y.max())} out of range for {num_classes} classes"
        )
    return np.ascontiguousarray(x[:, None, :, :]), y.astype(np.int64)


def load_idx_dataset(
    name: str,
    dirs: list[Path],
    classes: list[str],
    description: str,
    howto: str,
    download: tuple[str, dict] | None = None,
    root: str | None = None,
) -> RawDataset:
    """Load the four IDX files from the first of ``dirs`` that holds them all."""
    hit = _locate(dirs)
    if hit is None and download is not None and download_allowed():
        torchvision_download(name, root, [download])
        hit = _locate(dirs)
    if hit is None:
        wanted = ", ".join(f"{v}[.gz]" for v in FILES.values())
        looked = "; ".join(str(d) for d in dirs)
        raise DatasetUnavailable(
            f"{name}: the IDX files ({wanted}) were not found in any of: {looked}. To get them: {howto}"
        )
    d, paths = hit
    train_x, train_y = _read_split(paths, "train", len(classes))
    test_x, test_y = _read_split(paths, "test", len(classes))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DatasetFormatError(
            f"{d}: train images are {train_x.shape[2:]} but test images are {test_x.shape[2:]}"
        )
    files = ", ".join(p.name for p in paths.values())
    return RawDataset(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        classes=list(classes),
        source=f"{description}, IDX files in {d.resolve()} ({files})",
    )


def _dirs(root: str, tv_folder: str) -> list[Path]:
    r = Path(root).expanduser()
    return [r, r / tv_folder / "raw"]


@register_dataset("fashion_mnist")
def load_fashion_mnist(root: str | None = None) -> RawDataset:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 + 10,000 28x28 grey images of 10 clothing classes.

    ``root`` null: the Debian package's ``/usr/share/datasets/fashion-mnist``. Otherwise the IDX
    files directly in ``root`` or in torchvision's ``root/FashionMNIST/raw``.
    """
    if root is None:
        dirs = [Path(FASHION_MNIST_DEFAULT_ROOT)]
        howto = (
            "install the Debian package: apt-get install dataset-fashion-mnist "
            f"(it puts them in {FASHION_MNIST_DEFAULT_ROOT}), or set data.root to a directory "
            "holding them, or " + torchvision_howto(["FashionMNIST(ROOT, download=True)"], None)
        )
        download = None  # the default location is the Debian package's, never downloaded into
    else:
        dirs = _dirs(root, "FashionMNIST")
        howto = (
            f"put the four IDX files in {Path(root).expanduser()} (e.g. copy them from "
            f"{FASHION_MNIST_DEFAULT_ROOT} after apt-get install dataset-fashion-mnist, or set "
            "data.root: null to read that directory), or "
            + torchvision_howto(["FashionMNIST(ROOT, download=True)"], root)
        )
        download = ("FashionMNIST", {"train": True})
    return load_idx_dataset(
        "fashion_mnist", dirs, FASHION_MNIST_CLASSES, "Fashion-MNIST (Zalando Research)", howto, download, root
    )


# what `kdprune data` installs when data.root is null and apt-get is usable
load_fashion_mnist.debian_package = "dataset-fashion-mnist"


@register_dataset("mnist")
def load_mnist(root: str | None = None) -> RawDataset:
    """MNIST (LeCun et al. 1998): 60,000 + 10,000 28x28 grey handwritten digits.

    The IDX files directly in ``data.root`` or in torchvision's ``root/MNIST/raw``.
    """
    howto = (
        "no copy of MNIST ships with this machine; "
        + torchvision_howto(["MNIST(ROOT, download=True)"], root)
    )
    if root is None:
        raise DatasetUnavailable(f"mnist: data.root is not set; it must point at the MNIST IDX files. To get them: {howto}")
    return load_idx_dataset(
        "mnist", _dirs(root, "MNIST"), [str(c) for c in range(10)], "MNIST (LeCun et al.)", howto,
        ("MNIST", {"train": True}), root,
    )
