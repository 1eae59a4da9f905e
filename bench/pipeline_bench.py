"""Orchestration cost of the default pipeline, and peak memory of the Fashion-MNIST teacher stage.

pipeline: a fresh copy of the project runs `python -m flows pipeline` on the default params
(what `make run` runs), against a local Prefect server started beforehand (a one-time cost that
is reported separately). The wall time of the whole process is split into stage work (what each stage's task body
takes, minus the time it waits on MLflow: reading inputs, training, scoring, selecting,
evaluating, writing outputs; logged to the MLflow parent run) and the rest, orchestration:
Prefect flow and task runs, MLflow, DVC status and commit, process start-up.

memory: `python -m flows teacher` on the Fashion-MNIST profile (profiles/fashion_mnist.yaml) with
its whole 57,000-image training pool (data.max_train: null), peak resident memory of the stage
process and its children (MLflow's process) together, sampled every 20 ms.

    python -m bench.pipeline_bench [--skip-memory]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.grand_bench import write_rows
from bench.project import REPO, free_port, make_project


def parent_metrics(proj) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{proj.path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdprune")
    runs = client.search_runs([exp.experiment_id], "tags.`kdprune.stage` = 'pipeline'", max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0].data.metrics


def pipeline_overhead(tmp: Path) -> list[dict]:
    proj = make_project(tmp / "pipeline", free_port())
    try:
        t0 = time.perf_counter()
        proj.run(sys.executable, "-m", "flows", "stop")  # no-op; imports warm the page cache
        proj.run(sys.executable, "-c", "from servers.runtime import configure_env as c, ensure_prefect_server as e; c(); e()")
        server_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        proj.run(sys.executable, "-m", "flows", "pipeline")
        wall = time.perf_counter() - t0
        m = parent_metrics(proj)
    finally:
        proj.stop_server()
    from flows.pipeline import STAGES

    stages = [s for s in STAGES if f"{s}_overhead_s" in m]
    compute = m["compute_s"]
    rest = {s: m[f"{s}_overhead_s"] for s in stages}
    startup = wall - m["pipeline_s"]
    print(f"default pipeline ({', '.join(stages)}), local Prefect server already up (its start took {server_s:.1f}s):")
    print(f"  wall {wall:.1f}s = stage work {compute:.1f}s + orchestration/tracking {wall - compute:.1f}s "
          f"({100 * (wall - compute) / wall:.1f}%), of which process start-up and flow set-up {startup:.1f}s")
    print("  per stage (wall - work): " + ", ".join(f"{s} {v:.2f}s" for s, v in rest.items()))
    return [
        {"name": "pipeline_wall_s", "value": round(wall, 2), "unit": "s", "target": "< 180",
         "compute_s": round(compute, 2), "server_start_s": round(server_s, 2)},
        {"name": "orchestration_overhead_share", "value": round((wall - compute) / wall, 4), "unit": "fraction",
         "target": "<= 0.10", "startup_s": round(startup, 2)},
        {"name": "orchestration_overhead_max_stage_s", "value": round(max(rest.values()), 3), "unit": "s",
         "target": "<= 2", "per_stage": {s: round(v, 3) for s, v in rest.items()}},
    ]


MEMORY_ROW = {"name": "fashion_teacher_peak_rss_mb", "unit": "MiB", "target": "< 2048"}


def missing_profile_data(profile: Path) -> str | None:
    """Why the profile's dataset cannot be loaded here (with the command that gets it), or None."""
    import yaml

    from cli.tools import missing_data

    d = yaml.safe_load(profile.read_text())["data"]
    why = missing_data(d["dataset"], d.get("root"))
    if why is None:
        return None
    return f"{d['dataset']} is not on this machine; get it with `make data NAME={profile.stem}` ({why})"


def teacher_peak_rss(tmp: Path, profile: Path, epochs: int) -> list[dict]:
    import psutil

    why = missing_profile_data(profile)
    if why:  # reported as skipped, with the command that gets the data; the other rows stand
        print(f"fashion_mnist teacher stage: skipped: {why}")
        return [{**MEMORY_ROW, "value": None, "skipped": why}]

    # the whole Fashion-MNIST training pool (the profile itself keeps a 15k subset): the worst case
    over = {"data": {"max_train": None}}
    if epochs:
        over.update({"teacher": {"epochs": epochs}, "scores": {"el2n": {"epoch": 1}}})
    proj = make_project(tmp / "fashion", free_port(), over, base=profile)
    try:
        proj.run(sys.executable, "-m", "flows", "prepare")
        proc = psutil.Popen([sys.executable, "-m", "flows", "teacher"], cwd=proj.path, env=proj.env,
                            stdout=open(tmp / "teacher.log", "w"), stderr=__import__("subprocess").STDOUT)
        peak = [0, 0]  # the stage process with its children (MLflow's), and alone
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                try:
                    own = proc.memory_info().rss
                    children = 0
                    for c in proc.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            children += c.memory_info().rss
                except psutil.Error:
                    break
                peak[0], peak[1] = max(peak[0], own + children), max(peak[1], own)
                time.sleep(0.02)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        t0 = time.perf_counter()
        rc = proc.wait()
        secs = time.perf_counter() - t0
        done.set()
        th.join()
        if rc != 0:
            raise SystemExit(f"fashion teacher stage failed; log in {tmp / 'teacher.log'}")
    finally:
        proj.stop_server()
    mb, own_mb = peak[0] / 2**20, peak[1] / 2**20
    print(f"fashion_mnist teacher stage ({epochs or 'profile'} epochs): peak RSS {mb:.0f} MiB with its MLflow child "
          f"process (target < 2048; the stage process alone {own_mb:.0f} MiB), {secs:.1f}s")
    return [{**MEMORY_ROW, "value": round(mb, 1), "stage_process_mb": round(own_mb, 1), "stage_s": round(secs, 1),
             "teacher_epochs": epochs or "profile"}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-epochs", type=int, default=2,
                    help="teacher epochs for the memory run (0: the profile's); memory grows only by the recorded "
                         "dynamics, epochs x N x classes x 2 bytes (16 MiB for 15 epochs of Fashion-MNIST)")
    ap.add_argument("--profile", default=str(REPO / "profiles" / "fashion_mnist.yaml"))
    ap.add_argument("--out", default="reports/bench.json")
    args = ap.parse_args()
    rows, failed = [], []
    parts = [("pipeline", pipeline_overhead)]
    if not args.skip_memory:
        parts.append(("memory", lambda tmp: teacher_peak_rss(tmp, Path(args.profile), args.memory_epochs)))
    with tempfile.TemporaryDirectory(prefix="kdprune-bench-") as d:
        for name, part in parts:  # one failing part does not lose the other's row
            try:
                rows += part(Path(d))
            except Exception as e:  # noqa: BLE001  (reported, and the exit code says so)
                print(f"{name} benchmark failed: {type(e).__name__}: {str(e)[-2000:]}", file=sys.stderr)
                failed.append(name)
    write_rows(rows, Path(args.out))
    if failed:
        raise SystemExit(f"pipeline_bench: {', '.join(failed)} failed (above); the other rows are in {args.out}")


if __name__ == "__main__":
    main()
