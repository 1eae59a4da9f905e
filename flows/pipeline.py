"""The whole pipeline as one Prefect flow, leaving the workspace exactly as ``dvc repro`` would.

DVC owns lineage: for each stage in order the flow asks DVC whether the stage is stale
(`dvc status <stage>`), runs the stage's flow as a subflow only if it is, then records it in
dvc.lock (`dvc commit <stage>`), so `dvc status` is clean afterwards and a following
`dvc repro` re-runs nothing. MLflow gets one parent run per invocation, with a child per stage.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger

from flows.distill import distill_flow
from flows.evaluate import evaluate_flow
from flows.prepare import prepare_flow
from flows.scores import scores_flow
from flows.select import select_flow
from flows.teacher import teacher_flow
from tasks.common import git_commit, load_params
from tasks.runtime import project_root
from tasks.tracking import Tracker

STAGES = {
    "prepare": prepare_flow,
    "teacher": teacher_flow,
    "scores": scores_flow,
    "select": select_flow,
    "distill": distill_flow,
    "evaluate": evaluate_flow,
}


def stale(root: Path, stage: str) -> bool:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return bool(repo.status(targets=[stage]))


def commit(root: Path, stage: str) -> None:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.commit(stage, force=True)


@flow(name="pipeline")
def pipeline(root: Optional[str] = None, force: bool = False) -> dict:
    """prepare -> teacher -> scores -> select -> distill -> evaluate; stages DVC finds up to date are skipped."""
    log = get_run_logger()
    root_p = Path(root) if root else project_root()
    params = load_params(root_p)  # validated before anything runs
    t_start = time.perf_counter()
    tr = Tracker(root_p)
    ran, timings, compute = [], {}, {}
    with tr.run(f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}", tags={"kdprune.stage": "pipeline",
                                                                         "git_commit": git_commit(root_p)},
                params=params) as run_id:
        for name, stage_flow in STAGES.items():
            if not force and not stale(root_p, name):
                log.info(f"stage {name}: up to date (dvc status clean), skipped")
                continue
            t0 = time.perf_counter()
            out = stage_flow(root=str(root_p), parent_run_id=run_id)
            commit(root_p, name)
            timings[name] = time.perf_counter() - t0
            compute[name] = float(out.get("compute_s", 0.0))
            ran.append(name)
            log.info(f"stage {name}: done in {timings[name]:.1f}s, recorded in dvc.lock")
        total = time.perf_counter() - t_start
        overhead = {k: timings[k] - compute[k] for k in timings}
        tr.log_metrics(run_id, {**{f"{k}_s": v for k, v in timings.items()},
                                **{f"{k}_compute_s": v for k, v in compute.items()},
                                **{f"{k}_overhead_s": v for k, v in overhead.items()},
                                "pipeline_s": total, "compute_s": sum(compute.values()),
                                "overhead_s": total - sum(compute.values())})
        tr.set_tags(run_id, {"stages_run": ",".join(ran) or "none"})
        reports = root_p / "reports"
        for f in ("report.md", "results.csv", "accuracy_vs_fraction.png"):
            if (reports / f).exists():
                tr.log_artifact(run_id, reports / f, "report")
    if "evaluate" not in ran and (root_p / "reports" / "report.md").exists():
        print("\n" + (root_p / "reports" / "report.md").read_text(), flush=True)
    total = time.perf_counter() - t_start
    busy = sum(compute.values())
    print("[kdprune] time per stage (wall / compute / rest): " + ", ".join(
        f"{k} {timings[k]:.1f}/{compute[k]:.1f}/{overhead[k]:.1f}s" for k in timings), flush=True)
    print(f"[kdprune] compute (data, training, scoring, selection, evaluation) {busy:.1f}s of {total:.1f}s; "
          f"the rest (Prefect, MLflow, DVC, file I/O) {total - busy:.1f}s = {100 * (total - busy) / total:.0f}%",
          flush=True)
    return {"stages_run": ran, "timings": timings, "compute": compute, "mlflow_run_id": run_id}
