"""What a DVC output keeps of a task's result: everything but the figures that change from run to run.

DVC outputs must be byte-reproducible (a colleague's ``dvc repro`` verifies ``dvc.lock``), so seconds,
peak memory, MLflow run ids and where a task ran never go into them: they go to MLflow and the run
records (telemetry/runlog.py).
"""
from __future__ import annotations

from pathlib import Path

from artifacts.files import atomic_write_json

# what changes from one run to the next: figures, run ids, where a task ran, and the tasks'
# bookkeeping (checkpoint path, work clock, per-student run records)
VOLATILE = ("seconds", "wall_s", "mlflow_run_id", "runs", "checkpoint", "work_s", "host", "pid", "ray_node_id",
            "ray_node_ip")


def without_volatile(d: dict) -> dict:
    """``d`` without what changes from one run to the next (for DVC outputs)."""
    return {k: v for k, v in d.items() if k not in VOLATILE}


def write_task_index(path: Path, results: list[dict]) -> None:
    """A stage's index of its training tasks' results, a DVC output: without what changes run to run."""
    atomic_write_json(path, [without_volatile(r) for r in results])


def stable_history(history: list[dict]) -> list[dict]:
    """A training history for a DVC output: every per-epoch figure except its seconds."""
    return [without_volatile(h) for h in history]
