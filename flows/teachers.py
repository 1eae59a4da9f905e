from pathlib import Path
from typing import Optional

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from kdprune.device import device_count
from tasks.common import (
    atomic_directory, drop_checkpoints, load_params, load_prepared, stage_tags, work_seconds,
)
from tasks.runlog import write_record, write_task_index
from tasks.teachers import train_extra_teacher
from tasks.tracking import Tracker


@flow(name="teachers", task_runner=ThreadPoolTaskRunner(max_workers=device_count("auto")))
def teachers_flow(root: str = ".", parent_run_id: Optional[str] = None) -> dict:
    """Stage 2b: the extra teacher architectures of student.teachers (none by default), in parallel up to the devices."""
    params = load_params(root, "teachers")
    root_p = Path(root)
    archs = params["student"]["teachers"]
    meta, _ = load_prepared(root_p, params["data"]["dataset"])
    tr = Tracker(root_p)
    with tr.run("teachers", parent_run_id, tags=stage_tags(root_p, "teachers", meta),
                params={"archs": ",".join(archs) or "none"}) as run_id, \
            atomic_directory(root_p / "models" / "teachers") as tmp:
        results = [f.result() for f in [train_extra_teacher.submit(root, params, a, str(tmp), run_id) for a in archs]]
        write_task_index(tmp / "index.json", results)
    write_record(root_p, "teachers", {r["arch"]: {"mlflow_run_id": r["mlflow_run_id"], "wall_s": r["wall_s"]}
                                      for r in results})
    drop_checkpoints(results)
    return {"teachers": archs, "work_s": work_seconds(results)}
