"""Run records: what a stage's outputs cost on this machine and where their MLflow runs are.

DVC outputs must be byte-reproducible (a colleague's ``dvc repro`` verifies ``dvc.lock``), so the
figures that differ from one run to the next -- seconds, peak memory, MLflow run ids -- never go
into them. They go to MLflow and, for the evaluate stage's results table and report, to one JSON
file per stage under ``.kdprune/runs/`` (git- and DVC-ignored, local to this machine), written
atomically when the stage's outputs are in place. A stage that finds no record (outputs pulled
from a DVC remote, or made on another machine) reports those figures as unknown, never invents them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.files import atomic_write_json


def record_path(root: Path | str, stage: str) -> Path:
    return Path(root) / ".kdprune" / "runs" / f"{stage}.json"


def write_record(root: Path | str, stage: str, record: dict[str, Any]) -> None:
    """Replace ``stage``'s run record (called once the stage's outputs are in place)."""
    atomic_write_json(record_path(root, stage), record)


def read_record(root: Path | str, stage: str) -> dict[str, Any]:
    """``stage``'s run record, or {} when there is none (or it cannot be read)."""
    try:
        return json.loads(record_path(root, stage).read_text())
    except (OSError, ValueError):
        return {}


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
