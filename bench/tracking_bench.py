"""What the orchestration shortcuts save on the default pipeline (issue 12, item 4): the MLflow writer
process against MLflow in the pipeline's own process, the ``os._exit`` fast exit, and stage subflows
without heartbeat threads of their own.

A fresh copy of the project runs the default pipeline once (untimed: the Prefect server starts, the
data and the page cache warm up), then ``python -m flows pipeline --force`` (what `make run` runs on a
fresh clone: every stage) in each arm, ``--rounds`` times, interleaved A B C D D C B A ... so that a
drift of the machine falls on every arm alike:

- ``writer``: the project as it is (MLflow in the writer process, fast exit, no subflow heartbeats);
- ``inprocess``: ``KDPRUNE_TRACKING=inprocess`` (MLflow imported on a thread of the pipeline's process,
  logging on another; tasks/tracking.py ``_InProcess``);
- ``no_fast_exit``: as ``writer``, but the process ends through normal interpreter teardown
  (flows/__main__.py ``_fast_exit`` replaced by a no-op);
- ``heartbeats``: as ``writer``, but each stage subflow sends heartbeats of its own
  (flows/pipeline.py ``no_subflow_heartbeats`` replaced by a null context).

Every arm runs through the same launcher (``python -c`` importing flows.__main__ and calling main,
with the arm's patch applied when flows.pipeline is imported, so nothing is imported earlier than in
`python -m flows`), and must train the same students to the same bits (checked). Printed: each
run's wall, per arm the median wall, the median paired difference to ``writer`` (runs next to each
other in the order) and its share of ``writer``'s wall, and from the pipeline's MLflow run the
seconds the stages waited on MLflow and the orchestration seconds. The rule (issue 12): keep the
simpler variant unless the other saves more than 3% of the wall.

    python -m bench.tracking_bench [--rounds 2] [--arms writer,inprocess,no_fast_exit,heartbeats]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.grand_bench import write_rows
from bench.pipeline_bench import _parent_metrics
from bench.project import REPO, free_port, make_project
from bench.ray_bench import student_hashes

# the arm's environment; read by tasks/tracking.py (KDPRUNE_TRACKING) or by LAUNCHER (KDPRUNE_BENCH_*)
ARMS = {
    "writer": {},
    "inprocess": {"KDPRUNE_TRACKING": "inprocess"},
    "no_fast_exit": {"KDPRUNE_BENCH_NO_FAST_EXIT": "1"},
    "heartbeats": {"KDPRUNE_BENCH_SUBFLOW_HEARTBEATS": "1"},
}
BASELINE = "writer"
SHARE = 0.03  # issue 12: keep the simpler variant unless the other saves more than 3% of the wall

# `python -m flows` with an arm's patch; flows.pipeline is patched when it is imported (by main), not before
LAUNCHER = r"""
import contextlib, importlib.abc, importlib.machinery, os, sys

def after_import(name, patch):
    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            run = spec.loader.exec_module
            def exec_module(module):
                run(module)
                patch(module)
            spec.loader.exec_module = exec_module
            return spec
    sys.meta_path.insert(0, Finder())

if os.environ.get("KDPRUNE_BENCH_SUBFLOW_HEARTBEATS") == "1":
    after_import("flows.pipeline", lambda m: setattr(m, "no_subflow_heartbeats", contextlib.nullcontext))
import flows.__main__ as cli
if os.environ.get("KDPRUNE_BENCH_NO_FAST_EXIT") == "1":
    cli._fast_exit = lambda: None
cli.main()
"""


def order(arms: list[str], rounds: int) -> list[str]:
    """A B C, C B A, A B C, ...: each arm as often early as late."""
    return [a for r in range(rounds) for a in (arms if r % 2 == 0 else arms[::-1])]


def paired_differences(runs: list[tuple[str, float]], arm: str) -> list[float]:
    """For each run of ``arm``, its wall minus the nearest run of the baseline in the order."""
    base = [(i, w) for i, (a, w) in enumerate(runs) if a == BASELINE]
    return [w - min(base, key=lambda b: abs(b[0] - i))[1] for i, (a, w) in enumerate(runs) if a == arm]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)} "
                                                           f"({BASELINE} is always run)")
    ap.add_argument("--out", default="reports/bench.json")
    args = ap.parse_args()
    arms = [BASELINE] + [a for a in args.arms.split(",") if a and a != BASELINE]
    if unknown := [a for a in arms if a not in ARMS]:
        raise SystemExit(f"tracking_bench: unknown arm(s) {', '.join(unknown)}; valid: {', '.join(ARMS)}")
    runs: list[tuple[str, float]] = []
    metrics: dict[str, list[dict]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        proj = make_project(Path(tmp) / "tracking", free_port())
        try:
            print("tracking bench: the default pipeline once (untimed) ...", flush=True)
            proj.run(sys.executable, "-m", "flows", "pipeline", timeout=1800)
            reference = student_hashes(proj.path)
            for arm in order(arms, args.rounds):
                t0 = time.perf_counter()
                proj.run(sys.executable, "-c", LAUNCHER, "pipeline", "--force", timeout=1800, env=ARMS[arm])
                wall = time.perf_counter() - t0
                runs.append((arm, wall))
                m = _parent_metrics(proj)
                metrics[arm].append(m)
                print(f"  {arm:13s} {wall:6.1f}s (in the flow {m['pipeline_s']:.1f}s, orchestration "
                      f"{m['overhead_s']:.1f}s, waiting on MLflow {m.get('tracking_blocked_s', float('nan')):.2f}s)",
                      flush=True)
                if student_hashes(proj.path) != reference:
                    raise SystemExit(f"the {arm} arm trained different students")
        finally:
            proj.stop_server()
    base = statistics.median(w for a, w in runs if a == BASELINE)
    rows = []
    print(f"median wall of {BASELINE} (the project as it is): {base:.1f}s over {args.rounds} runs")
    for arm in arms:
        walls = [w for a, w in runs if a == arm]
        med = statistics.median(walls)
        blocked = statistics.median(m.get("tracking_blocked_s", float("nan")) for m in metrics[arm])
        over = statistics.median(m["overhead_s"] for m in metrics[arm])
        if arm == BASELINE:
            print(f"  {arm:13s} median {med:6.1f}s; waiting on MLflow {blocked:.2f}s, orchestration {over:.1f}s")
            continue
        diff = statistics.median(paired_differences(runs, arm))
        print(f"  {arm:13s} median {med:6.1f}s, ratio {med / base:.3f}; paired difference {diff:+.2f}s = "
              f"{100 * diff / base:+.1f}% of the wall; waiting on MLflow {blocked:.2f}s, orchestration {over:.1f}s")
        # what the project's shortcut (writer process, fast exit, no subflow heartbeats) saves over the
        # simpler arm, as a share of the wall: the shortcut earns its keep above SHARE
        rows.append({"name": f"tracking_bench_{arm}_vs_{BASELINE}", "value": round(diff / base, 4),
                     "unit": "fraction", "target": f"> {SHARE} keeps the shortcut",
                     "walls_s": [round(w, 1) for w in walls],
                     "baseline_walls_s": [round(w, 1) for a, w in runs if a == BASELINE],
                     "median_ratio": round(med / base, 4), "tracking_blocked_s": round(blocked, 2),
                     "baseline_tracking_blocked_s": round(statistics.median(
                         m.get("tracking_blocked_s", float("nan")) for m in metrics[BASELINE]), 2)})
    write_rows(rows, REPO / args.out)


if __name__ == "__main__":
    main()
