"""Acceptance of the streaming path on real data: Fashion-MNIST written as PNG files in the ImageFolder
layout (``kdprune data export --dataset fashion_mnist --out DIR``), prepared twice from that folder --
decoded into memory (data.loader memory) and streamed from the files (data.loader stream) -- and a
teacher trained on each at the same recipe and seeds. Reports each seed's test accuracy on both
paths and the Spearman rank correlation of the EL2N (last epoch) and forgetting scores computed by
the registered score functions from each path's training dynamics.

The recipe is the fashion_mnist profile's teacher (pool_cnn, batch 128, lr 0.05, no augmentation,
channels-last) shortened to --epochs (default 3) so that six teachers fit a short locked run on 2 cores.

    python -m bench.stream_fmnist --root DIR [--epochs 3] [--seeds 0 1 2] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from kdprune.reproducibility import apply

    apply("portable", 2)
    import torch
    from scipy.stats import spearmanr

    from artifacts.models import device_data
    from artifacts.stages import load_prepared
    from kdprune.config import validate
    from kdprune.models import build_model
    from kdprune.scores import SCORES, ScoreContext
    from kdprune.train import TrainConfig, evaluate, seeded, train
    from tasks.prepare import write_prepared

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="the Fashion-MNIST image folder")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=28, help="image side (the folder's images are not resized)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    log = logging.getLogger("stream_fmnist")
    results: dict = {"epochs": args.epochs, "seeds": args.seeds, "paths": {}}
    with tempfile.TemporaryDirectory(prefix="kdprune-fmnist-") as tmp:
        for loader in ("memory", "stream"):
            p = validate({"data": {"dataset": "imagefolder", "root": args.root, "loader": loader, "val_fraction": 0.05,
                                   "image_size": args.size, "resize": args.size, "random_crop": False, "workers": args.workers},
                          "teacher": {"pad": 0}, "student": {"pad": 0}})
            t0 = time.perf_counter()
            write_prepared(Path(tmp) / loader, p, log)
            meta, splits = load_prepared(Path(tmp) / loader, "imagefolder")
            prep = time.perf_counter() - t0
            train_d, val_d, test_d = (device_data(meta, splits[s], "cpu", p) for s in ("train", "val", "test"))
            runs = []
            for seed in args.seeds:
                with seeded(seed):
                    model = build_model("pool_cnn", 1, meta["num_classes"], args.size)
                cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=0.05, momentum=0.9, weight_decay=5e-4,
                                  warmup_epochs=1.0, channels_last=True, order_seed=seed, aug_seed=seed,
                                  record_dynamics=True)
                res = train(model, train_d, cfg, val=val_d)
                model.load_state_dict(res.best_state)
                test = evaluate(model, test_d)
                ctx = ScoreContext(ids=splits["train"].ids, labels=splits["train"].y, num_classes=meta["num_classes"],
                                   dynamics=res.dynamics.astype(np.float32))
                scores = {"el2n": SCORES.get("el2n").fn(ctx, epoch=args.epochs),
                          "forgetting": SCORES.get("forgetting").fn(ctx)}
                runs.append({"seed": seed, "test_acc": test["acc"], "val_acc": res.best_score, "seconds": res.seconds,
                             "scores": scores})
                print(f"{loader} seed {seed}: test_acc {test['acc']:.4f} ({res.seconds:.0f}s)", flush=True)
            results["paths"][loader] = {"prepare_s": prep, "runs": runs, "ids": splits["train"].ids}
            for d in (train_d, val_d, test_d):
                getattr(d, "close", lambda: None)()
    mem, st = results["paths"]["memory"], results["paths"]["stream"]
    assert np.array_equal(mem["ids"], st["ids"])
    rows = []
    for a, b in zip(mem["runs"], st["runs"]):
        rho = {k: float(spearmanr(a["scores"][k], b["scores"][k]).statistic) for k in a["scores"]}
        rows.append({"seed": a["seed"], "memory_test_acc": a["test_acc"], "stream_test_acc": b["test_acc"],
                     "diff_points": 100 * (b["test_acc"] - a["test_acc"]), "spearman": rho,
                     "memory_s": a["seconds"], "stream_s": b["seconds"]})
    summary = {
        "epochs": args.epochs, "seeds": args.seeds, "rows": rows,
        "memory_mean_acc": float(np.mean([r["memory_test_acc"] for r in rows])),
        "stream_mean_acc": float(np.mean([r["stream_test_acc"] for r in rows])),
        "prepare_s": {"memory": mem["prepare_s"], "stream": st["prepare_s"]},
    }
    summary["mean_diff_points"] = 100 * (summary["stream_mean_acc"] - summary["memory_mean_acc"])
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
