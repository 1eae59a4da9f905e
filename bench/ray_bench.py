"""The Ray runner against the local runner on the default digits `distill` stage, on this machine.

A fresh copy of the project runs the default pipeline once, then, alternately with the local runner
and with a Ray instance of the run's own (two single-thread workers on a 2-core machine),
``--rounds`` times each, back to back: the whole pipeline (`python -m flows pipeline --force`, what
`make run` runs on a fresh clone; the distill stage's wall from the pipeline's MLflow run) and the
distill stage alone (`python -m flows distill`, the whole process: what `dvc repro distill` costs).
Every run trains the same 18 students to the same bits (checked).

- ``ray_sweep_speedup``: the distill stage as `make run` runs it, median local wall / median Ray wall
  (local: runner.cpus_per_task 1, one student at a time). Also reported: the same for the stage run
  alone (Ray's start-up is then all in the stage), for the whole pipeline, and against
  cpus_per_task 2 (one student at a time on both cores, which trains different bits).
- ``ray_task_overhead_s``: per student task under Ray, what is not training: the task body minus its
  training loop (inputs to torch, model set-up, the final evaluation), plus the gap between the end
  of the previous task's body and this one's start on the same worker process (Prefect's task run
  states, Ray's scheduling and argument fetch); the median over tasks that had a predecessor.

    python -m bench.ray_bench [--rounds 2]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.grand_bench import write_rows
from bench.pipeline_bench import parent_metrics
from bench.project import REPO, free_port, make_project


def student_hashes(root: Path) -> dict[str, str]:
    return {d.name: hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
            for d in sorted((root / "models" / "students").iterdir()) if d.is_dir()}


def task_overheads(record: dict) -> list[float]:
    """Per task with a predecessor on its worker: gap since that one's body ended + body minus training."""
    by_worker: dict[tuple, list[dict]] = {}
    for r in record.values():
        if "task_start" in r:
            by_worker.setdefault((r.get("ray_node_id"), r["pid"]), []).append(r)
    out = []
    for runs in by_worker.values():
        runs.sort(key=lambda r: r["task_start"])
        for prev, cur in zip(runs, runs[1:]):
            out.append((cur["task_start"] - prev["task_end"]) + (cur["task_end"] - cur["task_start"] - cur["wall_s"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="reports/bench.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proj = make_project(Path(tmp) / "ray", free_port())
        proj.env["KDPRUNE_RETRAIN"] = "1"  # time the students' training: no student reused from an earlier run
        try:
            print("ray bench: the default pipeline once ...", flush=True)
            proj.run(sys.executable, "-m", "flows", "pipeline", timeout=1800)
            reference = student_hashes(proj.path)
            base = {"runner": {"kind": "local", "cpus_per_task": 1}}
            arms = {"local": base, "ray": {"runner": {"kind": "ray", "cpus_per_task": 1}},
                    "local_2threads": {"runner": {"kind": "local", "cpus_per_task": 2}}}
            walls: dict[str, list[float]] = {k: [] for k in arms}
            in_pipeline: dict[str, list[float]] = {"local": [], "ray": []}
            pipeline: dict[str, list[float]] = {"local": [], "ray": []}
            overheads: list[float] = []
            for arm in [a for _ in range(args.rounds) for a in ("local", "ray")]:
                proj.write_params(arms[arm])
                t0 = time.perf_counter()
                proj.run(sys.executable, "-m", "flows", "pipeline", "--force", timeout=1800)
                pipeline[arm].append(time.perf_counter() - t0)
                in_pipeline[arm].append(parent_metrics(proj)["distill_s"])
                print(f"  pipeline --force, {arm}: {pipeline[arm][-1]:.1f}s, its distill stage "
                      f"{in_pipeline[arm][-1]:.1f}s", flush=True)
                if student_hashes(proj.path) != reference:
                    raise SystemExit(f"the {arm} runner trained different students in the pipeline")
            order = [a for _ in range(args.rounds) for a in ("local", "ray")] + ["local_2threads"]
            for arm in order:
                proj.write_params(arms[arm])
                t0 = time.perf_counter()
                proj.run(sys.executable, "-m", "flows", "distill", timeout=1800)
                walls[arm].append(time.perf_counter() - t0)
                same = student_hashes(proj.path) == reference
                print(f"  distill, {arm}: {walls[arm][-1]:.1f}s, students {'identical' if same else 'DIFFER'}",
                      flush=True)
                if arm != "local_2threads" and not same:
                    raise SystemExit(f"the {arm} runner trained different students than the local runner")
                if arm == "ray":
                    overheads += task_overheads(json.loads((proj.path / ".kdprune" / "runs" / "distill.json")
                                                           .read_text()))
        finally:
            proj.stop_server()
    local, ray, local2 = (statistics.median(walls[a]) for a in ("local", "ray", "local_2threads"))
    in_l, in_r = (statistics.median(in_pipeline[a]) for a in ("local", "ray"))
    pipe_l, pipe_r = (statistics.median(pipeline[a]) for a in ("local", "ray"))
    per_task = statistics.median(overheads)
    print(f"distill stage in the pipeline: local {in_l:.1f}s, ray {in_r:.1f}s -> speedup {in_l / in_r:.2f} "
          f"(target >= 1.6); whole pipeline {pipe_l:.1f}s vs {pipe_r:.1f}s ({pipe_l / pipe_r:.2f})")
    print(f"distill stage alone: local {local:.1f}s, ray {ray:.1f}s -> {local / ray:.2f}; "
          f"vs local with 2 threads ({local2:.1f}s): {local2 / ray:.2f}")
    print(f"ray task overhead: median {per_task:.3f}s per student task over {len(overheads)} tasks (target <= 0.3)")
    write_rows([
        {"name": "ray_sweep_speedup", "value": round(in_l / in_r, 3), "unit": "x", "target": ">= 1.6",
         "in_pipeline_local_s": [round(w, 1) for w in in_pipeline["local"]],
         "in_pipeline_ray_s": [round(w, 1) for w in in_pipeline["ray"]],
         "pipeline_speedup": round(pipe_l / pipe_r, 3), "pipeline_local_s": [round(w, 1) for w in pipeline["local"]],
         "pipeline_ray_s": [round(w, 1) for w in pipeline["ray"]], "stage_alone_speedup": round(local / ray, 3),
         "local_s": [round(w, 1) for w in walls["local"]], "ray_s": [round(w, 1) for w in walls["ray"]],
         "local_2threads_s": [round(w, 1) for w in walls["local_2threads"]],
         "vs_local_2threads": round(local2 / ray, 3)},
        {"name": "ray_task_overhead_s", "value": round(per_task, 3), "unit": "s", "target": "<= 0.3",
         "tasks": len(overheads), "p90": round(sorted(overheads)[int(0.9 * (len(overheads) - 1))], 3)},
    ], REPO / args.out)


if __name__ == "__main__":
    main()
