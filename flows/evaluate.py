from pathlib import Path
from typing import Optional

from prefect import flow

from execution.params import load_params
from tasks.evaluate import evaluate_students


@flow(name="evaluate")
def evaluate_flow(root: str = ".", parent_run_id: Optional[str] = None) -> dict:
    """Stage 6: test accuracy of every student -> results.csv, report.md, plot; prints the report."""
    params = load_params(root, "evaluate")
    out = evaluate_students(root, params, parent_run_id)
    print("\n" + Path(out["report"]).read_text(), flush=True)
    return out

