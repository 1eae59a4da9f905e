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

from artifacts.files import atomic_write_json


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
