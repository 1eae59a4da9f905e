from typing import Optional

from prefect import flow

from execution.params import load_params
from tasks.teacher import train_teacher
from tasks.teacher_ddp import train_teacher_ddp


@flow(name="teacher")
def teacher_flow(root: str = ".", parent_run_id: Optional[str] = None) -> dict:
    """Stage 2: train the teacher on the full train split; record per-epoch per-sample dynamics."""
    params = load_params(root, "teacher")
    if params.teacher.workers > 1:  # data-parallel (docs/scale-out.md)
        return train_teacher_ddp(root, params, parent_run_id)
    return train_teacher(root, params, parent_run_id)

