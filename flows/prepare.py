from typing import Optional

from prefect import flow

from execution.params import load_params
from tasks.prepare import prepare_dataset


@flow(name="prepare")
def prepare_flow(root: str = ".", parent_run_id: Optional[str] = None) -> dict:
    """Stage 1: read the dataset source, hold out validation, write canonical tensors + meta.json."""
    params = load_params(root, "prepare")
    return prepare_dataset(root, params, parent_run_id)

