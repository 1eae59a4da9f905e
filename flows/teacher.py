from typing import Optional

from prefect import flow

from execution.params import load_params
from tasks.teacher import train_teacher


@flow(name="teacher")
def teacher_flow(root: str = ".", parent_run_id: Optional[str] = None) -> dict:
    """Stage 2: train the teacher on the full train split; record per-epoch per-sample dynamics."""
    params = load_params(root, "teacher")
    return train_teacher(root, params, parent_run_id)

