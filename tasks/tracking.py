"""MLflow tracking with explicit run ids (no fluent active run: it is thread-local).

With nothing configured the store is SQLite in the project (``mlflow.db``) and artifacts go to
``mlartifacts/``; ``MLFLOW_TRACKING_URI`` points elsewhere unchanged.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Iterator, Optional

EXPERIMENT = os.environ.get("MLFLOW_EXPERIMENT_NAME", "kdprune")


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Tracker:
    def __init__(self, root: Path):
        import mlflow  # noqa: F401  (import cost paid only by stages that track)
        from mlflow.tracking import MlflowClient

        self.uri = os.environ["MLFLOW_TRACKING_URI"]
        self.client = MlflowClient(tracking_uri=self.uri)
        try:
            exp = self.client.get_experiment_by_name(EXPERIMENT)
        except Exception as e:  # connection refused, bad URI, ...
            raise RuntimeError(
                f"cannot reach the MLflow tracking store at MLFLOW_TRACKING_URI={self.uri}: {e}; "
                "start that server or unset MLFLOW_TRACKING_URI to use the project's SQLite store"
            ) from e
        if exp is None:
            art = None
            if self.uri.startswith("sqlite:"):
                art = (Path(root) / "mlartifacts").resolve().as_uri()
            try:
                self.experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=art)
            except Exception:  # created concurrently by another process
                self.experiment_id = self.client.get_experiment_by_name(EXPERIMENT).experiment_id
        else:
            self.experiment_id = exp.experiment_id

    def start(self, name: str, parent: Optional[str] = None, tags: Optional[dict] = None,
              params: Optional[dict] = None) -> str:
        t = {"mlflow.runName": name, **{k: str(v) for k, v in (tags or {}).items()}}
        if parent:
            t["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, tags=t, run_name=name)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def set_tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])

    def log_history(self, run_id: str, history: list[dict[str, float]]) -> None:
        """Per-epoch metrics (step = epoch, 1-based) in batches of at most 1000 points."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        pts = [Metric(k, float(v), ts, epoch) for epoch, row in enumerate(history, 1) for k, v in row.items()]
        for i in range(0, len(pts), 1000):
            self.client.log_batch(run_id, metrics=pts[i : i + 1000])

    def log_artifact(self, run_id: str, path: Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    @contextlib.contextmanager
    def run(self, name: str, parent: Optional[str] = None, tags: Optional[dict] = None,
            params: Optional[dict] = None) -> Iterator[str]:
        run_id = self.start(name, parent, tags, params)
        try:
            yield run_id
        except BaseException:
            self.end(run_id, "FAILED")
            raise
        self.end(run_id, "FINISHED")
