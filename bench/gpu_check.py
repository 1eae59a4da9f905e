"""`make gpu-check`: the teacher and a KD student on CUDA, on ImageNet-shaped synthetic images.

Generates ``--n`` synthetic 3 x ``--size`` x ``--size`` uint8 images of ``--classes`` classes in
memory (labels learnable: a class-dependent brightness), then trains, each for ``--epochs`` epochs:

1. the teacher on one GPU (teacher.workers: 1, the single-process trainer; bf16 autocast and
   channels_last as on every CUDA run), dynamics recorded and validated each epoch as the stage does;
2. the teacher on every GPU of this machine through the data-parallel path (teacher.workers: the GPU
   count; DDP over NCCL under Ray Train; with one GPU this still runs the DDP path, one worker);
3. a KD student (the teacher of step 1, live, on each augmented batch) on a random half of the data.

Prints one JSON object: images per second for each (all epochs, and the epochs after the first) and
peak GPU memory (``torch.cuda.max_memory_allocated``; for the DDP run, rank 0's). Without CUDA it
says so and exits with status 2; ``--device cpu`` runs the same steps on the CPU as a smoke test of
the script (tiny sizes: the figures mean nothing there).

    python -m bench.gpu_check [--arch resnet18] [--size 224] [--n 2048] [--classes 100] [--batch-size 128]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.ddp_bench import synthetic


def _rates(n: int, history: list[dict], wall: float) -> dict:
    s = [m["seconds"] for m in history]
    steady = (n * (len(s) - 1) / (s[-1] - s[0])) if len(s) > 1 else None
    return {"images_per_s": round(n * len(s) / wall, 1), "images_per_s_after_epoch_1": steady and round(steady, 1),
            "wall_s": round(wall, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default=None, help="teacher and student architecture (default: resnet50 when "
                                                 "registered, else resnet18)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = ap.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine (torch.cuda.is_available() is False); nothing was measured. "
              "Run it on a machine with a GPU; `python -m bench.gpu_check --device cpu --size 32 --n 256` smoke-tests "
              "the script here.", file=sys.stderr)
        return 2

    from artifacts.models import device_data
    from execution import ddp
    from kdprune.config import validate
    from kdprune.models import MODELS, build_model
    from kdprune.train import seeded, train
    from kdprune.distill import KDSetting
    from kdprune.train import train_config

    device = torch.device(args.device)
    arch = args.arch or ("resnet50" if "resnet50" in MODELS else "resnet18")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 2
    threads = max(gpus, min(16, os.cpu_count() or 1))
    shape = (3, args.size, args.size)
    t0 = time.perf_counter()
    meta, splits = synthetic(args.n, max(256, args.n // 8), shape, args.classes)
    gen_s = time.perf_counter() - t0
    section = {"arch": arch, "epochs": args.epochs, "batch_size": args.batch_size, "pad": args.size // 8, "flip": True,
               "lr": 0.1}
    params = validate({"device": args.device, "reproducibility": {"cpu": "native", "threads": threads},
                       "runner": {"kind": "ray"}, "teacher": {**section, "workers": gpus},
                       "student": {**section}}, stage="teacher")
    tp = params.teacher
    cfg = train_config(tp, order_seed=tp.seed, aug_seed=tp.seed, record_dynamics=True)
    if device.type == "cpu":
        torch.set_num_threads(threads)

    def peak() -> int | None:
        return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    def reset() -> None:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "gpus": gpus,
           "torch": torch.__version__, "arch": arch, "images": args.n, "shape": list(shape), "classes": args.classes,
           "batch_size": args.batch_size, "epochs": args.epochs, "generate_s": round(gen_s, 1)}
    train_d, val_d = device_data(meta, splits["train"], device), device_data(meta, splits["val"], device)

    # 1. the teacher on one GPU
    reset()
    with seeded(tp.seed):
        teacher = build_model(arch, 3, args.classes, args.size)
    t0 = time.perf_counter()
    res = train(teacher, train_d, cfg, val=val_d)
    if device.type == "cuda":
        torch.cuda.synchronize()
    out["teacher_1_gpu"] = {**_rates(args.n, res.history, time.perf_counter() - t0), "peak_gpu_bytes": peak(),
                            "val_acc": round(res.best_score, 4)}
    teacher.load_state_dict(res.best_state)

    # 2. the teacher on every GPU: DDP under Ray Train (teacher.workers)
    reset()
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        fit = ddp.fit(Path(root), params, arch, cfg, meta, splits, lambda e, m: None, logging.getLogger("gpu_check"))
        wall = time.perf_counter() - t0
    out[f"teacher_{gpus}_gpu_ddp"] = {**_rates(args.n, fit["history"], wall), "peak_gpu_bytes_rank0": fit["peak_gpu_bytes"],
                                      "val_acc": round(fit["val"]["acc"], 4), "workers": gpus,
                                      "note": "wall includes Ray start and the worker group's start"}

    # 3. a KD student on half the data, the teacher live on each augmented batch
    reset()
    subset = torch.from_numpy(__import__("numpy").random.default_rng(0).permutation(args.n)[: args.n // 2])
    scfg = train_config(params.student, order_seed=0, aug_seed=0)
    kd = KDSetting("kd", 0.5, 4.0, params.teacher.arch, "constant", "kd0.5")
    with seeded(1):
        student = build_model(arch, 3, args.classes, args.size)
    t0 = time.perf_counter()
    sres = train(student, train_d, scfg, subset=subset, val=val_d, teacher=teacher, kd=kd)
    if device.type == "cuda":
        torch.cuda.synchronize()
    out["student_kd_1_gpu"] = {**_rates(len(subset), sres.history, time.perf_counter() - t0),
                               "peak_gpu_bytes": peak(), "val_acc": round(sres.best_score, 4)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
