"""The streaming data path's training throughput vs a bare torchvision ImageFolder + DataLoader loop.

Both train the same model (same init) for one epoch over the same image folder (synthetic 64 px
JPEGs written once into a scratch directory, or --root) with the same DataLoader workers, batch
size, decoder (torchvision.io.decode_image), transforms (random-resized crop to --size, scale
[0.08, 1], ratio [3/4, 4/3], antialiased; horizontal flip), normalisation, loss and SGD. The bare loop is
torchvision's ImageFolder with transforms.v2 and a shuffling DataLoader, and nothing else; the
kdprune side runs the prepared index through StreamData and the trainer as the teacher stage runs it
(without validation, so both do the same work). After a warm-up round, each round runs both loops
once (the order alternating); the ratio is the median over rounds of the paired times, images/s the
best round.

    python -m bench.stream_bench [--images 4000] [--classes 100] [--size 32] [--workers 2] [--rounds 5]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import kdprune  # noqa: F401
from kdprune.config import validate
from kdprune.models import build_model
from kdprune.train import TrainConfig, seeded, train

from bench.grand_bench import write_rows
from bench.trainer_bench import paired_ratio


def _tv_loader(path: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, read_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_image(read_file(path), mode=ImageReadMode.RGB)


def bare_loader(root: Path, size: int, workers: int, bs: int) -> torch.utils.data.DataLoader:
    """torchvision's ImageFolder with the same decoder and transforms in a shuffling DataLoader (created
    once, persistent workers: each round is one more epoch of it)."""
    from torchvision import datasets
    from torchvision.transforms import v2

    tf = v2.Compose([v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip()])
    ds = datasets.ImageFolder(str(root / "train"), loader=_tv_loader, transform=tf)
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=workers, generator=g,
                                       persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def bare_epoch(model, dl, mean, std) -> int:
    """One epoch of the minimal loop: normalise, forward, CE, backward, step."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.05, momentum=0.9, nesterov=True)
    m = torch.tensor(mean)[None, :, None, None]
    s = torch.tensor(std)[None, :, None, None]
    model.train()
    n = 0
    for x, y in dl:
        x = (x.float().div_(255.0) - m) / s
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="an image folder (train/, test/); default: a synthetic one")
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--size", type=int, default=32, help="crop side trained on")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="reports/bench.json")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    from artifacts.models import device_data
    from artifacts.stages import load_prepared
    from kdprune.data.synthetic import write_synthetic
    from tasks.prepare import write_prepared

    with tempfile.TemporaryDirectory(prefix="kdprune-stream-bench-") as tmp:
        tmp = Path(tmp)
        root = Path(args.root) if args.root else tmp / "images"
        if not args.root:
            write_synthetic(root, args.classes, args.images, args.classes, 64, "jpg", 0, workers=args.workers)
        params = validate({"data": {"dataset": "imagefolder", "root": str(root), "loader": "stream",
                                    "image_size": args.size, "resize": args.size, "workers": args.workers,
                                    "val_fraction": 0.01},
                           "teacher": {"pad": 0}, "student": {"pad": 0}})
        write_prepared(tmp / "project", params, logging.getLogger("stream_bench"))
        meta, splits = load_prepared(tmp / "project", "imagefolder")
        data = device_data(meta, splits["train"], "cpu", params)
        n = len(data)
        cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.05, flip=True, warmup_epochs=0.0)

        def fresh():
            with seeded(0):
                return build_model(args.arch, 3, meta["num_classes"], args.size)

        # the bare loop reads the whole folder; the index holds the train split (val_fraction 0.01 held out)
        dl = bare_loader(root, args.size, args.workers, args.batch_size)

        def stream_epoch() -> int:
            train(fresh(), data, cfg)
            return n

        loops = {"bare": lambda: bare_epoch(fresh(), dl, meta["mean"], meta["std"]), "stream": stream_epoch}
        counts = {k: fn() for k, fn in loops.items()}  # warm-up: page cache, workers started
        times = {k: [] for k in loops}
        for r in range(args.rounds):
            for k in (["bare", "stream"] if r % 2 == 0 else ["stream", "bare"]):
                t0 = time.perf_counter()
                loops[k]()
                times[k].append(time.perf_counter() - t0)
        data.close()
    per_image = {k: [t / counts[k] for t in v] for k, v in times.items()}
    ratio = paired_ratio(per_image["bare"], per_image["stream"])  # bare time per image / stream time per image
    best = {k: counts[k] / min(v) for k, v in times.items()}
    print(f"{args.arch}, {args.size} px random-resized crops of 64 px JPEGs, batch {args.batch_size}, "
          f"{args.workers} workers, {args.rounds} rounds (cpu, {torch.get_num_threads()} threads):")
    print(f"  bare ImageFolder + DataLoader {best['bare']:8.0f} images/s (best round)")
    print(f"  kdprune stream path           {best['stream']:8.0f} images/s   ratio {ratio:.3f} (median over rounds of "
          f"the paired per-image times, bare / stream; target >= 0.95)")
    write_rows([{"name": "stream_vs_bare_loader_ratio", "value": round(ratio, 3), "unit": "x", "target": ">= 0.95",
                 "device": "cpu", "arch": args.arch, "size": args.size, "workers": args.workers,
                 "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                 "images": {k: counts[k] for k in counts},
                 "estimator": f"median over {args.rounds} interleaved rounds of bare/stream time per image",
                 "stream_images_per_s": round(best["stream"]), "bare_images_per_s": round(best["bare"]),
                 "stream_s": [round(t, 2) for t in times["stream"]], "bare_s": [round(t, 2) for t in times["bare"]]}],
               Path(args.out))


if __name__ == "__main__":
    main()
