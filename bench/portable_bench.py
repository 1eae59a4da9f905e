"""What the portable CPU setting costs: the default pipeline with ``reproducibility.cpu: portable``
(kernels pinned at AVX2, kdprune/reproducibility.py) against ``native`` (the machine's best kernels).

Each round runs `python -m flows pipeline` from nothing in a fresh copy of the project once per arm,
the arms alternating which goes first, each against a local Prefect server started beforehand. Per
run: the pipeline's wall time, the teacher's training time and the median student's training time
(from the run records in .kdprune/runs/). Reported: the ratio of the medians, portable / native.

    python -m bench.portable_bench [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.grand_bench import write_rows
from bench.project import REPO, free_port, make_project

ARMS = ("native", "portable")


def one_run(tmp: Path, arm: str, i: int) -> dict:
    proj = make_project(tmp / f"{arm}{i}", free_port(), {"reproducibility": {"cpu": arm}})
    try:
        proj.run(sys.executable, "-c", "from servers.runtime import configure_env as c, ensure_prefect_server as e; c(); e()")
        t0 = time.perf_counter()
        proj.run(sys.executable, "-m", "flows", "pipeline", timeout=3600)
        wall = time.perf_counter() - t0
    finally:
        proj.stop_server()
    runs = proj.path / ".kdprune" / "runs"
    teacher = json.loads((runs / "teacher.json").read_text())["wall_s"]
    students = [r["wall_s"] for r in json.loads((runs / "distill.json").read_text()).values() if "wall_s" in r]
    return {"pipeline": wall, "teacher": teacher, "student": statistics.median(students)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {a: [] for a in ARMS}
    with tempfile.TemporaryDirectory(prefix="kdprune-portable-") as tmp:
        for i in range(args.rounds):
            for arm in (ARMS if i % 2 == 0 else ARMS[::-1]):  # interleaved, each arm first in turn
                r = one_run(Path(tmp), arm, i)
                runs[arm].append(r)
                print(f"round {i + 1} {arm:8s}: pipeline {r['pipeline']:.1f}s, teacher {r['teacher']:.1f}s, "
                      f"median student {r['student']:.2f}s", flush=True)
    rows = []
    for what in ("pipeline", "teacher", "student"):
        med = {a: statistics.median(r[what] for r in runs[a]) for a in ARMS}
        ratio = med["portable"] / med["native"]
        print(f"{what:8s}: portable / native = {ratio:.3f} (medians {med['portable']:.2f}s / {med['native']:.2f}s)")
        rows.append({"name": f"portable_cost_{what}", "value": round(ratio, 3), "unit": "ratio", "target": "<= 1.25",
                     "portable_s": [round(r[what], 2) for r in runs["portable"]],
                     "native_s": [round(r[what], 2) for r in runs["native"]]})
    write_rows(rows, REPO / "reports" / "bench.json")


if __name__ == "__main__":
    main()
