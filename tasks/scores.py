"""scores: teacher dynamics -> data/scores/<method>[-<seed>].npy + .json (definition, variant, cost)."""
from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import Optional

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from kdprune.scores import SCORES, ScoreContext
from tasks.common import atomic_directory, atomic_save_npy, atomic_write_json, load_prepared, sha256_file, stage_tags
from tasks.tracking import Tracker

STOCHASTIC = {"random"}  # scores computed once per seed in scores.seeds


def score_options(method: str, sp: dict) -> dict:
    return {"epoch": sp["el2n_epoch"]} if method == "el2n" else {}


@task(name="compute-scores", cache_policy=NO_CACHE, persist_result=False)
def compute_scores(root: str, params: dict, parent_run_id: Optional[str] = None) -> dict:
    log = get_run_logger()
    root = Path(root)
    sp = params["scores"]
    meta, splits = load_prepared(root, params["data"]["dataset"])
    train = splits["train"]
    dyn_dir = root / "models" / "teacher" / "dynamics"
    dyn_ids = np.load(dyn_dir / "ids.npy")
    if not np.array_equal(dyn_ids, train.ids):
        raise RuntimeError(f"{dyn_dir}/ids.npy does not match the prepared train split; re-run the teacher stage")
    dynamics = np.load(dyn_dir / "logits.npy").astype(np.float32)
    out = root / "data" / "scores"
    tr = Tracker(root)
    index, compute_s = [], 0.0
    with tr.run("scores", parent_run_id, tags=stage_tags(root, "scores", meta), params={"scores": sp}) as run_id, \
            atomic_directory(out) as tmp:
        atomic_save_npy(tmp / "ids.npy", train.ids)
        for method in sp["methods"]:
            spec = SCORES.get(method)
            for seed in (sp["seeds"] if method in STOCHASTIC else [None]):
                ctx = ScoreContext(ids=train.ids, labels=train.y, num_classes=meta["num_classes"],
                                   seed=0 if seed is None else seed, dynamics=dynamics)
                opts = score_options(method, sp)
                tracemalloc.start()
                t0 = time.perf_counter()
                values = spec(ctx, **opts)
                secs = time.perf_counter() - t0
                compute_s += secs
                peak = tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
                stem = method if seed is None else f"{method}-{seed}"
                atomic_save_npy(tmp / f"{stem}.npy", values)
                info = {
                    "method": method, "seed": seed, "keep": spec.keep, "definition": spec.definition,
                    "variant": spec.variant, "options": opts, "n": int(len(values)),
                    "seconds": secs, "peak_mem_mb": peak, "sha256": sha256_file(tmp / f"{stem}.npy"),
                    "dataset_sha256": meta["sha256"],
                    "stats": {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean())},
                }
                atomic_write_json(tmp / f"{stem}.json", info)
                index.append({"file": f"{stem}.npy", "method": method, "seed": seed})
                tr.log_metrics(run_id, {f"{stem}.seconds": secs, f"{stem}.peak_mem_mb": peak})
                log.info(f"score {stem}: {secs * 1000:.1f} ms, peak {peak:.1f} MiB, "
                         f"range [{values.min():.3g}, {values.max():.3g}]")
        atomic_write_json(tmp / "index.json", index)
    return {"path": str(out), "scores": [e["file"] for e in index], "compute_s": compute_s}
