"""The data-parallel teacher (teacher.workers: 2, DDP on Ray Train, gloo) against one worker (the
single-process teacher, teacher.workers: 1) on this machine's CPU.

Both train the same model from the same init on the same data with the same recipe, as the teacher
stage does: dynamics recorded, a checkpoint written after every epoch, validation each epoch. One
worker runs in this process with ``--threads`` torch threads; two workers run ``--threads // 2``
threads each (teacher.workers never uses more threads than one process). The Ray instance is started
once, before the timed rounds (the pipeline starts it before the teacher; a teacher stage run alone
pays it: ``ray_init_s``). Rounds alternate which runs first; the ratio is the median over rounds of
the paired wall times (2 workers / 1 worker: below 1 is faster), for the whole fit (Ray Train's
worker group start included) and per epoch (steady state: the epochs after the first).
Correctness is checked each round: the merged dynamics have every example of every epoch, once.

    python -m bench.ddp_bench [--rounds 2] [--n 8192] [--epochs 3]
"""
from __future__ import annotations

from kdprune.reproducibility import apply

apply("portable", 2)  # as a stage pins itself, before torch loads: the workers inherit it

import argparse  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bench.grand_bench import write_rows  # noqa: E402


def synthetic(n: int, n_val: int, shape: tuple[int, int, int], classes: int):
    """(meta, splits) of random uint8 images whose labels a CNN can learn (a class-dependent mean)."""
    from kdprune.data import PreparedSplit

    rng = np.random.default_rng(0)
    c, h, w = shape

    def split(m: int, first_id: int):
        y = rng.integers(0, classes, m)
        x = rng.integers(0, 160, (m, c, h, w), dtype=np.uint8)
        x += (y * 96 // classes).astype(np.uint8)[:, None, None, None]
        return PreparedSplit(x, y.astype(np.int64), np.arange(first_id, first_id + m, dtype=np.int64))

    meta = {"dataset": "synthetic", "sha256": f"synthetic-{n}-{shape}", "shape": list(shape), "num_classes": classes,
            "mean": [0.5] * c, "std": [0.25] * c}
    return meta, {"train": split(n, 0), "val": split(n_val, n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="reports/bench.json")
    args = ap.parse_args()

    import torch

    from artifacts.checkpoints import FileCheckpoint
    from artifacts.models import device_data
    from artifacts.stages import dynamics_work_dir
    from execution import ddp
    from kdprune.config import validate
    from kdprune.models import build_model
    from kdprune.reproducibility import check
    from kdprune.train import seeded, train
    from kdprune.train import train_config

    check("portable", args.threads)
    shape = (1, 28, 28)
    meta, splits = synthetic(args.n, 1024, shape, 10)
    teacher = {"epochs": args.epochs, "batch_size": args.batch_size, "pad": 2}
    params = {w: validate({"device": "cpu", "reproducibility": {"threads": args.threads},
                           "teacher": {**teacher, "workers": w}}, stage="teacher") for w in (1, 2)}
    tp = params[1].teacher
    cfg = train_config(tp, order_seed=tp.seed, aug_seed=tp.seed, record_dynamics=True)
    log = logging.getLogger("ddp_bench")
    cpu = torch.device("cpu")

    def one_worker(root: Path) -> dict:
        train_d, val_d = device_data(meta, splits["train"], cpu), device_data(meta, splits["val"], cpu)
        with seeded(tp.seed):
            model = build_model(tp.arch, *shape[:1], 10, shape[1])
        t0 = time.perf_counter()
        ckpt = FileCheckpoint(root, "teacher", "one", "bench")  # the dynamics to files beside it, as the stage
        res = train(model, train_d, cfg, val=val_d, checkpoint=ckpt, dynamics_dir=dynamics_work_dir(ckpt.path))
        return {"wall": time.perf_counter() - t0, "history": res.history, "val": res.best_score}

    def two_workers(root: Path) -> dict:
        t0 = time.perf_counter()
        out = ddp.fit(root, params[2], tp.arch, cfg, meta, splits, lambda e, m: None, log)
        wall = time.perf_counter() - t0
        n = len(splits["train"])
        assert out["dynamics"].shape[:2] == (args.epochs, n) and not np.isnan(out["dynamics"]).any()
        assert [sum(s) for s in out["shares"]] == [n] * args.epochs  # every example once per epoch
        return {"wall": wall, "history": out["history"], "val": out["val"]["acc"]}

    def epoch_s(history: list[dict]) -> float:
        s = [m["seconds"] for m in history]
        return statistics.mean(np.diff(s)) if len(s) > 1 else s[0]

    t0 = time.perf_counter()
    with ddp.ray_connection(params[2]):
        ray_init_s = time.perf_counter() - t0
        runs: dict[str, list[dict]] = {"one": [], "two": []}
        for r in range(args.rounds):
            for name in (("one", "two") if r % 2 == 0 else ("two", "one")):
                with tempfile.TemporaryDirectory() as d:
                    runs[name].append((one_worker if name == "one" else two_workers)(Path(d)))
                print(f"round {r + 1} {name}: {runs[name][-1]['wall']:.1f} s, epoch {epoch_s(runs[name][-1]['history']):.2f} s",
                      flush=True)
    wall_ratio = statistics.median(b["wall"] / a["wall"] for a, b in zip(runs["one"], runs["two"]))
    epoch_ratio = statistics.median(epoch_s(b["history"]) / epoch_s(a["history"]) for a, b in zip(runs["one"], runs["two"]))
    samples = args.n * args.epochs
    print(f"small_cnn on {args.n} x 1x28x28, batch {args.batch_size}, {args.epochs} epochs, {args.rounds} rounds:")
    print(f"  1 worker  ({args.threads} threads): {statistics.median(r['wall'] for r in runs['one']):.1f} s")
    print(f"  2 workers ({args.threads // 2} thread each, gloo): {statistics.median(r['wall'] for r in runs['two']):.1f} s; "
          f"wall ratio {wall_ratio:.2f}, per-epoch ratio {epoch_ratio:.2f}; Ray start {ray_init_s:.1f} s")
    write_rows([{
        "name": "ddp_teacher_2_vs_1_worker_wall_ratio", "value": round(wall_ratio, 3), "unit": "x",
        "target": "report (correctness first on 2 cores)", "device": "cpu", "arch": tp.arch,
        "shape": list(shape), "n": args.n, "epochs": args.epochs, "batch_size": args.batch_size,
        "threads": args.threads, "estimator": f"median over {args.rounds} interleaved rounds of 2-worker/1-worker wall",
        "epoch_ratio": round(epoch_ratio, 3), "ray_init_s": round(ray_init_s, 2),
        "one_worker_samples_per_s": round(samples / min(r["wall"] for r in runs["one"])),
        "two_workers_samples_per_s": round(samples / min(r["wall"] for r in runs["two"])),
        "val_acc": {"one": [round(r["val"], 4) for r in runs["one"]], "two": [round(r["val"], 4) for r in runs["two"]]},
    }], Path(args.out))


if __name__ == "__main__":
    main()
