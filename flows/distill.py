import os
from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger

from kdprune.device import device_count, resolve_device
from artifacts.stages import load_prepared
from artifacts.checkpoints import drop_checkpoints
from artifacts.files import atomic_directory
from artifacts.reuse import code_sha256, find_earlier
from execution.params import load_params
from artifacts.outputs import write_task_index
from execution.observe import observer, work_seconds
from execution.runner import fan_out, is_ray, run_tasks, task_threads
from kdprune.train.plan import group_students, kd_weights, student_variants, submission_order
from tasks.distill import (
    Stage, compute_facts, plan_keys, read_manifests, record_student, reused_result, student_inputs, teacher_facts,
    train_student,
)


@flow(name="distill")
def distill(root: str = ".", parent_run_id: Optional[str] = None) -> dict:
    """Stage 5: a student per (manifest, KD setting, seed), with KD and without, on the runner of
    params.yaml's ``runner`` (execution/runner.py); this process writes every output and MLflow run.
    A student whose training key an earlier student has (same data, teacher, settings, code and
    compute) is copied from it, not retrained (tasks/distill.py)."""
    log = get_run_logger()
    params = load_params(root, "distill")
    root_p = Path(root)
    meta, splits = load_prepared(root_p, params.data.dataset)
    manifests = read_manifests(root_p, meta, splits["train"].ids)
    if not manifests:
        raise FileNotFoundError(f"no manifests under {root_p / 'data' / 'manifests'}; run `dvc repro select` first")
    students = student_variants({k: m.manifest for k, m in manifests.items()}, params.student, params.teacher.arch)
    dev = resolve_device(params.device)
    n_dev = device_count(params.device)
    devices = ([f"cuda:{i}" for i in range(n_dev)] if dev.type == "cuda" and dev.index is None and not is_ray(params)
               else [str(dev)])
    teachers = teacher_facts(root_p, params)
    inputs, keys = plan_keys(students, manifests, params, meta, len(splits["train"]), teachers,
                             code_sha256(root_p, "distill"), compute_facts(params, dev))
    stage = Stage(root_p, params, meta, len(splits["train"]), manifests, teachers, inputs, keys)
    groups = group_students(students, keys)
    out = root_p / "models" / "students"
    # before the new out replaces it: students of earlier runs in the workspace (kept by DVC's persist), or
    # in the DVC cache (any run DVC recorded, e.g. before a `dvc exp run` or a checkout)
    # (KDPRUNE_RETRAIN=1: train every student anyway, e.g. to time the stage or to exercise its tasks)
    retrain = os.environ.get("KDPRUNE_RETRAIN", "") not in ("", "0")
    earlier = {} if retrain else find_earlier(root_p, out, {keys[g[0].name] for g in groups})
    obs = observer()
    tr = obs.tracker(root_p)
    sel, st = params.select, params.student
    grid = {"methods": ",".join(sel.labels), "fractions": ",".join(f"{f:g}" for f in sel.fractions),
            "kd_schedule": st.kd_schedule, "kd_weights": ",".join(f"{w:g}" for w in kd_weights(st)),
            "seeds": ",".join(map(str, st.seeds)),
            "teachers": ",".join([params.teacher.arch, *st.teachers]), "students": len(students)}
    # the sweep's MLflow run; each student is a top-level run tagged kdprune.sweep_run_id = this run's id,
    # comparable by method, fraction, kd_weight, teacher, seed in the shared view STUDENTS_VIEW
    with tr.run("distill", parent_run_id, tags={**obs.stage_tags(root_p, "distill", meta),
                                                 "kdprune.sweep": "true"},
                params={"student": params.section("student"), "sweep": grid, "runner": params.section("runner")}) as run_id, \
            atomic_directory(out) as tmp, \
            task_threads(params.runner.cpus_per_task):  # teacher logits too: the same bits on any machine
        try:
            reused = {i: earlier[keys[g[0].name]] for i, g in enumerate(groups) if keys[g[0].name] in earlier}
            reused = {i: e for i, e in reused.items() if e.copy_to(tmp / groups[i][0].name)}  # checked copies
            todo = [i for i in range(len(groups)) if i not in reused]
            sources = sorted({"the DVC cache" if e.where.startswith("DVC cache") else "models/students"
                              for e in reused.values()})
            log.info(f"sweep: {len(students)} students, {len(groups)} distinct trainings (students on identical "
                     f"subsets with identical settings are trained once): {len(todo)} to train, {len(reused)} "
                     f"reused (inputs unchanged; from {', '.join(sources) or 'nowhere'}"
                     f"{'; KDPRUNE_RETRAIN set: none looked for' if retrain else ''}) on "
                     f"{params.runner.kind} runner, {', '.join(devices)}")
            finished = iter(range(1, len(groups) + 1))
            results: list = [None] * len(groups)
            for i, e in reused.items():
                results[i] = record_student(stage, groups[i][0], tuple(groups[i][1:]), reused_result(e), tmp,
                                            run_id, f"{next(finished)}/{len(groups)}")
            if todo:
                task_inputs = student_inputs(root_p, params, [s for i in todo for s in groups[i]], manifests, meta,
                                             splits, dev)
                with obs.progress("distill", len(todo), "student") as bar:
                    def record(k: int, res: dict) -> dict:
                        bar.update(1)
                        i = todo[k]
                        return record_student(stage, groups[i][0], tuple(groups[i][1:]), res, tmp, run_id,
                                              f"{next(finished)}/{len(groups)}")

                    # longest first: parallel workers end together
                    order = submission_order(st, [groups[i][0] for i in todo],
                                             [len(manifests[groups[i][0].manifest].manifest["ids"]) for i in todo])
                    rank = {k: r for r, k in enumerate(order)}  # devices taken in turn, in submission order
                    trained = run_tasks(params, str(dev), train_student,
                                        [(params, groups[i][0], keys[groups[i][0].name], task_inputs,
                                          devices[rank[k] % len(devices)]) for k, i in enumerate(todo)],
                                        record, order)
                for k, i in enumerate(todo):
                    results[i] = trained[k]
        finally:  # students' queued artifact uploads read from the temp dir: finish them before it goes
            tr.flush()
        write_task_index(tmp / "index.json", results)
        tr.log_metrics(run_id, {"students": len(students), "trainings": len(results), "trained": len(todo),
                                "reused": len(reused)})
        obs.publish_students_view(tr, run_id)  # MLflow's shared view "students": this sweep's students side by side
    log.info(f"distill: {len(todo)} trained, {len(reused)} reused of {len(groups)} distinct trainings "
             f"({len(students)} students)")
    lost = obs.not_logged()
    if lost:
        log.warning("not logged to MLflow: " + lost
                    + "; every student's model and metrics are on disk under models/students")
    # per student: its MLflow run, training seconds and node, outside the DVC outs (the run record)
    obs.write_record(root_p, "distill", {name: run for r in results for name, run in r["runs"].items()})
    drop_checkpoints([r for r in results if r["checkpoint"]])
    return {"students": len(students), "trained": len(todo), "reused": len(reused), "work_s": work_seconds(results)}



distill_flow = fan_out(distill, "distill")
