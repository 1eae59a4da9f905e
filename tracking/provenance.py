"""Where a run's inputs came from: the git commit and the DVC hashes its MLflow runs are tagged with."""
from __future__ import annotations

import functools
import subprocess
import time
from pathlib import Path

import yaml


@functools.lru_cache(maxsize=8)
def git_commit(root: Path) -> str:
    """HEAD (with -dirty for uncommitted tracked changes), read once per process: a run does not commit."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_out_hash(root: Path, out_path: str) -> str | None:
    """The md5 dvc.lock records for an output path (None before DVC has committed it)."""
    lock = Path(root) / "dvc.lock"
    for attempt in range(50):  # DVC rewrites dvc.lock in place: the pipeline's commit of the previous
        if not lock.exists():  # stage may be writing it right now (seen under `pipeline --force`)
            return None
        try:
            data = yaml.safe_load(lock.read_text()) or {}
            break
        except yaml.YAMLError:
            if attempt == 49:
                raise
            time.sleep(0.05)
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs", []) or []:
            if out.get("path") == out_path:
                return out.get("md5")
    return None


def stage_tags(root: Path, stage: str, meta: dict) -> dict:
    """Tags every stage run carries: stage, git commit, dataset and its sha256 / DVC hash."""
    tags = {
        "kdprune.stage": stage,
        "git_commit": git_commit(root),
        "dataset": meta["dataset"],
        "dataset_sha256": meta["sha256"],
    }
    md5 = dvc_out_hash(root, f"data/prepared/{meta['dataset']}")
    if md5:
        tags["dvc.dataset_md5"] = md5
    return {**tags, **compute_tags()}


def compute_tags() -> dict:
    """What explains a result's bytes (README "Reproducibility"): the reproducibility setting and
    thread count this process verified, the torch build, the CPU capability and the processor."""
    from kdprune.reproducibility import checked, machine

    setting = checked()
    if not setting:
        return {}
    return {"kdprune.reproducibility": setting["reproducibility"], "kdprune.threads": str(setting["threads"]),
            "kdprune.cpu_capability": setting["cpu_capability"],
            **{f"kdprune.{k}": str(v) for k, v in machine().items()}}
