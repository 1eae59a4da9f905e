"""Joint selectors on the Fashion-MNIST study pool: wall time and peak extra memory per selector and
kept fraction (the figures README's scheme table quotes).

    python -m bench.joint_bench [--teacher-epochs 12] [--fractions 0.1 0.5] [--only craig ...]

Builds the pool exactly as profiles/fashion_mnist.yaml's prepare stage does (val_fraction 0.05,
max_train 15000, split_seed 0), trains the teacher with that profile's teacher settings (cached
under .kdprune/bench/joint/), computes the selectors' inputs once, then runs each (selector,
fraction) in a fresh subprocess so the peak resident-memory growth it reports is its own. Times
are wall clock on whatever else the machine is running; results go to
.kdprune/bench/joint/results.json and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".kdprune" / "bench" / "joint"


def build(teacher_epochs: int) -> None:
    import torch
    import yaml

    from kdprune.data import DATASETS, stratified_split
    from kdprune.data.base import stratified_subsample
    from kdprune.models import build_model
    from kdprune.selection.joint.inputs import model_inputs
    from kdprune.train import DeviceData, seeded, train
    from tasks.teacher import train_config

    if (WORK / "inputs.npz").exists():
        return
    prof = yaml.safe_load((REPO / "profiles" / "fashion_mnist.yaml").read_text())
    dp, tp = prof["data"], prof["teacher"]
    raw = DATASETS.get("fashion_mnist")(root=dp["root"])
    keep, held = stratified_split(raw.train_y, dp["val_fraction"], dp["split_seed"])
    keep = keep[stratified_subsample(raw.train_y[keep], dp["max_train"], dp["split_seed"])]
    x01 = raw.train_x[keep].astype(np.float64) / 255.0
    mean, std = x01.mean(axis=(0, 2, 3)), np.maximum(x01.std(axis=(0, 2, 3)), 1e-6)
    dev = torch.device("cpu")
    tr = DeviceData.from_numpy(raw.train_x[keep], raw.train_y[keep], mean, std, dev)
    va = DeviceData.from_numpy(raw.train_x[held], raw.train_y[held], mean, std, dev)
    with seeded(tp["seed"]):
        model = build_model(tp["arch"], 1, 10, 28)
    t0 = time.perf_counter()
    res = train(model, tr, train_config({**tp, "compile": False}, epochs=teacher_epochs), val=va)
    model.load_state_dict(res.best_state)
    print(f"teacher: {teacher_epochs} epochs, {time.perf_counter() - t0:.0f}s, val acc {res.best_val_acc:.4f}",
          flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    torch.save({"state": model.state_dict(), "arch": tp["arch"]}, WORK / "teacher.pt")
    t0 = time.perf_counter()
    inp = model_inputs(model, tr, va, {"features", "gradients", "validation"}, 10)
    np.savez(WORK / "inputs.npz", ids=keep, labels=inp.labels, features=inp.features,
             logits=inp.logits, probs=inp.probs, gradients=inp.gradients, val_features=inp.val_features,
             val_logits=inp.val_logits, val_labels=inp.val_labels, x=raw.train_x[keep], mean=mean, std=std,
             inputs_s=time.perf_counter() - t0)


def measure(name: str, fraction: float, options: dict) -> dict:
    """One selector at one fraction in this (fresh) process: seconds and peak RSS growth."""
    import psutil
    import torch

    from kdprune.models import build_model
    from kdprune.selection import JOINT, JointInputs, run_joint
    from kdprune.train import DeviceData

    z = np.load(WORK / "inputs.npz")
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
    return {"selector": name, "options": options, "fraction": fraction, "n_pool": int(len(z["ids"])),
            "kept": int(len(kept)), "seconds": secs, "peak_mem_mb": (peak[0] - base) / 2**20,
            "inputs_s": float(z["inputs_s"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher-epochs", type=int, default=12)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.5])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--global-too", action="store_true", help="also run the per-class selectors over the whole pool")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: name|fraction|options json
    a = ap.parse_args()
    if a.one:
        name, frac, opts = a.one.split("|", 2)
        print(json.dumps(measure(name, float(frac), json.loads(opts))))
        return
    from kdprune.selection import JOINT

    build(a.teacher_epochs)
    runs = []
    for name in a.only or JOINT.names():
        variants = [{}]
        if a.global_too and JOINT.get(name).options["balance"].default:
            variants.append({"balance": False})
        for opts in variants:
            for frac in a.fractions:
                p = subprocess.run([sys.executable, "-m", "bench.joint_bench", "--one",
                                    f"{name}|{frac}|{json.dumps(opts)}"], cwd=REPO, capture_output=True, text=True)
                if p.returncode:
                    raise SystemExit(f"{name} {frac} {opts} failed:\n{p.stderr[-3000:]}")
                r = json.loads(p.stdout.strip().splitlines()[-1])
                runs.append(r)
                print(f"{name:18s} {json.dumps(opts):20s} {frac:4g} {r['seconds']:8.2f}s {r['peak_mem_mb']:8.1f} MiB",
                      flush=True)
    (WORK / "results.json").write_text(json.dumps(runs, indent=1))
    print("\n| selector | per class | kept 0.1: s / peak MiB | kept 0.5: s / peak MiB |\n| --- | --- | --- | --- |")
    for name in dict.fromkeys(r["selector"] for r in runs):
        for opts in dict.fromkeys(json.dumps(r["options"]) for r in runs if r["selector"] == name):
            rs = {r["fraction"]: r for r in runs if r["selector"] == name and json.dumps(r["options"]) == opts}
            bal = json.loads(opts).get("balance", JOINT.get(name).options["balance"].default)
            cells = [f"{rs[f]['seconds']:.1f} / {rs[f]['peak_mem_mb']:.0f}" if f in rs else "—" for f in a.fractions]
            print(f"| {name} | {'yes' if bal else 'no'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
