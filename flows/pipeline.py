"""The whole pipeline as one Prefect flow, leaving the workspace exactly as ``dvc repro`` would.

DVC owns lineage: for each stage in order the flow asks DVC whether the stage is stale
(`dvc status <stage>`), runs the stage's flow as a subflow only if it is, then records it in
dvc.lock (`dvc commit <stage>`, overlapping the next stage), so `dvc status` is clean afterwards
and a following `dvc repro` re-runs nothing. MLflow gets one parent run per invocation, with a child per stage.
"""
from __future__ import annotations

import contextlib
import threading
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
from flows.teachers import teachers_flow
from flows.validate import validate_stage
from kdprune.config import STAGES as STAGE_LIST
from kdprune.report import FIGURES
from execution.observe import observer
from execution.params import load_params
from execution.runner import ray_session

FAN_OUT = ("teachers", "scores", "distill")  # stages whose tasks run on the runner of params.yaml's `runner`

REPORT_FILES = ("report.md", "results.csv", *FIGURES)

FLOWS = {
    "validate": None,  # params only (flows/validate.py): no subflow
    "prepare": prepare_flow,
    "teacher": teacher_flow,
    "teachers": teachers_flow,
    "scores": scores_flow,
    "select": select_flow,
    "distill": distill_flow,
    "evaluate": evaluate_flow,
}
if set(FLOWS) != set(STAGE_LIST):
    raise RuntimeError(f"flows/pipeline.py has a flow for {sorted(FLOWS)}, kdprune/config.py's STAGES are "
                       f"{list(STAGE_LIST)}: give each stage its flow")
STAGES = {name: FLOWS[name] for name in STAGE_LIST}  # in the order of kdprune.config.STAGES
# stale: a fan-out stage runs at or after it, so Ray starts there
STARTS_RAY = tuple(s for s in STAGE_LIST[: max(STAGE_LIST.index(f) for f in FAN_OUT) + 1] if FLOWS[s] is not None)


def no_subflow_heartbeats():
    """Stage subflows run in this process, whose top-level flow run already sends heartbeats; a
    subflow's own heartbeat thread only adds its shutdown (Prefect joins it, sleeping in 1 s steps:
    about 0.5 s per stage). Subflows started inside this context send none."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


class Lineage:
    """DVC's view of the stages, through one Repo for the whole run (each DVC operation takes the
    repo lock and resets its caches, so reuse is safe and saves opening the repo twice per stage).

    A stage that ran is recorded in dvc.lock (`dvc commit`: hash its outputs, rewrite the lock file,
    0.1-0.2 s) on a background thread while the next stage runs, once that stage's staleness has
    been checked; the next DVC call waits for it. So a crash or a kill loses at most the record of
    the stage that ran last, never records a stage that failed, and the commit costs no wall time
    when the next stage has work to do."""

    def __init__(self, root: Path):
        from dvc.repo import Repo

        self.repo = Repo(str(root))
        self._commit: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def wait(self) -> None:
        """Wait for the recording of the previous stage; raise what it raised."""
        if self._commit is not None:
            self._commit.join()
            self._commit = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def stale(self, stage: str) -> bool:
        self.wait()
        return bool(self.repo.status(targets=[stage]))

    def commit_soon(self, stage: str) -> None:
        """Start recording ``stage`` in dvc.lock; the next DVC call (or ``wait``) waits for it."""
        self.wait()

        def commit() -> None:
            try:
                self.repo.commit(stage, force=True)
            except BaseException as e:  # raised by the next wait()
                self._error = e

        self._commit = threading.Thread(target=commit, name=f"dvc-commit-{stage}", daemon=True)
        self._commit.start()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.repo.close()


def publish_report(reports: Path, label: str) -> None:
    """The report as a markdown artifact and the results as a table artifact of this flow run
    (Prefect UI: the flow run's Artifacts tab; keys ``kdprune-report`` and ``kdprune-results`` keep
    every run's version)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    if (reports / "report.md").exists():
        create_markdown_artifact(markdown=(reports / "report.md").read_text(), key="kdprune-report",
                                 description=f"kdprune report ({label}): reports/report.md")
    if (reports / "results.csv").exists():
        import pandas as pd

        df = pd.read_csv(reports / "results.csv")
        rows = df.astype(object).where(df.notna(), None).to_dict(orient="records")
        create_table_artifact(table=rows, key="kdprune-results",
                              description=f"one row per student ({label}): reports/results.csv")


def run_stages(root_p: Path, label: str, force: bool = False) -> dict:
    """Run the stale stages in order under one MLflow parent run named ``label``; print the time breakdown."""
    log = get_run_logger()
    params = load_params(root_p)  # validated before anything runs
    obs = observer()
    t_start, blocked0 = time.perf_counter(), obs.blocked_seconds()
    tr = obs.tracker(root_p)
    ran, timings, compute = [], {}, {}
    with tr.run(f"{label} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                tags={"kdprune.stage": "pipeline", "kdprune.label": label, **obs.commit_tags(root_p)},
                params=params.as_dict()) as run_id:
        dvc = Lineage(root_p)
        unrecorded = None  # the stage that ran last, recorded once the next stage's staleness is known
        ray_once, ray_started = contextlib.ExitStack(), False  # runner.kind ray: one Ray connection for all stages
        try:
            for name, stage_flow in STAGES.items():
                t0 = time.perf_counter()
                stale = force or dvc.stale(name)
                if unrecorded:
                    dvc.commit_soon(unrecorded)
                    unrecorded = None
                if not stale:
                    log.info(f"stage {name}: up to date (dvc status clean), skipped")
                    continue
                if stage_flow is None:
                    out = validate_stage(root_p)
                else:
                    if name in STARTS_RAY and not ray_started:  # a fan-out stage will follow: Ray starts
                        ray_once.enter_context(ray_session(params))  # now, its workers warm up meanwhile
                        ray_started = True
                    with no_subflow_heartbeats():
                        out = stage_flow(root=str(root_p), parent_run_id=run_id)
                timings[name] = time.perf_counter() - t0
                # every stage flow returns its work (task bodies minus MLflow waits); devices in parallel: cap
                compute[name] = min(float(out["work_s"]), timings[name])
                ran.append(name)
                unrecorded = name
                log.info(f"stage {name}: done in {timings[name]:.1f}s")
        finally:  # also when a stage failed: the ones before it are recorded
            ray_once.close()
            try:
                if unrecorded:
                    dvc.commit_soon(unrecorded)
            finally:
                dvc.close()
        if ran:
            log.info(f"recorded in dvc.lock: {', '.join(ran)}")
        total = time.perf_counter() - t_start
        overhead = {k: timings[k] - compute[k] for k in timings}
        tr.log_metrics(run_id, {**{f"{k}_s": v for k, v in timings.items()},
                                **{f"{k}_compute_s": v for k, v in compute.items()},
                                **{f"{k}_overhead_s": v for k, v in overhead.items()},
                                "pipeline_s": total, "compute_s": sum(compute.values()),
                                "overhead_s": total - sum(compute.values()),
                                "tracking_blocked_s": obs.blocked_seconds() - blocked0})  # waits on MLflow so far
        tr.set_tags(run_id, {"stages_run": ",".join(ran) or "none"})
        reports = root_p / "reports"
        for f in REPORT_FILES:  # the report on the parent run, beside its stage runs
            if (reports / f).exists():
                tr.log_artifact(run_id, reports / f, "report")
        publish_report(reports, label)
    if "evaluate" not in ran and (root_p / "reports" / "report.md").exists():
        print("\n" + (root_p / "reports" / "report.md").read_text(), flush=True)
    total = time.perf_counter() - t_start
    busy = sum(compute.values())
    print("[kdprune] time per stage (wall / work / orchestration): " + ", ".join(
        f"{k} {timings[k]:.1f}/{compute[k]:.1f}/{overhead[k]:.1f}s" for k in timings), flush=True)
    print(f"[kdprune] stage work (reading inputs, training, scoring, selection, evaluation, writing outputs) "
          f"{busy:.1f}s of {total:.1f}s; orchestration (Prefect, MLflow, DVC) {total - busy:.1f}s = "
          f"{100 * (total - busy) / total:.0f}%", flush=True)
    return {"stages_run": ran, "timings": timings, "compute": compute, "mlflow_run_id": run_id}


@flow(name="pipeline")
def pipeline(root: str = ".", force: bool = False) -> dict:
    """prepare -> teacher -> teachers -> scores -> select -> distill -> evaluate; stages DVC finds up to date are skipped."""
    return run_stages(Path(root), "pipeline", force)
