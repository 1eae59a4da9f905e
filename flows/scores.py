from typing import Optional

from prefect import flow

from tasks.common import load_params
from tasks.scores import compute_scores


@flow(name="scores")
def scores_flow(root: str = ".", parent_run_id: Optional[str] = None) -> dict:
    """Stage 3: one pruning score per training example for every method in scores.methods."""
    params = load_params(root)
    return compute_scores(root, params, parent_run_id)

