"""Peak memory of the teacher stage on a streamed image folder: the stage's training (tasks/teacher.py's
fit_teacher: the train and validation loaders with their workers, the per-epoch checkpoint) and its
dynamics (written epoch by epoch into files beside the checkpoint, then copied into the output), in a
child process whose whole process tree (the DataLoader workers included) is
sampled every 0.2 s with psutil: the peak of the summed RSS (shared pages counted once per process:
an upper bound) and of the summed PSS (shared pages split between the processes that map them).

    python -m bench.stream_memory --root DIR [--image-size 32 --resize 36 --epochs 1 --dynamics off]

The folder is prepared first (its index: not measured), in a scratch project under --work.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _params(args) -> dict:
    from kdprune.config import validate

    return validate({
        "reproducibility": {"threads": args.threads},
        "device": "cpu",
        "data": {"dataset": "imagefolder", "root": str(args.root), "loader": "stream", "image_size": args.image_size,
                 "resize": args.resize, "workers": args.workers, "val_fraction": 0.1},
        "teacher": {"arch": args.arch, "epochs": args.epochs, "batch_size": args.batch_size, "pad": 0, "flip": True,
                    "dynamics": args.dynamics if args.dynamics in ("logits", "stats") else "auto"},
        "scores": {"methods": ["random"]}, "select": {"methods": ["random"]}, "student": {"pad": 0}})


def child(args) -> None:
    from kdprune.reproducibility import apply

    apply("portable", args.threads)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("stream_memory")
    params = _params(args)
    work = Path(args.work)
    if args.phase == "prepare":
        from tasks.prepare import write_prepared

        t0 = time.perf_counter()
        meta, _ = write_prepared(work, params, log)
        print(json.dumps({"prepare_s": time.perf_counter() - t0, "sizes": meta["sizes"]}))
        return
    import shutil

    from artifacts.stages import dynamics_work_dir, write_dynamics
    from tasks.teacher import fit_teacher

    t0 = time.perf_counter()
    model, res, val, meta, splits, ckpt = fit_teacher(work, params, args.arch, "teacher", None, None, log,
                                                      record_dynamics=args.dynamics != "off", device="cpu")
    if res.dynamics is not None:
        write_dynamics(work / "dynamics", splits["train"].ids, res.dynamics)
    ckpt.clear()
    shutil.rmtree(dynamics_work_dir(ckpt.path), ignore_errors=True)
    print(json.dumps({"teacher_s": time.perf_counter() - t0, "val_acc": val["acc"], "n_train": len(splits["train"]),
                      "images_per_s": res.samples_seen / res.seconds}))


def _tree_memory(proc) -> tuple[int, int, int, int]:
    """(summed RSS, summed PSS, processes, largest one process's RSS) of ``proc`` and its descendants."""
    import psutil

    rss = pss = n = top = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            mi = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += mi.rss
        pss += getattr(mi, "pss", mi.rss)
        n += 1
        top = max(top, mi.rss)
    return rss, pss, n, top


def measure(cmd: list[str], env: dict) -> dict:
    import psutil

    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    proc = psutil.Process(p.pid)
    peak = {"rss": 0, "pss": 0, "procs": 0, "top": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            rss, pss, n, top = _tree_memory(proc)
            peak["rss"], peak["pss"], peak["procs"] = max(peak["rss"], rss), max(peak["pss"], pss), max(peak["procs"], n)
            peak["top"] = max(peak["top"], top)
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = p.communicate()
    done.set()
    t.join()
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {p.returncode}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_gb": peak["rss"] / 1e9,
            "peak_pss_gb": peak["pss"] / 1e9, "max_processes": peak["procs"], "peak_one_process_rss_gb": peak["top"] / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="image folder (train/, test/)")
    ap.add_argument("--work", default=None, help="scratch project directory (default: a temporary one)")
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--resize", type=int, default=36)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dynamics", choices=("off", "on", "logits", "stats"), default="stats",
                    help="record the teacher's dynamics: per-example statistics (epochs x N x 21 bytes), full logits "
                         "(epochs x N x classes float16), on (teacher.dynamics: auto) or off")
    ap.add_argument("--phase", choices=("prepare", "teacher"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="kdprune-stream-memory-") as tmp:
        work = args.work or tmp
        base = [sys.executable, "-m", "bench.stream_memory", "--root", args.root, "--work", work,
                "--arch", args.arch, "--image-size", str(args.image_size), "--resize", str(args.resize),
                "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
                "--threads", str(args.threads), "--dynamics", args.dynamics]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        prep = measure(base + ["--phase", "prepare"], env)
        teach = measure(base + ["--phase", "teacher"], env)
    print(json.dumps({"root": args.root, "dynamics": args.dynamics, "epochs": args.epochs, "prepare": prep,
                      "teacher": teach}, indent=1))


if __name__ == "__main__":
    main()
