"""prepare: dataset source -> data/prepared/<dataset>/ (uint8 tensors, labels, ids, meta.json)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from kdprune.data import DATASETS, stratified_split, stratified_subsample
from artifacts.stages import prepared_dir
from artifacts.files import atomic_directory, atomic_save_npy, atomic_write_json, combined_sha256, sha256_file
from execution.observe import observer, timed_work


@task(name="prepare-dataset", cache_policy=NO_CACHE, persist_result=False)
@timed_work
def prepare_dataset(root: str, params: dict, parent_run_id: Optional[str] = None) -> dict:
    log = get_run_logger()
    root = Path(root)
    dp = params["data"]
    t0 = time.perf_counter()
    raw = DATASETS.get(dp["dataset"])(root=dp["root"])
    keep, held = stratified_split(raw.train_y, dp["val_fraction"], dp["split_seed"])
    pool_ids = np.arange(len(raw.train_y), dtype=np.int64)  # id = index in the source's training order
    if dp["max_train"] is not None and dp["max_train"] < len(keep):
        # a smaller training pool for CPU studies: stratified, and ids still index the source
        keep = keep[stratified_subsample(raw.train_y[keep], dp["max_train"], dp["split_seed"])]
        log.info(f"training pool cut to a stratified subset of {len(keep)} examples (data.max_train)")
    splits = {
        "train": (raw.train_x[keep], raw.train_y[keep], pool_ids[keep]),
        "val": (raw.train_x[held], raw.train_y[held], pool_ids[held]),
        "test": (raw.test_x, raw.test_y, np.arange(len(raw.test_y), dtype=np.int64)),
    }
    x01 = splits["train"][0].astype(np.float64) / 255.0
    mean = x01.mean(axis=(0, 2, 3)).tolist()
    std = np.maximum(x01.std(axis=(0, 2, 3)), 1e-6).tolist()
    out = prepared_dir(root, dp["dataset"])
    with atomic_directory(out) as tmp:
        files = {}
        for name, (x, y, ids) in splits.items():
            for part, arr in (("x", x), ("y", y), ("ids", ids)):
                f = tmp / f"{name}_{part}.npy"
                atomic_save_npy(f, np.ascontiguousarray(arr))
                files[f.name] = sha256_file(f)
        meta = {
            "dataset": dp["dataset"],
            "source": raw.source,
            "classes": raw.classes,
            "num_classes": len(raw.classes),
            "shape": list(raw.train_x.shape[1:]),
            "sizes": {k: int(len(v[1])) for k, v in splits.items()},
            "class_counts": {k: np.bincount(v[1], minlength=len(raw.classes)).tolist() for k, v in splits.items()},
            "val_fraction": dp["val_fraction"],
            "split_seed": dp["split_seed"],
            "max_train": dp["max_train"],
            "source_train_size": int(len(raw.train_y)),
            "mean": mean,
            "std": std,
            "files": files,
            "sha256": combined_sha256(files),
        }
        atomic_write_json(tmp / "meta.json", meta)
    secs = time.perf_counter() - t0
    log.info(f"prepared {dp['dataset']}: sizes {meta['sizes']}, sha256 {meta['sha256'][:12]} -> {out} ({secs:.1f}s)")
    obs = observer()
    tr = obs.tracker(root)
    with tr.run("prepare", parent_run_id, tags={"kdprune.stage": "prepare", **obs.commit_tags(root),
                                                 "dataset": dp["dataset"], "dataset_sha256": meta["sha256"]},
                params={"data": dp}) as run_id:
        tr.log_metrics(run_id, {"n_train": meta["sizes"]["train"], "n_val": meta["sizes"]["val"],
                                "n_test": meta["sizes"]["test"], "seconds": secs})
        tr.log_artifact(run_id, out / "meta.json")
    return {"path": str(out), "sha256": meta["sha256"], "sizes": meta["sizes"]}
