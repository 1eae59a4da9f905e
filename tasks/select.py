"""select: scores -> data/manifests/<method>-<fraction>[-<seed>].json (sorted kept sample ids)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from kdprune.selection import select
from tasks.common import (
    IntegrityError, atomic_directory, atomic_write_json, ids_sha256, load_prepared, sha256_file, stage_tags,
)
from tasks.tracking import Tracker


def manifest_name(method: str, fraction: float, seed: Optional[int]) -> str:
    return f"{method}-{fraction:g}" + ("" if seed is None else f"-{seed}") + ".json"


def selector_for(keep: Optional[str]) -> str:
    return "keep_low" if keep == "low" else "keep_high"  # random (keep None): top-k of uniform draws


@task(name="select-subsets", cache_policy=NO_CACHE, persist_result=False)
def select_subsets(root: str, params: dict, parent_run_id: Optional[str] = None) -> dict:
    log = get_run_logger()
    root = Path(root)
    meta, splits = load_prepared(root, params["data"]["dataset"])
    train = splits["train"]
    sdir = root / "data" / "scores"
    if not np.array_equal(np.load(sdir / "ids.npy"), train.ids):
        raise IntegrityError(f"{sdir}/ids.npy does not match the prepared train split; re-run the scores stage")
    index = json.loads((sdir / "index.json").read_text())
    out = root / "data" / "manifests"
    tr = Tracker(root)
    names, compute_s = [], 0.0
    with tr.run("select", parent_run_id, tags=stage_tags(root, "select", meta), params={"select": params["select"]}) as run_id, \
            atomic_directory(out) as tmp:
        for entry in index:
            stem = entry["file"][: -len(".npy")]
            info = json.loads((sdir / f"{stem}.json").read_text())
            score_sha = sha256_file(sdir / entry["file"])
            if score_sha != info["sha256"] or info["dataset_sha256"] != meta["sha256"]:
                raise IntegrityError(f"{sdir / entry['file']} does not match its {stem}.json (score or dataset "
                                     "sha256 differs); re-run the scores stage")
            scores = np.load(sdir / entry["file"])
            selector = selector_for(info["keep"])
            for frac in params["select"]["fractions"]:
                t0 = time.perf_counter()
                kept = select(selector, train.ids, train.y, scores, frac, seed=entry["seed"] or 0)
                compute_s += time.perf_counter() - t0
                labels = train.y[train.positions(kept)]
                name = manifest_name(entry["method"], frac, entry["seed"])
                manifest = {
                    "method": entry["method"], "fraction": frac, "seed": entry["seed"], "selector": selector,
                    "keep": info["keep"], "n": int(len(kept)), "n_total": int(len(train.ids)),
                    "dataset": meta["dataset"], "dataset_sha256": meta["sha256"], "score_sha256": score_sha,
                    "score_variant": info["variant"],
                    "class_counts": np.bincount(labels, minlength=meta["num_classes"]).tolist(),
                    "ids": kept.tolist(),
                    "ids_sha256": ids_sha256(kept),
                }
                atomic_write_json(tmp / name, manifest)
                names.append(name)
                log.info(f"manifest {name}: {len(kept)}/{len(train.ids)} kept, class counts {manifest['class_counts']}")
        tr.log_metrics(run_id, {"manifests": len(names)})
    return {"path": str(out), "manifests": names, "compute_s": compute_s}
