"""Datasets read from files while training: the streaming path for data that does not fit in memory.

A streamable dataset registers a *lister* with :func:`register_files`: given ``data.root`` it returns
a :class:`FileListing` (image paths relative to the root, labels, class names), found from directory
entries alone -- no image is decoded to list a dataset. The prepare stage keeps the listing as an
index (paths, labels, stable ids, file sizes) instead of pixels; training reads and decodes the
images it needs through a :class:`StreamDataset` in DataLoader workers.

Transforms (sizes from ``data.image_size`` and ``data.resize``):

- evaluation: resize the shorter side to ``resize`` (skipped when it already is), centre crop
  ``image_size`` x ``image_size`` (torchvision's ImageNet evaluation transform);
- training: a random-resized crop (torchvision's ``RandomResizedCrop`` sampling: area share in
  ``crop_scale``, aspect ratio in [3/4, 4/3] log-uniform, ten tries then a centre crop) resized to
  ``image_size``, then a horizontal flip with probability 1/2 when flipping is on; with
  ``data.random_crop: false`` the evaluation transform (then the flip).

Every random draw of a sample comes from a generator seeded by (aug_seed, epoch, sample id): the
crop an example gets does not depend on which other examples are in the run, on the batch, on the
worker, or on whether the run was resumed. A subset run sees the crops the full run sees for the
same samples.

Decoding: ``torchvision.io.decode_image`` (libjpeg-turbo, libpng), measured here 3x faster than
Pillow (one thread: 64 px JPEG 84-102 us vs 278-299 us per image; 8 px PNG 17-27 us vs 75-80 us);
Pillow decodes the formats torchvision does not. JPEG pixels can differ from Pillow's by rounding
(another IDCT); PNG pixels are the same. On CUDA the images are still decoded by CPU workers:
GPU decoding (``torchvision.io.decode_jpeg(device="cuda")``) is not implemented. torchvision 0.29
deprecates its image decoders in favour of TorchCodec, which this project does not install yet: the
migration is this one function.
"""
from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from kdprune.data.base import DatasetFormatError
from kdprune.registry import Registry

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GREY_MODES = {"1", "L", "LA"}
COLOUR_MODES = {"P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"}
RATIO = (3.0 / 4.0, 4.0 / 3.0)


@dataclass
class FileListing:
    """A dataset as image files: paths relative to ``root`` (POSIX, in id order), int64 labels, the
    class names (label i is ``classes[i]``), and the colour mode when the dataset fixes it ("RGB" for
    ImageNet; None: probed from the files' headers at prepare)."""

    root: Path
    train_files: list[str]
    train_y: np.ndarray
    test_files: list[str]
    test_y: np.ndarray
    classes: list[str]
    source: str
    mode: Optional[str] = None

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            files, y = getattr(self, f"{split}_files"), getattr(self, f"{split}_y")
            if len(files) != len(y):
                raise ValueError(f"{split}: {len(files)} files but {len(y)} labels")
            if y.dtype != np.int64:
                raise ValueError(f"{split}_y must be int64")
            if len(files) == 0:
                raise DatasetFormatError(f"{self.source}: the {split} split has no images")


FILE_DATASETS: Registry[Callable[..., FileListing]] = Registry("streamable dataset")


def register_files(name: str):
    """Register ``fn(root) -> FileListing`` as the lister of dataset ``name`` (which may also have an
    in-memory loader under the same name in ``DATASETS``)."""
    return FILE_DATASETS.register(name)


def walk_images(directory: Path) -> list[str]:
    """Image files under ``directory`` (recursive, links followed, hidden entries skipped), as POSIX
    paths relative to it, sorted by name."""
    out = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(directory)
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(IMG_EXTENSIONS):
                out.append((rel / f).as_posix())
    return sorted(out)


def encode_paths(paths: Sequence[str]) -> np.ndarray:
    """Paths as a fixed-width bytes array (UTF-8): saved without pickle, and one buffer in memory
    (DataLoader workers share it after fork; a list of str would be copied page by page as
    reference counts change)."""
    return np.array([p.encode("utf-8") for p in paths], dtype=np.bytes_)


def probe_mode(root: Path, files: Sequence[str]) -> str:
    """"L" when every image is greyscale (modes 1, L, LA), else "RGB"; header reads only. Only 8-bit
    modes are accepted."""
    from PIL import Image

    grey = True
    for rel in files:
        f = Path(root) / rel
        try:
            with Image.open(f) as im:
                mode = im.mode
        except Exception as e:
            raise DatasetFormatError(f"cannot open {f} as an image: {type(e).__name__}: {e}") from e
        if mode not in GREY_MODES and mode not in COLOUR_MODES:
            raise DatasetFormatError(f"{f} has mode {mode!r}; only 8-bit images are supported")
        grey &= mode in GREY_MODES
        if not grey:
            return "RGB"
    return "L"


@dataclass(frozen=True)
class StreamSpec:
    """The transforms of a streamed dataset (recorded in the prepared meta.json: they fix the input shape)."""

    image_size: int
    resize: int
    random_crop: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    mode: str = "RGB"  # "RGB" or "L"

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def as_meta(self) -> dict:
        return {"image_size": self.image_size, "resize": self.resize, "random_crop": self.random_crop,
                "crop_scale": list(self.crop_scale), "mode": self.mode}

    @classmethod
    def from_meta(cls, m: dict) -> "StreamSpec":
        return cls(int(m["image_size"]), int(m["resize"]), bool(m["random_crop"]), tuple(m["crop_scale"]), m["mode"])


def sample_rng(seed: int, epoch: int, sample_id: int) -> np.random.Generator:
    """The generator of one sample's augmentation at one epoch (NumPy's SeedSequence mixes the three)."""
    return np.random.default_rng((int(seed), int(epoch), int(sample_id)))


def crop_params(h: int, w: int, rng: np.random.Generator, scale: tuple[float, float],
                ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random-resized crop: torchvision's
    ``RandomResizedCrop.get_params`` with draws from ``rng`` instead of torch's global RNG."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def decode(data: bytes, mode: str, name: str) -> "torch.Tensor":
    """uint8 [C, H, W] from an encoded image, converted to ``mode`` ("RGB" or "L"): torchvision's decoders
    (libjpeg-turbo, libpng, libwebp) for the formats they read, Pillow for the others (BMP, TIFF, PPM...)."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec (not installed here)
            warnings.simplefilter("ignore", DeprecationWarning)
            img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                               mode=ImageReadMode.RGB if mode == "RGB" else ImageReadMode.GRAY)
        if img.dtype == torch.uint8:
            return img
    except RuntimeError:
        pass  # a format torchvision does not decode: Pillow below
    return decode_pil(data, mode, name)


def decode_pil(data: bytes, mode: str, name: str) -> "torch.Tensor":
    """uint8 [C, H, W] from an encoded image with Pillow, converted to ``mode``."""
    import torch
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert(mode), dtype=np.uint8)
    except Exception as e:
        raise DatasetFormatError(f"cannot decode {name}: {type(e).__name__}: {e}") from e
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())  # writable, contiguous


def eval_transform(img: "torch.Tensor", spec: StreamSpec) -> "torch.Tensor":
    """Resize the shorter side to ``spec.resize`` (skipped when it already is), centre crop ``image_size``."""
    from torchvision.transforms.v2 import functional as F

    if min(img.shape[-2:]) != spec.resize:
        img = F.resize(img, [spec.resize], antialias=True)
    if tuple(img.shape[-2:]) != (spec.image_size, spec.image_size):
        img = F.center_crop(img, [spec.image_size, spec.image_size])
    return img


def train_transform(img: "torch.Tensor", spec: StreamSpec, rng: np.random.Generator, flip: bool) -> "torch.Tensor":
    """A random-resized crop to ``image_size`` (or the evaluation transform without random_crop),
    then a horizontal flip with probability 1/2 when ``flip``; every draw from ``rng``."""
    from torchvision.transforms.v2 import functional as F

    if spec.random_crop:
        top, left, ch, cw = crop_params(img.shape[-2], img.shape[-1], rng, spec.crop_scale)
        img = F.resized_crop(img, top, left, ch, cw, [spec.image_size, spec.image_size], antialias=True)
    else:
        img = eval_transform(img, spec)
    if flip and rng.random() < 0.5:
        img = img.flip(-1)
    return img


@dataclass(frozen=True)
class Key:
    """What a worker is asked for: the ``row`` of the split, transformed for training (seeded by
    (seed, epoch, the row's sample id), flipped when ``flip``) or for evaluation."""

    row: int
    train: bool = False
    seed: int = 0
    epoch: int = 0
    flip: bool = False


class StreamDataset:
    """One split's images read from ``root`` by row: ``dataset[Key(...)]`` is (uint8 [C, S, S], row), a
    map-style dataset for torch's DataLoader.

    Each file's size is checked against the index (a file replaced or truncated since prepare is an
    error naming it)."""

    def __init__(self, root: str | os.PathLike, files: np.ndarray, sizes: np.ndarray, ids: np.ndarray,
                 spec: StreamSpec):
        if not (len(files) == len(sizes) == len(ids)):
            raise ValueError("files, sizes and ids must have one entry per row")
        self.root, self.files, self.sizes, self.ids, self.spec = str(root), files, sizes, ids, spec

    def __len__(self) -> int:
        return len(self.files)

    def path(self, row: int) -> str:
        return os.path.join(self.root, self.files[row].decode("utf-8"))

    def read(self, row: int) -> "torch.Tensor":
        f = self.path(row)
        try:
            with open(f, "rb") as fh:
                data = fh.read()
        except OSError as e:
            raise DatasetFormatError(f"cannot read {f} ({e.strerror}): the prepared index lists it; restore the "
                                     "file or re-run `dvc repro prepare`") from e
        if len(data) != int(self.sizes[row]):
            raise DatasetFormatError(f"{f} is {len(data)} bytes but was {int(self.sizes[row])} when the dataset was "
                                     "prepared: it changed; re-run `dvc repro prepare` (or restore the file)")
        return decode(data, self.spec.mode, f)

    def __getitem__(self, key: Key) -> tuple["torch.Tensor", int]:
        img = self.read(key.row)
        if key.train:
            img = train_transform(img, self.spec, sample_rng(key.seed, key.epoch, int(self.ids[key.row])), key.flip)
        else:
            img = eval_transform(img, self.spec)
        return img.contiguous(), key.row


def default_workers() -> int:
    """data.workers null: the CPUs this process may use, at most 8 (output-neutral: a transform is a pure
    function of its key, whichever process runs it)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus))


def file_sizes(root: Path, files: Sequence[str]) -> np.ndarray:
    """Byte size of each file (one stat each)."""
    out = np.empty(len(files), dtype=np.int64)
    for i, rel in enumerate(files):
        try:
            out[i] = os.stat(os.path.join(root, rel)).st_size
        except OSError as e:
            raise DatasetFormatError(f"cannot stat {Path(root) / rel}: {e.strerror}") from e
    return out


@dataclass
class ChannelStats:
    """Running per-channel sums (float64) for the mean and std of the training images."""

    channels: int
    n: int = 0
    s: np.ndarray = field(default=None)
    ss: np.ndarray = field(default=None)

    def __post_init__(self):
        self.s = np.zeros(self.channels) if self.s is None else self.s
        self.ss = np.zeros(self.channels) if self.ss is None else self.ss

    def add(self, x: "torch.Tensor") -> None:
        """``x``: uint8 [B, C, H, W]."""
        import torch

        v = x.to(torch.float64).div_(255.0)
        self.s += v.sum(dim=(0, 2, 3)).numpy()
        self.ss += v.square().sum(dim=(0, 2, 3)).numpy()
        self.n += x.shape[0] * x.shape[2] * x.shape[3]

    def mean_std(self) -> tuple[list[float], list[float]]:
        mean = self.s / self.n
        var = np.maximum(self.ss / self.n - mean**2, 0.0)
        return mean.tolist(), np.maximum(np.sqrt(var), 1e-6).tolist()
