"""Joint selectors on the Fashion-MNIST study pool: wall time and peak extra memory per selector and
kept fraction (the figures README's scheme table quotes).

    python -m bench.joint_bench [--teacher-epochs 12] [--fractions 0.1 0.5] [--only craig ...]
        [--both-modes] [--subsample gradmatch:global=5000 ...] [--option craig:global:max_matrix_mb=1024 ...]
        [--timeout 900]

Builds the pool exactly as profiles/fashion_mnist.yaml's prepare stage does (its val_fraction,
split_seed and max_train; ``--max-train N`` overrides the last, e.g. 15000 for the earlier pool in
README's last column; the inputs are cached per pool size), trains the teacher with that profile's teacher settings (cached
under .kdprune/bench/joint/), computes the selectors' inputs once, then runs each (selector,
mode, fraction) in a fresh subprocess so the peak resident-memory growth it reports is its own.
``--both-modes`` runs every selector per class and over the whole pool (not only its default
mode); ``--subsample name:mode=N`` runs that cell on a stratified N-example subsample of the pool
(for cells too slow for the full pool; the table says so), ``--option name:mode:key=value`` sets
one of the selector's options in that mode (value as JSON); a run over ``--timeout`` seconds is
stopped and reported as such. Times are wall clock on whatever else the machine is running (the
load average before and after is recorded); results go to .kdprune/bench/joint/results.json and
a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".kdprune" / "bench" / "joint"


def build(teacher_epochs: int, max_train: int | None) -> None:
    import torch
    import yaml

    from kdprune.data import DATASETS, stratified_split
    from kdprune.data.base import stratified_subsample
    from kdprune.models import build_model
    from kdprune.selection.joint.inputs import model_inputs
    from kdprune.train import DeviceData, seeded, train
    from kdprune.config import validate
    from kdprune.train import train_config

    if (WORK / "inputs.npz").exists():
        return
    prof = validate(yaml.safe_load((REPO / "profiles" / "fashion_mnist.yaml").read_text()), stage="teacher")
    dp, tp = prof.data, dataclasses.replace(prof.teacher, compile=False)
    raw = DATASETS.get("fashion_mnist")(root=dp.root)
    keep, held = stratified_split(raw.train_y, dp.val_fraction, dp.split_seed)
    if max_train is not None and max_train < len(keep):
        keep = keep[stratified_subsample(raw.train_y[keep], max_train, dp.split_seed)]
    x01 = raw.train_x[keep].astype(np.float64) / 255.0
    mean, std = x01.mean(axis=(0, 2, 3)), np.maximum(x01.std(axis=(0, 2, 3)), 1e-6)
    dev = torch.device("cpu")
    tr = DeviceData.from_numpy(raw.train_x[keep], raw.train_y[keep], mean, std, dev)
    va = DeviceData.from_numpy(raw.train_x[held], raw.train_y[held], mean, std, dev)
    with seeded(tp.seed):
        model = build_model(tp.arch, 1, 10, 28)
    t0 = time.perf_counter()
    res = train(model, tr, train_config(tp, epochs=teacher_epochs), val=va)
    model.load_state_dict(res.best_state)
    print(f"teacher: {teacher_epochs} epochs, {time.perf_counter() - t0:.0f}s, val acc {res.best_score:.4f}",
          flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    torch.save({"state": model.state_dict(), "arch": tp.arch}, WORK / "teacher.pt")
    t0 = time.perf_counter()
    inp = model_inputs(model, tr, va, {"features", "gradients", "validation"}, 10)
    np.savez(WORK / "inputs.npz", ids=keep, labels=inp.labels, features=inp.features,
             logits=inp.logits, probs=inp.probs, gradients=inp.gradients, val_features=inp.val_features,
             val_logits=inp.val_logits, val_labels=inp.val_labels, x=raw.train_x[keep], mean=mean, std=std,
             inputs_s=time.perf_counter() - t0)


def measure(name: str, fraction: float, options: dict, pool: int = 0) -> dict:
    """One selector at one fraction in this (fresh) process: seconds and peak RSS growth; with
    ``pool``, on a stratified subsample of that many examples (seed 0)."""
    import psutil
    import torch

    from kdprune.data.base import stratified_subsample
    from kdprune.models import build_model
    from kdprune.selection import JOINT, JointInputs, run_joint
    from kdprune.train import DeviceData

    z = dict(np.load(WORK / "inputs.npz"))
    if pool:
        rows = stratified_subsample(z["labels"], pool, 0)
        for key in ("ids", "labels", "features", "logits", "probs", "gradients", "x"):
            z[key] = z[key][rows]
    inp = JointInputs(labels=z["labels"], num_classes=10, features=z["features"], logits=z["logits"],
                      probs=z["probs"], gradients=z["gradients"], val_features=z["val_features"],
                      val_logits=z["val_logits"], val_labels=z["val_labels"])
    if "model" in JOINT.get(name).needs:
        ck = torch.load(WORK / "teacher.pt")
        model = build_model(ck["arch"], 1, 10, 28)
        model.load_state_dict(ck["state"])
        inp.model = model.eval()
        d = DeviceData.from_numpy(z["x"], z["labels"], z["mean"], z["std"], torch.device("cpu"))
        inp.inputs = d.normalise(d.x)
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def poll():
        while not stop.wait(0.005):
            peak[0] = max(peak[0], proc.memory_info().rss)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    t0 = time.perf_counter()
    kept, _ = run_joint(name, z["ids"], inp, fraction, seed=0, options=options)
    secs = time.perf_counter() - t0
    stop.set()
    th.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return {"selector": name, "options": options, "fraction": fraction, "n_pool": int(len(z["ids"])), "subsample": bool(pool),
            "kept": int(len(kept)), "seconds": secs, "peak_mem_mb": (peak[0] - base) / 2**20,
            "inputs_s": float(z["inputs_s"])}


def load_average() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher-epochs", type=int, default=12)
    ap.add_argument("--max-train", type=int, default=None,
                    help="training-pool size (default: the profile's data.max_train; null there: the whole pool)")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.5])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--both-modes", action="store_true",
                    help="run every selector per class and over the whole pool (default: its default mode only)")
    ap.add_argument("--subsample", nargs="*", default=[], metavar="NAME:MODE=N",
                    help="run NAME in MODE (per-class or global) on a stratified N-example subsample of the pool")
    ap.add_argument("--option", nargs="*", default=[], metavar="NAME:MODE:KEY=VALUE",
                    help="set a selector option in one mode (VALUE as JSON), e.g. craig:global:max_matrix_mb=1024")
    ap.add_argument("--timeout", type=float, default=900.0, help="stop a run after this many seconds")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: name|fraction|options json|pool
    a = ap.parse_args()
    global WORK
    import yaml

    prof_max = yaml.safe_load((REPO / "profiles" / "fashion_mnist.yaml").read_text())["data"]["max_train"]
    max_train = a.max_train if a.max_train is not None else prof_max
    WORK = WORK / f"pool-{max_train or 'all'}"
    if a.one:
        name, frac, opts, pool = a.one.split("|", 3)
        print(json.dumps(measure(name, float(frac), json.loads(opts), int(pool))))
        return
    from kdprune.selection import JOINT

    sub = {}
    for item in a.subsample:
        cell, _, n = item.partition("=")
        sel, _, mode = cell.partition(":")
        if sel not in JOINT.names() or mode not in ("per-class", "global") or not n.isdigit():
            raise SystemExit(f"--subsample {item!r}: expected NAME:MODE=N with NAME one of {', '.join(JOINT.names())}, "
                             "MODE per-class or global, N a number of examples")
        sub[(sel, mode == "per-class")] = int(n)
    extra: dict = {}
    for item in a.option:
        cell, _, value = item.partition("=")
        sel, mode, key = (cell.split(":") + ["", ""])[:3]
        if (sel not in JOINT.names() or mode not in ("per-class", "global") or key == "balance"
                or key not in JOINT.get(sel).options):
            raise SystemExit(f"--option {item!r}: expected NAME:MODE:KEY=VALUE with NAME a selector, MODE per-class "
                             "or global (--both-modes runs both), KEY one of the selector's options other than balance")
        extra.setdefault((sel, mode == "per-class"), {})[key] = json.loads(value)
    build(a.teacher_epochs, max_train)
    load_before = load_average()
    print(load_before, flush=True)
    t_all = time.perf_counter()
    runs = []
    for name in a.only or JOINT.names():
        default = JOINT.get(name).options["balance"].default
        for bal in ([default, not default] if a.both_modes else [default]):
            opts = ({} if bal == default else {"balance": bal}) | extra.get((name, bal), {})
            pool = sub.get((name, bal), 0)
            for frac in a.fractions:
                cmd = [sys.executable, "-m", "bench.joint_bench", "--one", f"{name}|{frac}|{json.dumps(opts)}|{pool}",
                       *(["--max-train", str(max_train)] if max_train else [])]
                try:
                    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=a.timeout)
                except subprocess.TimeoutExpired:
                    r = {"selector": name, "options": opts, "fraction": frac, "n_pool": pool or None,
                         "timed_out_s": a.timeout}
                else:
                    if p.returncode:
                        raise SystemExit(f"{name} {frac} {opts} failed:\n{p.stderr[-3000:]}")
                    r = json.loads(p.stdout.strip().splitlines()[-1])
                r["per_class"] = bal
                runs.append(r)
                print(f"{name:18s} {'per class' if bal else 'global':9s} {frac:4g} {_cell(r):>22s}", flush=True)
    load_after = load_average()
    total = time.perf_counter() - t_all
    print(f"{load_after}; all runs {total:.0f}s", flush=True)
    (WORK / "results.json").write_text(json.dumps({"load_before": load_before, "load_after": load_after,
                                                    "total_s": total, "runs": runs}, indent=1))
    print("\n| selector | mode | " + " | ".join(f"kept {f:g}: s / peak MiB" for f in a.fractions) + " |\n| --- | --- | "
          + " | ".join("---" for _ in a.fractions) + " |")
    for name in dict.fromkeys(r["selector"] for r in runs):
        for bal in dict.fromkeys(r["per_class"] for r in runs if r["selector"] == name):
            rs = {r["fraction"]: r for r in runs if r["selector"] == name and r["per_class"] == bal}
            cells = [_cell(rs[f]) if f in rs else "—" for f in a.fractions]
            set_ = {k: v for r in rs.values() for k, v in r["options"].items() if k != "balance"}
            mode = ("per class" if bal else "global") + "".join(f", {k} {v}" for k, v in set_.items())
            print(f"| {name} | {mode} | " + " | ".join(cells) + " |")


def _cell(r: dict) -> str:
    if "timed_out_s" in r:
        return f"> {r['timed_out_s']:.0f} s (stopped)"
    sub = f" (on {r['n_pool']:,})" if r.get("subsample") else ""
    return f"{r['seconds']:.1f} / {r['peak_mem_mb']:.0f}{sub}"


if __name__ == "__main__":
    main()
