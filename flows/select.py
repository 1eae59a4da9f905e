from typing import Optional

from prefect import flow

from execution.params import load_params
from tasks.select import select_subsets


@flow(name="select")
def select_flow(root: str = ".", parent_run_id: Optional[str] = None) -> dict:
    """Stage 4: an index manifest for every (score, kept fraction)."""
    params = load_params(root, "select")
    return select_subsets(root, params, parent_run_id)

