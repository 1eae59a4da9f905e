"""The real observer of the stages (execution/observe.py's interface): MLflow runs with their tags,
progress bars, run records, the work clock's MLflow waits and selection costs. Installed by the entry
point (cli/main.py); nothing here can change an output."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from execution.observe import Observer
from telemetry import progress, runlog
from tracking import provenance, tracker
from tracking.models import register_teacher


class StageObserver(Observer):
    def tracker(self, root: Path) -> tracker.Tracker:
        return tracker.Tracker(root)

    def shared_tracker(self, root: Path, key: Optional[str]) -> tracker.Tracker:
        return tracker.Tracker.shared(root, key)

    def stage_tags(self, root: Path, stage: str, meta: dict) -> dict:
        return provenance.stage_tags(root, stage, meta)

    def commit_tags(self, root: Path) -> dict:
        return {"git_commit": provenance.git_commit(root)}

    def run_color(self, method: str, methods: list[str]) -> dict:
        return tracker.method_color(method, methods)

    def log_student_data(self, tr: tracker.Tracker, run_id: str, mpath: Path, manifest: dict, tags: dict,
                         meta: dict) -> None:
        """The student's training data as an MLflow dataset input (the runs table's Dataset column): the
        manifest's name, its DVC hash as the digest, and where it lives (path in the DVC repo, hashes)."""
        tr.log_dataset(
            run_id, name=mpath.stem, digest=tags["dvc.manifest_md5"][:8], source_type="dvc",
            source={"path": f"data/manifests/{mpath.name}", "md5": tags["dvc.manifest_md5"],
                    "sha256": tags["manifest_sha256"], "git_commit": tags["git_commit"],
                    "dataset": meta["dataset"], "dataset_sha256": meta["sha256"]},
            profile={"num_rows": len(manifest["ids"]), "method": manifest["method"], "fraction": manifest["fraction"],
                     "seed": manifest["seed"], "sampler": (manifest.get("sampler") or {}).get("name")})

    def publish_students_view(self, tr: tracker.Tracker, run_id: str) -> None:
        tracker.publish_students_view(tr, run_id)

    def register_teacher(self, root: Path, tr: tracker.Tracker, run_id: str, model_dir: Path, meta: dict) -> None:
        register_teacher(root, tr, run_id, model_dir, meta)

    def not_logged(self) -> str:
        lost = tracker.not_logged_total()
        return tracker.describe_not_logged(lost) if lost else ""

    def blocked_seconds(self) -> float:
        return tracker.blocked_seconds()

    def progress(self, desc: str, total: int, unit: str):
        return progress.progress(desc, total, unit)

    def note(self, text: str) -> None:
        progress.note(text)

    def measure_cost(self):
        from telemetry.cost import measure_cost  # torch: after the entry point has pinned the CPU kernels

        return measure_cost()

    def write_record(self, root: Path, stage: str, record: dict) -> None:
        runlog.write_record(root, stage, record)

    def read_record(self, root: Path, stage: str) -> dict:
        return runlog.read_record(root, stage)
