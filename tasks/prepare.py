"""prepare: dataset source -> data/prepared/<dataset>/ (uint8 tensors, labels, ids, meta.json), or for a
streamed dataset (data.loader stream, or auto above data.memory_budget_gb) its index: files relative to
data.root, their byte sizes, labels, ids, and meta.json with the transforms and the training images' mean
and std."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from kdprune.settings import DataSettings, Params
from kdprune.data import DATASETS, stratified_split, stratified_subsample
from kdprune.data.stream import FILE_DATASETS, ChannelStats, FileListing, Key, StreamDataset, StreamSpec, \
    default_workers, encode_paths, file_sizes, probe_mode
from artifacts.stages import prepared_dir
from artifacts.files import atomic_directory, atomic_save_npy, atomic_write_json, combined_sha256, sha256_file
from execution.observe import observer, timed_work


def write_arrays(directory, splits: dict, parts: tuple) -> dict[str, str]:
    """Each split's arrays as ``<split>_<part>.npy`` in ``directory`` (``parts`` names them in order);
    returns file name -> sha256, as meta.json records them."""
    files = {}
    for name, arrays in splits.items():
        for part, arr in zip(parts, arrays):
            f = directory / f"{name}_{part}.npy"
            atomic_save_npy(f, np.ascontiguousarray(arr))
            files[f.name] = sha256_file(f)
    return files


@task(name="prepare-dataset", cache_policy=NO_CACHE, persist_result=False)
@timed_work
def prepare_dataset(root: str, params: Params, parent_run_id: Optional[str] = None) -> dict:
    log = get_run_logger()
    root = Path(root)
    t0 = time.perf_counter()
    meta, out = write_prepared(root, params, log)
    return _finish(root, params.data, meta, out, t0, log, parent_run_id)


def write_prepared(root: Path, params: Params, log) -> tuple[dict, Path]:
    """Write data/prepared/<dataset>/ (pixels, or a streamed dataset's index); returns (meta, its directory)."""
    dp = params.data
    loader, listing = choose_loader(dp)
    if loader == "stream":
        return prepare_stream(root, params, listing, log)
    raw = DATASETS.get(dp.dataset)(root=dp.root)
    keep, held = stratified_split(raw.train_y, dp.val_fraction, dp.split_seed)
    pool_ids = np.arange(len(raw.train_y), dtype=np.int64)  # id = index in the source's training order
    if dp.max_train is not None and dp.max_train < len(keep):
        # a smaller training pool for CPU studies: stratified, and ids still index the source
        keep = keep[stratified_subsample(raw.train_y[keep], dp.max_train, dp.split_seed)]
        log.info(f"training pool cut to a stratified subset of {len(keep)} examples (data.max_train)")
    splits = {
        "train": (raw.train_x[keep], raw.train_y[keep], pool_ids[keep]),
        "val": (raw.train_x[held], raw.train_y[held], pool_ids[held]),
        "test": (raw.test_x, raw.test_y, np.arange(len(raw.test_y), dtype=np.int64)),
    }
    x01 = splits["train"][0].astype(np.float64) / 255.0
    mean = x01.mean(axis=(0, 2, 3)).tolist()
    std = np.maximum(x01.std(axis=(0, 2, 3)), 1e-6).tolist()
    out = prepared_dir(root, dp.dataset)
    with atomic_directory(out) as tmp:
        files = write_arrays(tmp, splits, ("x", "y", "ids"))
        meta = {
            "dataset": dp.dataset,
            "source": raw.source,
            "classes": raw.classes,
            "num_classes": len(raw.classes),
            "shape": list(raw.train_x.shape[1:]),
            "sizes": {k: int(len(v[1])) for k, v in splits.items()},
            "class_counts": {k: np.bincount(v[1], minlength=len(raw.classes)).tolist() for k, v in splits.items()},
            "val_fraction": dp.val_fraction,
            "split_seed": dp.split_seed,
            "max_train": dp.max_train,
            "source_train_size": int(len(raw.train_y)),
            "mean": mean,
            "std": std,
            "files": files,
            "sha256": combined_sha256(files),
        }
        atomic_write_json(tmp / "meta.json", meta)
    return meta, out


def _finish(root: Path, dp: DataSettings, meta: dict, out: Path, t0: float, log, parent_run_id: Optional[str]) -> dict:
    secs = time.perf_counter() - t0
    log.info(f"prepared {dp.dataset}: sizes {meta['sizes']}, sha256 {meta['sha256'][:12]} -> {out} ({secs:.1f}s)")
    obs = observer()
    tr = obs.tracker(root)
    with tr.run("prepare", parent_run_id, tags={"kdprune.stage": "prepare", **obs.commit_tags(root),
                                                 "dataset": dp.dataset, "dataset_sha256": meta["sha256"]},
                params={"data": dataclasses.asdict(dp)}) as run_id:
        tr.log_metrics(run_id, {"n_train": meta["sizes"]["train"], "n_val": meta["sizes"]["val"],
                                "n_test": meta["sizes"]["test"], "seconds": secs})
        tr.log_artifact(run_id, out / "meta.json")
    return {"path": str(out), "sha256": meta["sha256"], "sizes": meta["sizes"]}


# ---------------------------------------------------------------- streamed datasets

STATS_IMAGES = 65_536  # the mean and std are taken over at most this many training images (stratified)


def choose_loader(dp: dict) -> tuple[str, Optional[FileListing]]:
    """("memory" | "stream", the listing when streamable). auto streams when the decoded uint8 pixels of
    every split (images x channels x height x width of the first training image) exceed
    data.memory_budget_gb, and always for a dataset without an in-memory form (imagenet)."""
    name = dp.dataset
    if dp.loader == "memory" or name not in FILE_DATASETS:
        return "memory", None
    listing = FILE_DATASETS.get(name)(root=dp.root)
    if dp.loader == "stream" or getattr(DATASETS.get(name), "streamed_only", False):
        return "stream", listing
    from PIL import Image

    with Image.open(Path(listing.root) / listing.train_files[0]) as im:
        w, h = im.size
        c = 1 if im.mode in ("1", "L", "LA") else 3
    decoded = (len(listing.train_y) + len(listing.test_y)) * c * h * w
    return ("stream" if decoded > dp.memory_budget_gb * 1e9 else "memory"), listing


def split_stats(root: Path, files: np.ndarray, sizes: np.ndarray, ids: np.ndarray, spec: StreamSpec,
                workers: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (of pixels in [0, 1]) of the given images after the evaluation transform."""
    import torch

    n = len(files)
    batches = [[Key(i) for i in range(s, min(s + 256, n))] for s in range(0, n, 256)]
    loader = torch.utils.data.DataLoader(StreamDataset(root, files, sizes, ids, spec), batch_sampler=batches,
                                         num_workers=workers)
    stats = ChannelStats(spec.channels)
    for xb, _ in loader:
        stats.add(xb)
    return stats.mean_std()


def prepare_stream(root: Path, params: Params, listing: FileListing, log) -> tuple[dict, Path]:
    """Write the index of a streamed dataset; the validation split is held out of train as for data in memory."""
    dp = params.data
    y = listing.train_y
    keep, held = stratified_split(y, dp.val_fraction, dp.split_seed)
    pool_ids = np.arange(len(y), dtype=np.int64)  # id = index in the listing's training order
    if dp.max_train is not None and dp.max_train < len(keep):
        keep = keep[stratified_subsample(y[keep], dp.max_train, dp.split_seed)]
        log.info(f"training pool cut to a stratified subset of {len(keep)} examples (data.max_train)")
    data_root = Path(listing.root)
    train_files, test_files = encode_paths(listing.train_files), encode_paths(listing.test_files)
    train_sizes, test_sizes = file_sizes(data_root, listing.train_files), file_sizes(data_root, listing.test_files)
    mode = listing.mode or probe_mode(data_root, listing.train_files + listing.test_files)
    spec = StreamSpec(dp.image_size, dp.resize, dp.random_crop, tuple(dp.crop_scale), mode)
    splits = {
        "train": (train_files[keep], train_sizes[keep], y[keep], pool_ids[keep]),
        "val": (train_files[held], train_sizes[held], y[held], pool_ids[held]),
        "test": (test_files, test_sizes, listing.test_y, np.arange(len(listing.test_y), dtype=np.int64)),
    }
    tf, ts, ty, ti = splits["train"]
    some = np.arange(len(ty)) if len(ty) <= STATS_IMAGES else stratified_subsample(ty, STATS_IMAGES, dp.split_seed)
    workers = default_workers() if dp.workers is None else dp.workers
    mean, std = split_stats(data_root, tf[some], ts[some], ti[some], spec, workers)
    classes = listing.classes
    out = prepared_dir(root, dp.dataset)
    with atomic_directory(out) as tmp:
        files = write_arrays(tmp, splits, ("files", "sizes", "y", "ids"))
        meta = {
            "dataset": dp.dataset,
            "source": listing.source,
            "loader": "stream",
            "stream": spec.as_meta(),
            "classes": classes,
            "num_classes": len(classes),
            "shape": [spec.channels, spec.image_size, spec.image_size],
            "sizes": {k: int(len(v[2])) for k, v in splits.items()},
            "class_counts": {k: np.bincount(v[2], minlength=len(classes)).tolist() for k, v in splits.items()},
            "val_fraction": dp.val_fraction,
            "split_seed": dp.split_seed,
            "max_train": dp.max_train,
            "source_train_size": int(len(y)),
            "mean": mean,
            "std": std,
            "stats_images": int(len(some)),
            "bytes": {k: int(v[1].sum()) for k, v in splits.items()},
            "files": files,
            "sha256": combined_sha256(files),
        }
        atomic_write_json(tmp / "meta.json", meta)
    return meta, out
