"""The stages' one door to what cannot change an output: tracking, tags, progress, run records, clocks.

Stage code (tasks/, flows/) reports what it does through :func:`observer` and never imports the
output-neutral packages (tracking/, telemetry/, servers/, cli/): so they are not in any stage's
lineage, and fixing a log line re-runs nothing. The default :class:`Observer` does nothing (a
tracker whose runs have no id, no tags, no progress bars, no run records, costs of wall seconds only);
the entry point (cli/main.py) installs the real one explicitly with :func:`install`. A process that
installs none (a Ray worker, a test calling a task) computes exactly the same outputs.

Everything here hands values out to the observer, and what comes back is never written into a DVC
output: run ids, tags, records, seconds and memory figures only go to MLflow and the run records.
"""
from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path
from typing import Any, Iterator, Optional


class NullBar:
    """A progress bar that draws nothing."""

    n = 0

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass


class NullTracker:
    """A tracker that logs nothing: the interface of tracking.tracker.Tracker that stage code uses."""

    def start(self, name: str, parent: Optional[str] = None, tags: Optional[dict] = None,
              params: Optional[Params] = None, start_ms: Optional[int] = None) -> Optional[str]:
        return None

    @contextlib.contextmanager
    def run(self, name: str, parent: Optional[str] = None, tags: Optional[dict] = None,
            params: Optional[Params] = None, wait: bool = True, start_ms: Optional[int] = None,
            end_ms: Optional[int] = None) -> Iterator[Optional[str]]:
        yield None

    def end(self, run_id, status: str = "FINISHED", wait: bool = True, end_ms: Optional[int] = None) -> None: ...
    def log_params(self, run_id, params: dict) -> None: ...
    def set_tags(self, run_id, tags: dict) -> None: ...
    def log_metrics(self, run_id, metrics: dict, step: int = 0) -> None: ...
    def log_history(self, run_id, history: list) -> None: ...
    def log_artifact(self, run_id, path: Path, artifact_path: Optional[str] = None) -> None: ...
    def log_dataset(self, run_id, name: str, digest: str, source_type: str, source: dict,
                    profile: Optional[dict] = None, context: str = "training") -> None: ...
    def flush(self) -> None: ...

    def summary(self, wait: bool = True) -> Optional[str]:
        return None


class Observer:
    """What stage code reports to; this default does nothing. The real one (telemetry/observer.py)
    overrides every method."""

    # MLflow
    def tracker(self, root: Path) -> Any:
        """A tracker of its own (checks the store now)."""
        return NullTracker()

    def shared_tracker(self, root: Path, key: Optional[str]) -> Any:
        """One tracker per ``key`` in this process (e.g. every student under one sweep run)."""
        return NullTracker()

    def stage_tags(self, root: Path, stage: str, meta: dict) -> dict:
        """The tags of a stage's run: stage, git commit, dataset hashes, what explains its bytes."""
        return {}

    def commit_tags(self, root: Path) -> dict:
        """The tags of a run that has no dataset yet: the git commit."""
        return {}

    def run_color(self, method: str, methods: list[str]) -> dict:
        """The tags that colour a student's run by its selection method."""
        return {}

    def log_student_data(self, tracker: Any, run_id: Optional[str], manifest_path: Path, manifest: dict,
                         tags: dict, meta: dict) -> None:
        """The student's training data (its manifest) as a dataset input of its run."""

    def publish_students_view(self, tracker: Any, run_id: Optional[str]) -> None:
        """Point the shared view of the students at this sweep's run."""

    def register_teacher(self, root: Path, tracker: Any, run_id: Optional[str], model_dir: Path, meta: dict) -> None:
        """The teacher as a registered model."""

    def not_logged(self) -> str:
        """What this process could not log (after waiting for the logging), or ''."""
        return ""

    def blocked_seconds(self) -> float:
        """Seconds this process has waited on tracking so far."""
        return 0.0

    # this machine
    @contextlib.contextmanager
    def progress(self, desc: str, total: int, unit: str) -> Iterator[Any]:
        yield NullBar()

    def note(self, text: str) -> None:
        """Show ``text`` beside the innermost progress bar."""

    @contextlib.contextmanager
    def measure_cost(self) -> Iterator[dict]:
        """Wall seconds and peak extra memory of the block (here: wall seconds, memory unknown)."""
        out: dict = {}
        t0 = time.perf_counter()
        try:
            yield out
        finally:
            out.update(seconds=time.perf_counter() - t0, peak_mem_mb=0.0)

    def write_record(self, root: Path, stage: str, record: dict) -> None:
        """Replace ``stage``'s run record (seconds, run ids: never in a DVC output)."""

    def read_record(self, root: Path, stage: str) -> dict:
        return {}


_CURRENT: list[Observer] = [Observer()]


def install(obs: Observer) -> Observer:
    """Make ``obs`` this process's observer (the entry point does, once); returns the one it replaced."""
    before, _CURRENT[0] = _CURRENT[0], obs
    return before


def observer() -> Observer:
    return _CURRENT[0]


def timed_work(fn):
    """Wrap a stage task's body: its result dict gets ``work_s``, the seconds it ran minus the
    seconds it waited on tracking. That is the stage's own work (reading inputs, training, scoring,
    selecting, evaluating, writing outputs); everything else a stage costs is orchestration."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        obs = observer()
        t0, b0 = time.perf_counter(), obs.blocked_seconds()
        out = fn(*args, **kwargs)
        out["work_s"] = max(0.0, time.perf_counter() - t0 - (obs.blocked_seconds() - b0))
        return out

    return wrapper


def work_seconds(results) -> float:
    """The stage's work: the sum over its task results (tasks of one stage run one at a time per device)."""
    return float(sum(r["work_s"] for r in results))
