"""ImageNet (ILSVRC-2012 classification) in its standard layouts, streamed from files.

``data.root`` holds the training images in one folder per WordNet id, and the 50,000 validation
images (the project's *test* split: ImageNet's test labels are not public; the validation split
for model selection is held out of train as for every dataset). Accepted layouts:

1. class folders for both (torchvision's ImageFolder layout, e.g. after the usual ``valprep.sh``)::

       root/train/n01440764/n01440764_10026.JPEG   root/val/n01440764/ILSVRC2012_val_00000293.JPEG

2. the official tar layout: ``root/train/<wnid>/*.JPEG`` and a flat ``root/val/*.JPEG`` labelled by
   ``ILSVRC2012_validation_ground_truth.txt`` (one ILSVRC2012_ID per line, in file-name order) and
   the devkit's ``meta.mat`` (ILSVRC2012_ID -> WNID), found in ``root/``,
   ``root/ILSVRC2012_devkit_t12/data/`` or ``root/devkit/data/`` (reading meta.mat needs SciPy);
3. Kaggle's ``imagenet-object-localization-challenge``: ``root/ILSVRC/Data/CLS-LOC/{train,val}`` with
   a flat val labelled by ``root/LOC_val_solution.csv`` (``ImageId,PredictionString``; the first
   WNID of the prediction string is the label). A flat val with ``LOC_val_solution.csv`` beside
   ``root/val`` works too.

Classes are the sorted WNIDs of the training folders (torchvision's order: label i is the i-th
WNID); a subset of the 1,000 classes (e.g. ImageNet-100) works, and validation images of classes
not among the training folders are left out (the source line says how many). Images are always
decoded as RGB (ImageNet has greyscale and CMYK JPEGs). There is no in-memory loader: 1.28 M
images at 224 px are about 190 GB of pixels.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from kdprune.data.base import DatasetFormatError, DatasetUnavailable, register_dataset
from kdprune.data.stream import FileListing, register_files, walk_images

WNID = re.compile(r"^n\d{8}$")
LAYOUTS = (
    "root/train/<wnid>/*.JPEG with either root/val/<wnid>/*.JPEG (class folders), or a flat root/val/*.JPEG "
    "with ILSVRC2012_validation_ground_truth.txt + the devkit's meta.mat, or with LOC_val_solution.csv; or "
    "Kaggle's root/ILSVRC/Data/CLS-LOC/{train,val} with root/LOC_val_solution.csv"
)
DEVKIT_DIRS = (".", "ILSVRC2012_devkit_t12/data", "devkit/data", "ILSVRC2012_devkit_t12", "devkit")


def _data_dir(root: Path) -> Path:
    """Where train/ and val/ are: the root or Kaggle's ILSVRC/Data/CLS-LOC under it."""
    for d in (root, root / "ILSVRC" / "Data" / "CLS-LOC"):
        if (d / "train").is_dir():
            return d
    raise DatasetUnavailable(f"imagenet: no train/ folder in {root} (nor in {root / 'ILSVRC/Data/CLS-LOC'}); "
                             f"expected {LAYOUTS}")


def _wnid_dirs(d: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(d) if e.is_dir() and WNID.match(e.name))


def _find(root: Path, data: Path, name: str) -> Path | None:
    for base in (root, data, data.parent):
        for sub in DEVKIT_DIRS:
            f = base / sub / name
            if f.is_file():
                return f
    return None


def _meta_mat(path: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> WNID for the 1,000 leaf classes, from the devkit's meta.mat."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetUnavailable(f"imagenet: reading {path} needs SciPy (pip install scipy)") from None
    try:
        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        out = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    except Exception as e:
        raise DatasetFormatError(f"imagenet: {path} is not the ILSVRC2012 devkit's meta.mat "
                                 f"({type(e).__name__}: {e})") from e
    return out


def _val_from_ground_truth(val: Path, files: list[str], truth: Path, meta: Path) -> list[str]:
    ids = _meta_mat(meta)
    lines = [ln.strip() for ln in truth.read_text().splitlines() if ln.strip()]
    if len(lines) != len(files):
        raise DatasetFormatError(f"imagenet: {truth} has {len(lines)} labels but {val} holds {len(files)} images; "
                                 "the ground truth lists one ILSVRC2012_ID per validation image in file-name order")
    try:
        return [ids[int(x)] for x in lines]
    except (KeyError, ValueError) as e:
        raise DatasetFormatError(f"imagenet: {truth} has a label {e} that {meta} does not map to a WNID") from None


def _val_from_solution(val: Path, files: list[str], solution: Path) -> list[str]:
    labels = {}
    with open(solution, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise DatasetFormatError(f"imagenet: {solution} must have the columns ImageId,PredictionString "
                                     f"(Kaggle's LOC_val_solution.csv); found {reader.fieldnames}")
        for row in reader:
            labels[row["ImageId"]] = row["PredictionString"].split()[0] if row["PredictionString"] else ""
    out = []
    for rel in files:
        stem = Path(rel).stem
        if stem not in labels:
            raise DatasetFormatError(f"imagenet: {val / rel} has no row in {solution}")
        out.append(labels[stem])
    return out


def _val_labels(root: Path, data: Path) -> tuple[list[str], list[str]]:
    """(files relative to ``data``, WNID of each) of the validation images, from whichever layout is present."""
    val = data / "val"
    if not val.is_dir():
        raise DatasetUnavailable(f"imagenet: no val/ folder in {data}; expected {LAYOUTS}")
    folders = _wnid_dirs(val)
    if folders:
        files, wnids = [], []
        for w in folders:
            for rel in walk_images(val / w):
                files.append(f"val/{w}/{rel}")
                wnids.append(w)
        return files, wnids
    flat = [f for f in walk_images(val) if "/" not in f]
    if not flat:
        raise DatasetUnavailable(f"imagenet: {val} holds neither WNID class folders nor images; expected {LAYOUTS}")
    solution = _find(root, data, "LOC_val_solution.csv")
    if solution is not None:
        return [f"val/{f}" for f in flat], _val_from_solution(val, flat, solution)
    truth, meta = _find(root, data, "ILSVRC2012_validation_ground_truth.txt"), _find(root, data, "meta.mat")
    if truth is not None and meta is not None:
        return [f"val/{f}" for f in flat], _val_from_ground_truth(val, flat, truth, meta)
    missing = " and ".join(n for n, p in (("ILSVRC2012_validation_ground_truth.txt", truth), ("meta.mat", meta))
                           if p is None)
    raise DatasetUnavailable(
        f"imagenet: {val} is flat (no class folders), so its labels must come from a labels file, and none was "
        f"found: LOC_val_solution.csv (Kaggle), or ILSVRC2012_validation_ground_truth.txt with the devkit's "
        f"meta.mat ({missing} not found in {root} or its ILSVRC2012_devkit_t12/data/); expected {LAYOUTS}")


@register_files("imagenet")
def list_imagenet(root: str | None = None) -> FileListing:
    if root is None:
        raise DatasetUnavailable(f"imagenet: data.root is not set; point it at the ILSVRC-2012 directory: {LAYOUTS}")
    r = Path(root).expanduser()
    if not r.is_dir():
        raise DatasetUnavailable(f"imagenet: data.root {r} is not a directory; expected {LAYOUTS}")
    data = _data_dir(r)
    classes = _wnid_dirs(data / "train")
    if not classes:
        raise DatasetUnavailable(f"imagenet: {data / 'train'} has no WNID class folders (n01440764, ...); "
                                 f"expected {LAYOUTS}")
    index = {w: i for i, w in enumerate(classes)}
    train_files, train_y = [], []
    for w in classes:
        files = walk_images(data / "train" / w)
        if not files:
            raise DatasetFormatError(f"imagenet: {data / 'train' / w} holds no images")
        train_files += [f"train/{w}/{f}" for f in files]
        train_y += [index[w]] * len(files)
    val_files, val_wnids = _val_labels(r, data)
    keep = [i for i, w in enumerate(val_wnids) if w in index]
    dropped = len(val_files) - len(keep)
    prefix = data.relative_to(r).as_posix()
    rel = (lambda f: f) if prefix == "." else (lambda f: f"{prefix}/{f}")
    return FileListing(
        root=r,
        train_files=[rel(f) for f in train_files], train_y=np.array(train_y, dtype=np.int64),
        test_files=[rel(val_files[i]) for i in keep],
        test_y=np.array([index[val_wnids[i]] for i in keep], dtype=np.int64),
        classes=classes, mode="RGB",
        source=(f"ImageNet (ILSVRC-2012) {r.resolve()}: {len(train_files)} train + {len(keep)} val images, "
                f"{len(classes)} classes" + (f" ({dropped} val images of other classes left out)" if dropped else "")),
    )


@register_dataset("imagenet")
def load_imagenet(root: str | None = None):
    """No in-memory form: the prepare stage streams imagenet (data.loader stream or auto)."""
    raise DatasetFormatError("imagenet is only read from files while training: set data.loader: stream (or auto)")


load_imagenet.streamed_only = True
