"""MLflow tracking with explicit run ids (no fluent active run: it is thread-local).

With nothing configured the store is SQLite in the project (``mlflow.db``) and artifacts go to
``mlartifacts/``; ``MLFLOW_TRACKING_URI`` points elsewhere unchanged.

Failure policy: reaching the store is checked when a Tracker is made and when a run starts, so an
unreachable store stops a stage *before* training. Once a run has started, logging is best
effort: a failure (connection lost mid-run) never stops training or loses a result, which is
already on disk; the tracker goes offline, counts what it could not log and says so at the end.

Latency: after a run has started, every logging call goes to one background writer thread per
process (in order), so training never waits on the store. A run's end waits until everything
queued is written, unless it is ended with ``wait=False`` (students: the next one starts training
while the last one's metrics and artifacts are written; the stage's own run end waits for all).
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
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


class TrackingUnavailable(RuntimeError):
    """The MLflow store cannot be reached; raised before any training starts."""


_log = logging.getLogger("kdprune.tracking")

_BLOCKED = [0.0]  # seconds callers spent waiting on MLflow in this process (import, runs, flushes)
_BLOCKED_LOCK = threading.Lock()


@contextlib.contextmanager
def _blocking() -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        with _BLOCKED_LOCK:
            _BLOCKED[0] += time.perf_counter() - t0


class _Writer:
    """The process's one background MLflow writer: a queue drained in order by a daemon thread."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.thread: Optional[threading.Thread] = None
        self.lock = threading.Lock()

    def put(self, item) -> None:
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._drain, name="mlflow-writer", daemon=True)
                self.thread.start()
        self.queue.put(item)

    def _drain(self) -> None:
        while True:
            tracker, what, n, fn, args = self.queue.get()
            try:
                tracker._call(what, n, fn, args)
            finally:
                self.queue.task_done()

    def join(self) -> None:
        if self.thread is not None:
            with _blocking():
                self.queue.join()


_WRITER = _Writer()
_NOT_LOGGED: dict[str, int] = {}  # over every Tracker of this process


def not_logged_total() -> dict[str, int]:
    """What this process could not log to MLflow, by kind (after waiting for the writer)."""
    _WRITER.join()
    return dict(_NOT_LOGGED)


def blocked_seconds() -> float:
    """Total seconds this process has waited on MLflow so far (the stage-work clock subtracts it)."""
    return _BLOCKED[0]


def check_tracking_store(timeout_s: float = 5.0) -> str:
    """Cheap reachability check of MLFLOW_TRACKING_URI, without importing MLflow; raises TrackingUnavailable."""
    import urllib.request

    uri = os.environ["MLFLOW_TRACKING_URI"]
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                if r.status == 200:
                    return uri
                raise OSError(f"HTTP {r.status}")
        except OSError as e:
            raise TrackingUnavailable(
                f"the MLflow tracking server at MLFLOW_TRACKING_URI={uri} does not answer ({e}); start it, or "
                "unset MLFLOW_TRACKING_URI to use the project's SQLite store"
            ) from None
    if uri.startswith("sqlite:///"):
        parent = Path(uri[len("sqlite:///"):]).parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise TrackingUnavailable(f"MLFLOW_TRACKING_URI={uri}: directory {parent} does not exist or is not writable")
    return uri


_SHARED: dict[tuple, "Tracker"] = {}
_SHARED_LOCK = threading.Lock()


class Tracker:
    @classmethod
    def shared(cls, root: Path, key: Optional[str]) -> "Tracker":
        """One Tracker per (store, key) in this process, e.g. for all the students under one sweep run:
        the store is checked once, not once per student."""
        k = (os.environ["MLFLOW_TRACKING_URI"], str(root), key)
        with _SHARED_LOCK:
            if k not in _SHARED:
                _SHARED[k] = cls(root)
            return _SHARED[k]

    def __init__(self, root: Path):
        with _blocking():
            self._init(root)

    def _init(self, root: Path) -> None:
        import mlflow  # noqa: F401  (import cost paid only by stages that track)
        from mlflow.tracking import MlflowClient

        self.uri = os.environ["MLFLOW_TRACKING_URI"]
        self.client = MlflowClient(tracking_uri=self.uri)
        try:
            exp = self.client.get_experiment_by_name(EXPERIMENT)
        except Exception as e:  # connection refused, bad URI, ...
            raise TrackingUnavailable(
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
        self.offline_reason: Optional[str] = None
        self.not_logged: dict[str, int] = {}
        self._lock = threading.Lock()

    def _best_effort(self, what: str, n: int, fn, *args) -> None:
        """Queue one logging call for the process's background writer."""
        _WRITER.put((self, what, n, fn, args))

    def flush(self) -> None:
        """Wait until every queued logging call has been written (or counted as not logged)."""
        _WRITER.join()

    def _call(self, what: str, n: int, fn, args) -> None:
        """Run one logging call; after the first failure stop trying and count what was not logged."""
        if self.offline_reason is None:
            try:
                fn(*args)
                return
            except Exception as e:
                with self._lock:
                    if self.offline_reason is None:
                        self.offline_reason = f"{type(e).__name__}: {str(e)[:300]}"
                        _log.warning(f"MLflow at {self.uri} failed ({self.offline_reason}); training goes on, "
                                     "results stay on disk, further logging is skipped")
        with self._lock:
            self.not_logged[what] = self.not_logged.get(what, 0) + n
        with _BLOCKED_LOCK:
            _NOT_LOGGED[what] = _NOT_LOGGED.get(what, 0) + n

    def summary(self, wait: bool = True) -> Optional[str]:
        """What could not be logged, or None when everything was (``wait=False``: so far)."""
        if wait:
            self.flush()
        if not self.not_logged:
            return None
        items = ", ".join(f"{v} {k}" for k, v in sorted(self.not_logged.items()))
        return f"not logged to MLflow at {self.uri} ({self.offline_reason}): {items}"

    def start(self, name: str, parent: Optional[str] = None, tags: Optional[dict] = None,
              params: Optional[dict] = None) -> str:
        t = {"mlflow.runName": name, **{k: str(v) for k, v in (tags or {}).items()}}
        if parent:
            t["mlflow.parentRunId"] = parent
        try:
            with _blocking():
                run = self.client.create_run(self.experiment_id, tags=t, run_name=name)
        except Exception as e:
            raise TrackingUnavailable(f"cannot create an MLflow run at MLFLOW_TRACKING_URI={self.uri}: {e}") from e
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self._best_effort("params", len(items[i : i + 100]), self.client.log_batch, run_id, [], items[i : i + 100])

    def set_tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag

        self._best_effort("tags", len(tags), self.client.log_batch, run_id, [], [],
                          [RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._best_effort("metric points", len(metrics), self.client.log_batch, run_id,
                          [Metric(k, float(v), ts, step) for k, v in metrics.items()])

    def log_history(self, run_id: str, history: list[dict[str, float]]) -> None:
        """Per-epoch metrics (step = epoch, 1-based) in batches of at most 1000 points."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        pts = [Metric(k, float(v), ts, epoch) for epoch, row in enumerate(history, 1) for k, v in row.items()]
        for i in range(0, len(pts), 1000):
            self._best_effort("metric points", len(pts[i : i + 1000]), self.client.log_batch, run_id, pts[i : i + 1000])

    def log_artifact(self, run_id: str, path: Path, artifact_path: Optional[str] = None) -> None:
        self._best_effort("artifacts", 1, self.client.log_artifact, run_id, str(path), artifact_path)

    def end(self, run_id: str, status: str = "FINISHED", wait: bool = True) -> None:
        self._best_effort("run endings", 1, self.client.set_terminated, run_id, status)
        if wait:
            self.flush()

    @contextlib.contextmanager
    def run(self, name: str, parent: Optional[str] = None, tags: Optional[dict] = None,
            params: Optional[dict] = None, wait: bool = True) -> Iterator[str]:
        run_id = self.start(name, parent, tags, params)
        try:
            yield run_id
        except BaseException:
            self.end(run_id, "FAILED")
            raise
        self.end(run_id, "FINISHED", wait=wait)
