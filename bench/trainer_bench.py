"""Trainer throughput vs a bare PyTorch loop doing the same work, and the KD step's added cost.

Both loops train the same model (same init) on the same device-resident uint8 data with the same
batch size, vectorised augmentation (kdprune.train.augment), normalisation, loss and SGD
optimizer; the bare loop has nothing else (no metrics, no LR schedule, no checkpoints, no
validation). The trainer runs as the stages run it (metrics on the device, read once per epoch),
without validation so both do the same work. After a warm-up round, each round runs every loop
once over whole epochs (the order rotating); the ratios are medians over rounds of the paired
times, throughput is the best round.

    python -m bench.trainer_bench [--arch small_cnn] [--shape 1 28 28] [--n 8192] [--batch-size 128]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import kdprune  # noqa: F401
from kdprune.device import resolve_device
from kdprune.distill import KDSetting
from kdprune.models import build_model
from kdprune.train import DeviceData, TrainConfig, augment_batch, epoch_augmentation, seeded, train

from bench.grand_bench import write_rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_epochs(model, data: DeviceData, epochs: int, bs: int, lr: float, pad: int, flip: bool) -> None:
    """The minimal loop: shuffle, gather, augment, normalise, forward, CE, backward, step."""
    device = data.x.device
    decay = [p for p in model.parameters() if p.ndim > 1]  # the trainer's optimizer: no decay on BN/bias
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9, nesterov=True)
    model.train()
    n = len(data)
    g = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        aug = epoch_augmentation(n, epoch, 0, pad, flip, device)
        perm = torch.randperm(n, generator=g).to(device)
        for i in range(0, n, bs):
            rows = perm[i : i + bs]
            xb = augment_batch(data.x[rows], aug.dy[rows], aug.dx[rows], None if aug.flip is None else aug.flip[rows], pad)
            xb = data.normalise(xb)
            if device.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(xb).float(), data.y[rows])
            else:
                loss = F.cross_entropy(model(xb), data.y[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def _timed_rounds(fns: dict, device, rounds: int) -> dict[str, list[float]]:
    """Wall time of each function in each round, all run once per round (one warm-up round first);
    the order within a round rotates, so that neither always runs first after another's work."""
    for fn in fns.values():
        fn()
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            _sync(device)
            t0 = time.perf_counter()
            fns[k]()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[r] / den[r]: a slow spell of the machine hits both loops of a round
    alike and cancels; one that hits only one of them is an outlier the median ignores."""
    return statistics.median(a / b for a, b in zip(num, den))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--shape", type=int, nargs=3, default=[1, 28, 28], metavar=("C", "H", "W"))
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=1, help="epochs per timed repeat")
    ap.add_argument("--repeats", type=int, default=9, help="timed rounds")
    ap.add_argument("--pad", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--keep-denormals", action="store_true",
                    help="leave CPU denormal handling on (by default both loops flush denormals: on this CPU, "
                         "denormal arithmetic made repeated timings vary by +-25%%)")
    ap.add_argument("--out", default="reports/bench.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.keep_denormals:
        torch.set_flush_denormal(True)
    device = resolve_device(args.device)
    c, h, w = args.shape
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.n, c, h, w), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (args.n,), generator=g)
    data = DeviceData(x.to(device), y.to(device), torch.full((c,), 0.5, device=device), torch.full((c,), 0.25, device=device))

    def fresh(seed: int = 0):
        with seeded(seed):
            m = build_model(args.arch, c, 10, h).to(device)
        return m.to(memory_format=torch.channels_last) if device.type == "cuda" else m

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.05, pad=args.pad, warmup_epochs=0.0)
    teacher = fresh(1).eval()
    samples = args.n * args.epochs
    kd = KDSetting("kd", 0.5, 4.0, args.arch, "constant", "kd0.5")
    times = _timed_rounds({
        "bare": lambda: bare_epochs(fresh(), data, args.epochs, args.batch_size, 0.05, args.pad, False),
        "trainer": lambda: train(fresh(), data, cfg),
        "kd": lambda: train(fresh(), data, cfg, teacher=teacher, kd=kd),
    }, device, args.repeats)
    ratio, kd_ratio = paired_ratio(times["bare"], times["trainer"]), paired_ratio(times["kd"], times["trainer"])
    best = {k: min(v) for k, v in times.items()}
    best_ratio = best["bare"] / best["trainer"]
    spread = {k: (max(v) - min(v)) / min(v) for k, v in times.items()}
    print(f"{args.arch} on {args.n} x {c}x{h}x{w}, batch {args.batch_size}, {args.epochs} epochs per round, "
          f"{args.repeats} rounds, {device}:")
    print(f"  bare PyTorch loop   {samples / best['bare']:10.0f} samples/s (best round; rounds spread "
          f"{100 * spread['bare']:.0f}%)")
    print(f"  kdprune trainer     {samples / best['trainer']:10.0f} samples/s   ratio {ratio:.3f} (median over "
          f"rounds of bare time / trainer time; best-of ratio {best_ratio:.3f}; target >= 0.95)")
    print(f"  trainer + KD        {samples / best['kd']:10.0f} samples/s   KD step / plain step {kd_ratio:.3f}")
    meta = {"device": str(device), "arch": args.arch, "shape": args.shape, "batch_size": args.batch_size,
            "threads": torch.get_num_threads(), "flush_denormal": not args.keep_denormals}
    write_rows([
        {"name": "trainer_vs_bare_ratio", "value": round(ratio, 3), "unit": "x", "target": ">= 0.95", **meta,
         "estimator": f"median over {args.repeats} rounds of bare/trainer time", "best_of_ratio": round(best_ratio, 3),
         "trainer_samples_per_s": round(samples / best["trainer"]), "bare_samples_per_s": round(samples / best["bare"]),
         "round_spread": {k: round(v, 3) for k, v in spread.items()}},
        {"name": "kd_step_vs_plain_ratio", "value": round(kd_ratio, 3), "unit": "x", "target": "report", **meta},
    ], Path(args.out))


if __name__ == "__main__":
    main()
