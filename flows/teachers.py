from pathlib import Path
from typing import Optional

from prefect import flow

from kdprune.device import resolve_device
from artifacts.stages import load_prepared
from artifacts.checkpoints import drop_checkpoints
from artifacts.files import atomic_directory
from execution.params import load_params
from artifacts.outputs import write_task_index
from execution.observe import observer, work_seconds
from execution.runner import fan_out, run_tasks, share
from tasks.teachers import record_extra_teacher, train_extra_teacher


@flow(name="teachers")
def teachers(root: str = ".", parent_run_id: Optional[str] = None) -> dict:
    """Stage 2b: the extra teacher architectures of student.teachers (none by default), on the runner
    of params.yaml's ``runner``; this process writes the outputs and MLflow runs."""
    params = load_params(root, "teachers")
    root_p = Path(root)
    archs = params.student.teachers
    meta, splits = load_prepared(root_p, params.data.dataset)
    dev = str(resolve_device(params.device))
    obs = observer()
    tr = obs.tracker(root_p)
    with tr.run("teachers", parent_run_id, tags=obs.stage_tags(root_p, "teachers", meta),
                params={"archs": ",".join(archs) or "none"}) as run_id, \
            atomic_directory(root_p / "models" / "teachers") as tmp:
        inputs = {"meta": meta, "train": share(splits["train"], params), "val": share(splits["val"], params),
                  "checkpoints": str(root_p)}
        with obs.progress("teachers", len(archs), "teacher") as bar:
            results = run_tasks(params, dev, train_extra_teacher, [(params, a, inputs, dev) for a in archs],
                                lambda i, res: (bar.update(1), record_extra_teacher(root_p, params, res, tmp, run_id))[1])
        write_task_index(tmp / "index.json", results)
    obs.write_record(root_p, "teachers", {r["arch"]: {k: r[k] for k in ("mlflow_run_id", "wall_s", "host", "ray_node_id", "ray_node_ip")}
                                      for r in results})
    drop_checkpoints(results)
    return {"teachers": archs, "work_s": work_seconds(results)}


teachers_flow = fan_out(teachers, "teachers", has_tasks=lambda p: bool(p.student.teachers))
