from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger

from kdprune.device import device_count, resolve_device
from artifacts.stages import load_prepared
from artifacts.checkpoints import drop_checkpoints
from artifacts.files import atomic_directory
from execution.params import load_params
from artifacts.outputs import write_task_index
from execution.observe import observer, work_seconds
from execution.runner import fan_out, is_ray, run_tasks, task_threads
from tasks.distill import (
    group_variants, record_student, student_cost, student_inputs, student_variants, teacher_facts, train_student,
)


@flow(name="distill")
def distill(root: str = ".", parent_run_id: Optional[str] = None) -> dict:
    """Stage 5: a student per (manifest, KD setting, seed), with KD and without, on the runner of
    params.yaml's ``runner`` (execution/runner.py); this process writes every output and MLflow run."""
    log = get_run_logger()
    params = load_params(root, "distill")
    root_p = Path(root)
    variants = student_variants(root_p, params)
    if not variants:
        raise FileNotFoundError(f"no manifests under {root_p / 'data' / 'manifests'}; run `dvc repro select` first")
    dev = resolve_device(params["device"])
    n_dev = device_count(params["device"])
    devices = ([f"cuda:{i}" for i in range(n_dev)] if dev.type == "cuda" and dev.index is None and not is_ray(params)
               else [str(dev)])
    groups = group_variants(variants)
    meta, _ = load_prepared(root_p, params["data"]["dataset"])
    obs = observer()
    tr = obs.tracker(root_p)
    log.info(f"sweep: {len(variants)} students ({len(groups)} distinct trainings; students on identical subsets "
             f"with identical settings are trained once) on {params['runner']['kind']} runner, {', '.join(devices)}")
    sel, sp = params["select"], params["student"]
    grid = {"methods": ",".join(sel["methods"]), "fractions": ",".join(f"{f:g}" for f in sel["fractions"]),
            "kd_schedule": sp["kd_schedule"], "kd_weights": ",".join(f"{w:g}" for w in sp["kd_weights"]),
            "seeds": ",".join(map(str, sp["seeds"])),
            "teachers": ",".join([params["teacher"]["arch"], *sp["teachers"]]), "students": len(variants)}
    # the sweep's MLflow run; each student is a top-level run tagged kdprune.sweep_run_id = this run's id,
    # comparable by method, fraction, kd_weight, teacher, seed in the shared view STUDENTS_VIEW
    with tr.run("distill", parent_run_id, tags={**obs.stage_tags(root_p, "distill", meta),
                                                 "kdprune.sweep": "true"},
                params={"student": sp, "sweep": grid, "runner": params["runner"]}) as run_id, \
            atomic_directory(root_p / "models" / "students") as tmp, \
            task_threads(params["runner"]["cpus_per_task"]):  # teacher logits too: the same bits on any machine
        try:
            inputs = student_inputs(root_p, params, variants, dev)
            teachers = teacher_facts(root_p, params)
            with obs.progress("distill", len(groups), "student") as bar:
                finished = iter(range(1, len(groups) + 1))  # a disabled bar (logs, CI) does not count

                def record(i: int, res: dict) -> dict:
                    bar.update(1)
                    return record_student(root_p, params, groups[i][0], tuple(groups[i][1:]), res, tmp, run_id,
                                          teachers, f"{next(finished)}/{len(groups)}")

                # longest first (steps, live-teacher students a little longer): the last to finish are
                # short ones, so parallel workers end together instead of one waiting on a long student
                order = sorted(range(len(groups)), key=lambda i: -student_cost(params, groups[i][0], inputs))
                rank = {i: k for k, i in enumerate(order)}  # devices taken in turn, in submission order
                results = run_tasks(params, str(dev), train_student,
                                    [(params, g[0], inputs, devices[rank[i] % len(devices)])
                                     for i, g in enumerate(groups)], record, order)
        finally:  # students' queued artifact uploads read from the temp dir: finish them before it goes
            tr.flush()
        write_task_index(tmp / "index.json", results)
        tr.log_metrics(run_id, {"students": len(variants), "trainings": len(results)})
        obs.publish_students_view(tr, run_id)  # MLflow's shared view "students": this sweep's students side by side
    lost = obs.not_logged()
    if lost:
        log.warning("not logged to MLflow: " + lost
                    + "; every student's model and metrics are on disk under models/students")
    # per student: its MLflow run, training seconds and node, outside the DVC outs (the run record)
    obs.write_record(root_p, "distill", {name: run for r in results for name, run in r["runs"].items()})
    drop_checkpoints(results)
    return {"students": len(variants), "work_s": work_seconds(results)}



distill_flow = fan_out(distill, "distill")
