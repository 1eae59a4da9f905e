"""The user's own images in torchvision's ImageFolder convention.

``data.root`` holds ``train/`` and ``test/``, each with one folder per class::

    root/train/cat/001.png   root/test/cat/101.png
    root/train/dog/002.jpg   root/test/dog/102.jpg

Class order is the sorted class-folder names, and must be identical in train and test. Files
are found recursively inside a class folder, like torchvision, with the extensions
.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp (any case); other files and hidden entries are
ignored. Sample ids are the order of (class, relative path) sorted by name.

In memory (``data.loader: memory``) images are decoded with Pillow and not resized: all images must have the same width and height
(the error names the first file that differs). If every image is greyscale (modes 1, L, LA)
they are kept as one channel, otherwise all are converted to RGB (alpha dropped). Only 8-bit
modes are accepted. Result: uint8 [N, C, H, W].

Streamed (``data.loader: stream``, or ``auto`` above the memory budget) the folder may hold any number
of images of any sizes: the lister below returns the same files in the same order (so the same
sample ids), and kdprune/data/stream.py reads them while training.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kdprune.data.base import DatasetFormatError, DatasetUnavailable, RawDataset, register_dataset
from kdprune.data.stream import FileListing, register_files

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GREY_MODES = {"1", "L", "LA"}
COLOUR_MODES = {"P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"}

LAYOUT = "root/train/<class>/<image> and root/test/<class>/<image> (torchvision ImageFolder convention)"


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _images(class_dir: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(IMG_EXTENSIONS):
                out.append(Path(dirpath) / f)
    return sorted(out, key=lambda p: p.relative_to(class_dir).as_posix())


def _scan(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    splits = {}
    classes: dict[str, list[str]] = {}
    for split in ("train", "test"):
        d = root / split
        if not d.is_dir():
            raise DatasetUnavailable(f"imagefolder: {d} is not a directory; data.root must be laid out as {LAYOUT}")
        classes[split] = _class_dirs(d)
        if not classes[split]:
            raise DatasetUnavailable(f"imagefolder: {d} has no class folders; expected {LAYOUT}")
    if classes["train"] != classes["test"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"]))
        only_test = sorted(set(classes["test"]) - set(classes["train"]))
        raise DatasetFormatError(
            f"imagefolder: class folders differ between {root / 'train'} and {root / 'test'}: "
            f"only in train: {only_train or 'none'}; only in test: {only_test or 'none'}. "
            "Both splits need the same class folders so labels mean the same thing."
        )
    names = classes["train"]
    for split in ("train", "test"):
        items = []
        for label, c in enumerate(names):
            files = _images(root / split / c)
            if not files and split == "train":
                raise DatasetFormatError(
                    f"imagefolder: {root / split / c} holds no images (extensions {' '.join(IMG_EXTENSIONS)})"
                )
            items += [(f, label) for f in files]
        if not items:
            raise DatasetFormatError(f"imagefolder: {root / split} holds no images (extensions {' '.join(IMG_EXTENSIONS)})")
        splits[split] = items
    return names, splits


def _probe(items: list[tuple[Path, int]], ref: tuple[Path, tuple[int, int]] | None):
    """Header-only pass: sizes must all equal the reference; returns (reference, all greyscale)."""
    from PIL import Image

    grey = True
    for f, _ in items:
        try:
            with Image.open(f) as im:
                size, mode = im.size, im.mode
        except Exception as e:
            raise DatasetFormatError(f"imagefolder: cannot open {f} as an image: {type(e).__name__}: {e}") from e
        if mode not in GREY_MODES and mode not in COLOUR_MODES:
            raise DatasetFormatError(f"imagefolder: {f} has mode {mode!r}; only 8-bit images are supported")
        grey &= mode in GREY_MODES
        if ref is None:
            ref = (f, size)
        elif size != ref[1]:
            raise DatasetFormatError(
                f"imagefolder: {f} is {size[0]}x{size[1]} (WxH) but {ref[0]} is {ref[1][0]}x{ref[1][1]}; "
                "all images must have the same size (kdprune does not resize: resize them beforehand)"
            )
    return ref, grey


def _decode(items: list[tuple[Path, int]], mode: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    w, h = size
    c = 1 if mode == "L" else 3
    x = np.empty((len(items), h, w, c), dtype=np.uint8)
    for i, (f, _) in enumerate(items):
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert(mode), dtype=np.uint8)
        except Exception as e:
            raise DatasetFormatError(f"imagefolder: cannot decode {f}: {type(e).__name__}: {e}") from e
        x[i] = arr.reshape(h, w, c)
    y = np.array([label for _, label in items], dtype=np.int64)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y


@register_dataset("imagefolder")
def load_imagefolder(root: str | None = None) -> RawDataset:
    if root is None:
        raise DatasetUnavailable(f"imagefolder: data.root is not set; point it at a directory laid out as {LAYOUT}")
    r = Path(root).expanduser()
    if not r.is_dir():
        raise DatasetUnavailable(f"imagefolder: data.root {r} is not a directory; it must be laid out as {LAYOUT}")
    classes, splits = _scan(r)
    ref, grey_train = _probe(splits["train"], None)
    ref, grey_test = _probe(splits["test"], ref)
    mode = "L" if grey_train and grey_test else "RGB"
    train_x, train_y = _decode(splits["train"], mode, ref[1])
    test_x, test_y = _decode(splits["test"], mode, ref[1])
    n, m = len(train_y), len(test_y)
    return RawDataset(
        train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=classes,
        source=(f"image folder {r.resolve()} (train/, test/: {n} + {m} images, {len(classes)} classes, "
                f"{mode} {ref[1][0]}x{ref[1][1]})"),
    )


def _root(root: str | None) -> Path:
    if root is None:
        raise DatasetUnavailable(f"imagefolder: data.root is not set; point it at a directory laid out as {LAYOUT}")
    r = Path(root).expanduser()
    if not r.is_dir():
        raise DatasetUnavailable(f"imagefolder: data.root {r} is not a directory; it must be laid out as {LAYOUT}")
    return r


@register_files("imagefolder")
def list_imagefolder(root: str | None = None) -> FileListing:
    """The folder's images as files (no decoding): the ids and labels the in-memory loader gives."""
    r = _root(root)
    classes, splits = _scan(r)
    out = {}
    for split in ("train", "test"):
        out[f"{split}_files"] = [f.relative_to(r).as_posix() for f, _ in splits[split]]
        out[f"{split}_y"] = np.array([label for _, label in splits[split]], dtype=np.int64)
    n, m = len(out["train_y"]), len(out["test_y"])
    return FileListing(root=r, classes=classes, source=(f"image folder {r.resolve()} (train/, test/: {n} + {m} "
                                                        f"images, {len(classes)} classes, streamed)"), **out)
