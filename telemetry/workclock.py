"""A stage's own work time (its tasks' seconds minus the seconds spent waiting on MLflow)."""
from __future__ import annotations

import functools
import time


def timed_work(fn):
    """Wrap a stage task's body: its result dict gets ``work_s``, the seconds it ran minus the
    seconds it waited on MLflow. That is the stage's own work (reading inputs, training, scoring,
    selecting, evaluating, writing outputs); everything else a stage costs is orchestration."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import time

        from tasks.tracking import blocked_seconds

        t0, b0 = time.perf_counter(), blocked_seconds()
        out = fn(*args, **kwargs)
        out["work_s"] = max(0.0, time.perf_counter() - t0 - (blocked_seconds() - b0))
        return out

    return wrapper



def work_seconds(results) -> float:
    """The stage's work: the sum over its task results (tasks of one stage run one at a time per device)."""
    return float(sum(r["work_s"] for r in results))
