"""Image folders written to disk: a synthetic dataset of any size and class count, and any registered
in-memory dataset exported as image files, both in the ImageFolder layout (kdprune/data/imagefolder.py)
that the streaming path reads.

Synthetic images carry their class in their content, so a model can learn it: class ``c`` has a
hue (c mod 10), a grating orientation ((c // 10) mod 10, in steps of 18 degrees) and a spatial
frequency ((c // 100) mod 10); every image draws a phase, a small orientation and hue jitter, a
brightness and Gaussian pixel noise from a generator seeded by (seed, split, index). Image i of a
split belongs to class i mod classes (balanced). Written by a process pool in chunks; the bytes
depend only on the arguments, never on the number of processes.

    root/train/c0000/00000000.jpg ... root/test/c0999/...
"""
from __future__ import annotations

import colorsys
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

FORMATS = {"jpg": ("JPEG", {"quality": 90}), "png": ("PNG", {"compress_level": 6}), "bmp": ("BMP", {})}


def class_params(c: int) -> tuple[float, float, float]:
    """(hue in [0, 1), orientation in radians, cycles per image) of class ``c``."""
    hue = (c % 10) / 10.0
    theta = ((c // 10) % 10) * math.pi / 10.0
    freq = 1.5 + 0.75 * ((c // 100) % 10)
    return hue, theta, freq


def synthetic_image(seed: int, split: int, index: int, c: int, size: int) -> np.ndarray:
    """uint8 [size, size, 3] of class ``c``: a coloured oriented grating with per-image jitter and noise."""
    rng = np.random.default_rng((int(seed), int(split), int(index)))
    hue, theta, freq = class_params(c)
    theta += rng.normal(0.0, math.pi / 60)
    hue = (hue + rng.normal(0.0, 0.015)) % 1.0
    phase = rng.uniform(0.0, 2 * math.pi)
    brightness = rng.uniform(0.6, 1.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    wave = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + phase)
    rgb = np.array(colorsys.hsv_to_rgb(hue, 0.8, brightness), dtype=np.float32)
    img = wave[:, :, None] * rgb[None, None, :] * 255.0 + rng.normal(0.0, 12.0, (size, size, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_chunk(out: str, split: str, split_no: int, start: int, stop: int, classes: int, size: int, fmt: str,
                 seed: int) -> int:
    from PIL import Image

    kind, opts = FORMATS[fmt]
    for i in range(start, stop):
        c = i % classes
        path = os.path.join(out, split, f"c{c:04d}", f"{i:08d}.{fmt}")
        tmp = path + ".tmp"
        Image.fromarray(synthetic_image(seed, split_no, i, c, size)).save(tmp, kind, **opts)
        os.replace(tmp, path)
    return stop - start


def _pool_write(jobs: list[tuple], workers: int, progress) -> None:
    if workers <= 1:
        for j in jobs:
            progress(_write_chunk(*j))
        return
    with ProcessPoolExecutor(max_workers=workers) as ex:
        for n in ex.map(_write_chunk, *zip(*jobs)):
            progress(n)


def write_synthetic(out: str | os.PathLike, classes: int, images: int, test_images: Optional[int] = None,
                    size: int = 64, fmt: str = "jpg", seed: int = 0, workers: Optional[int] = None,
                    chunk: int = 2000, progress=lambda n: None) -> dict:
    """Write ``images`` training and ``test_images`` (default images // 10, at least one per class) test
    images of ``size`` px in format ``fmt`` under ``out``; returns a summary."""
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    test_images = max(classes, images // 10) if test_images is None else test_images
    if images < classes or test_images < 1:
        raise ValueError(f"images ({images}) must be at least classes ({classes}) and test_images >= 1")
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not 8 <= size <= 4096:
        raise ValueError(f"size must be in [8, 4096] px, got {size}")
    out = Path(out)
    for split in ("train", "test"):
        for c in range(classes):
            (out / split / f"c{c:04d}").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), split, k, s, min(s + chunk, n), classes, size, fmt, seed)
            for k, (split, n) in enumerate((("train", images), ("test", test_images))) for s in range(0, n, chunk)]
    _pool_write(jobs, workers or os.cpu_count() or 1, progress)
    return {"out": str(out), "classes": classes, "train": images, "test": test_images, "size": size, "format": fmt,
            "seed": seed}


def _export_chunk(out: str, split: str, start: int, x: np.ndarray, y: np.ndarray, names: list[str], fmt: str) -> int:
    from PIL import Image

    kind, opts = FORMATS[fmt]
    for k in range(len(y)):
        img = x[k]
        arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        path = os.path.join(out, split, names[int(y[k])], f"{start + k:08d}.{fmt}")
        Image.fromarray(np.ascontiguousarray(arr)).save(path + ".tmp", kind, **opts)
        os.replace(path + ".tmp", path)
    return len(y)


def folder_names(classes: list[str]) -> list[str]:
    """Class folder names that sort in label order and are valid file names: ``07_Sneaker``."""
    width = len(str(len(classes) - 1))
    safe = ["".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in c) for c in classes]
    return [f"{i:0{width}d}_{s}" for i, s in enumerate(safe)]


def export_folder(raw, out: str | os.PathLike, fmt: str = "png", workers: Optional[int] = None, chunk: int = 5000,
                  progress=lambda n: None) -> dict:
    """Write a :class:`~kdprune.data.RawDataset` as an image folder: file i of a split is row i of it,
    so the folder's sample ids (sorted names) equal the dataset's. Use a lossless format (png) for the
    images to decode to the same bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    out = Path(out)
    names = folder_names(raw.classes)
    for split in ("train", "test"):
        for n in names:
            (out / split / n).mkdir(parents=True, exist_ok=True)
    jobs = []
    for split, x, y in (("train", raw.train_x, raw.train_y), ("test", raw.test_x, raw.test_y)):
        for s in range(0, len(y), chunk):
            jobs.append((str(out), split, s, x[s : s + chunk], y[s : s + chunk], names, fmt))
    workers = workers or os.cpu_count() or 1
    if workers <= 1:
        for j in jobs:
            progress(_export_chunk(*j))
    else:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            for n in ex.map(_export_chunk, *zip(*jobs)):
                progress(n)
    return {"out": str(out), "classes": len(names), "train": int(len(raw.train_y)), "test": int(len(raw.test_y)),
            "format": fmt, "source": raw.source}
