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

from prefect import flow, get_run_logger

from flows.pipeline import run_stages
from execution.params import sweep_params, write_params

def apply_profile(root: Path, profile: Optional[str], overrides: list[str]) -> bool:
    """Write params.yaml from the profile (or the current file) and the overrides, validated first;
    True when it changed."""
    raw = sweep_params(root, profile, overrides)
    origin = " ".join(["python -m flows sweep", *([f"--profile {profile}"] if profile else []),
                       *[f"-S {o}" for o in overrides]])
    return write_params(root, raw, origin, profile, overrides)


@flow(name="sweep")
def sweep(root: str = ".", profile: Optional[str] = None, overrides: Optional[list[str]] = None,
          force: bool = False) -> dict:
    """Write params.yaml from ``profile`` + ``overrides`` (if given), then run its stale stages under one
    MLflow parent run, with one child run per student under the distill stage's sweep run."""
    root_p = Path(root)
    overrides = list(overrides or [])
    if profile or overrides:
        changed = apply_profile(root_p, profile, overrides)
        get_run_logger().info(f"params.yaml {'written from' if changed else 'already matches'} "
                              f"{'profile ' + profile if profile else 'params.yaml'} {' '.join('-S ' + o for o in overrides)}")
    return run_stages(root_p, f"sweep {profile or 'params.yaml'}", force)
