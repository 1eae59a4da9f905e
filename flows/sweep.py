"""The sweep: method x kept fraction x KD weight (or schedule) x seed x teacher architecture.

A sweep is a params file: ``select.methods`` x ``select.fractions`` x (no KD + the KD arms of
``student.kd_schedule``) x ``student.seeds`` x (``teacher.arch`` + ``student.teachers``). The
``sweep`` flow writes that file (from a profile in ``profiles/`` and ``-S key=value`` overrides,
validated before anything is written) and runs the stale stages under one MLflow parent run,
exactly as ``dvc repro`` would from the same params.yaml. The fan-out over students happens inside
the distill stage (DVC runs one stage at a time), concurrently up to the devices present, with
one MLflow run per student under the stage's sweep run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from prefect import flow

from flows.pipeline import run_stages
from tasks.runtime import project_root

@flow(name="sweep")
def sweep(root: Optional[str] = None, label: str = "sweep", force: bool = False) -> dict:
    """Run the sweep params.yaml describes: stale stages only, one MLflow parent run, one child per student."""
    return run_stages(Path(root) if root else project_root(), label, force)
