"""GraNd: batched per-sample gradient norms (kdprune.scores.grand.grand_norms: one backward pass per
batch with per-layer closed forms, torch.func vmap for other layers) vs a per-sample autograd loop.

Same proxy models (fresh initialisations), same examples, same device; both produce the same
norms (checked). Prints a table and merges {"name", "value", "unit", "target"} rows into
reports/bench.json.

    python -m bench.grand_bench [--arch small_cnn] [--n 256] [--models 2] [--device auto]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import kdprune  # noqa: F401
from kdprune.data import DATASETS
from kdprune.device import resolve_device
from kdprune.models import build_model
from kdprune.scores.grand import grand_loop, grand_norms
from kdprune.train import seeded


def _time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    fn()  # warm-up
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if out.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def write_rows(rows: list[dict], path: Path) -> None:
    """Merge rows into reports/bench.json by name (atomic replace)."""
    import os
    import tempfile

    existing = json.loads(path.read_text()) if path.exists() else []
    names = {r["name"] for r in rows}
    merged = [r for r in existing if r["name"] not in names] + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".bench.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(merged, f, indent=2)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--n", type=int, default=256, help="examples scored")
    ap.add_argument("--models", type=int, default=2, help="proxy models averaged over")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="reports/bench.json")
    args = ap.parse_args()
    device = resolve_device(args.device)
    raw = DATASETS.get("digits")()
    x = torch.from_numpy(raw.train_x[: args.n]).float().div(255.0).to(device)
    x = (x - x.mean()) / x.std()
    y = torch.from_numpy(raw.train_y[: args.n]).to(device)
    models = []
    for s in range(args.models):
        with seeded(s):
            models.append(build_model(args.arch, 1, 10, 8).to(device))
    t_batched, a = _time(lambda: grand_norms(models, x, y, batch_size=args.batch_size), args.repeats)
    t_loop, b = _time(lambda: grand_loop(models, x, y), max(1, args.repeats - 2))
    err = float((a - b).abs().max() / b.abs().max())
    if err > 1e-3:
        raise SystemExit(f"batched and loop GraNd disagree (max relative error {err:.2e})")
    ratio = t_loop / t_batched
    print(f"GraNd on {args.n} examples x {args.models} {args.arch} models, {device}:")
    print(f"  per-sample loop      {t_loop * 1000:9.1f} ms  ({args.n * args.models / t_loop:8.0f} examples/s)")
    print(f"  batched              {t_batched * 1000:9.1f} ms  ({args.n * args.models / t_batched:8.0f} examples/s)")
    print(f"  speed-up             {ratio:9.1f}x  (aim >= 10x); max relative difference {err:.1e}")
    write_rows([{"name": "grand_batched_vs_loop_ratio", "value": round(ratio, 2), "unit": "x", "target": ">= 10",
                 "device": str(device), "arch": args.arch, "n": args.n, "models": args.models}], Path(args.out))


if __name__ == "__main__":
    main()
