"""MLflow tracking with explicit run ids (no fluent active run: it is thread-local).

With nothing configured the store is SQLite in the project (``mlflow.db``) and artifacts go to
``mlartifacts/``; ``MLFLOW_TRACKING_URI`` points elsewhere unchanged.

MLflow runs in one child process per kdprune process (the standard library's ProcessPoolExecutor
with one spawned worker; the calls are ``tracking.writer.Writer``'s): ``import_mlflow_early()``
starts it, and it imports MLflow and its SQL store (about 2 s of Python) on the other core while this
process imports torch and Prefect. Measured against MLflow imported on a thread of this process:
1.2 s less per process start-up (README "Tracking").

Failure policy: reaching the store is checked when a Tracker is made and when a run starts, so an
unreachable store stops a stage *before* training. Once a run has started, logging is best
effort: a failure (connection lost mid-run) never stops training or loses a result, which is
already on disk; the tracker goes offline, counts what it could not log and says so at the end.
The same once this process has reached the store: a store lost mid-sweep (a tracking server or
its database killed) does not stop the next student or stage either; its run is counted as not
logged ("runs (<name>)"), with everything logged to it. A tracker that went offline creates no
more runs even if the store comes back (they would stay empty): those are counted the same way.

Latency: after a run has started, every logging call is handed to the child, which makes them in
the order sent, so training never waits on the store. A run's end waits until everything sent is
written, unless it is ended with ``wait=False`` (students: the next one starts training while the
last one's metrics and artifacts are written; the stage's own run end waits for all).
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

from tracking import writer as tracking_writer

EXPERIMENT = os.environ.get("MLFLOW_EXPERIMENT_NAME", "kdprune")
# MLflow's experiment kind: model training, not GenAI (its UI's runs table, not traces)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
STUDENTS_VIEW = "students"  # the shared view of the latest sweep's students: mlflow.sharedViewState.<this>


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


_BLOCKED = [0.0]  # seconds callers spent waiting on MLflow in this process (store, runs, flushes)
_BLOCKED_LOCK = threading.Lock()


@contextlib.contextmanager
def _blocking() -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        with _BLOCKED_LOCK:
            _BLOCKED[0] += time.perf_counter() - t0


def _add(counts: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        counts[k] = counts.get(k, 0) + v


class _Logger:
    """This process's MLflow, made by one child process: a ``ProcessPoolExecutor`` with one worker
    (spawned, so nothing of this process's threads or torch state is copied), whose single worker
    makes the calls in the order submitted. ``start`` spawns it and has it import MLflow at once, on
    the other core, while this process imports torch and Prefect. Opening the store and creating a
    run wait for their answer; every logging call is submitted without waiting, so training never
    waits on the store. The executor finishes what was submitted before this process exits (Python
    joins it at exit), so the child never outlives its stage. What could not be logged is counted
    per tracker key: ``lost`` here (runs never created, calls the child could not take) merged with
    what the child reports.

    Not MLflow's ``synchronous=False`` logging: its ``set_terminated`` shuts down and drains the
    store's whole async queue (a student's run end would wait for every queued batch; another thread's
    ``log_batch`` racing that shutdown fails), its 10-thread pool reorders batches and keeps trying
    after a failure, and artifacts, dataset inputs, experiment tags and models have no async form."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool = None  # the ProcessPoolExecutor, once started
        self.lost: dict[str, tuple[Optional[str], dict[str, int]]] = {}  # runs not created, calls not taken

    def start(self):
        with self.lock:
            if self.pool is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=tracking_writer.serve, initargs=(os.getpid(),))
                self.pool.submit(tracking_writer.import_mlflow)
            return self.pool

    def call(self, op: str, *args) -> Any:
        """Open the store or create a run, and wait for the answer; raises RuntimeError with MLflow's error."""
        with _blocking():
            try:
                return self.start().submit(tracking_writer.call, op, args).result()
            except RuntimeError:  # MLflow's error (tracking.writer.call), or the child died (BrokenProcessPool)
                raise
            except Exception as e:  # e.g. an argument that cannot be pickled
                raise RuntimeError(f"{type(e).__name__}: {str(e)[:500]}") from None

    def post(self, msg: tuple) -> None:
        op, key, what, n = msg[:4]
        try:
            fut = self.start().submit(tracking_writer.best_effort, key, what, n, msg[4], op, msg[5:])
        except RuntimeError as e:  # submitted at interpreter exit, after the executor was joined
            self.count_lost(key, what, n, f"{e}")
            return
        fut.add_done_callback(  # the child died, or the call could not be sent: counted as not logged
            lambda f: f.exception() and self.count_lost(key, what, n, f"MLflow's child process: {f.exception()}"))

    def flush(self) -> None:
        """Wait until the child has made every call submitted before this one."""
        if self.pool is not None:
            with _blocking():
                self._reported()  # the child's answer comes after every call submitted before it

    def _reported(self) -> dict:
        """Per tracker key, from the child: (offline reason, not logged, handled)."""
        if self.pool is None:
            return {}
        try:
            return self.pool.submit(tracking_writer.state).result()
        except Exception:
            return {}

    def count_lost(self, key: str, what: str, n: int, reason: str) -> None:
        with self.lock:
            _add(self.lost.setdefault(key, (reason, {}))[1], {what: n})

    def state(self, key: str) -> tuple[Optional[str], dict[str, int]]:
        """Why ``key``'s logging stopped (or None) and what it could not log, by kind."""
        reported = self._reported()
        with self.lock:
            why, not_logged, _ = reported.get(key, (None, {}, {}))
            why2, lost = self.lost.get(key, (None, {}))
            merged = dict(not_logged)
            _add(merged, lost)
        return why or why2, {k: v for k, v in merged.items() if v > 0}

    def keys(self) -> set[str]:
        reported = self._reported()
        with self.lock:
            return {*reported, *self.lost}


_MLFLOW = _Logger()


def import_mlflow_early() -> None:
    """Start MLflow's child process now, which imports MLflow at once, so that its imports overlap the caller's
    start-up. It touches no store until a Tracker is made."""
    _MLFLOW.start()


def not_logged_total() -> dict[str, int]:
    """What this process could not log to MLflow, by kind (after the child has caught up)."""
    _MLFLOW.flush()
    total: dict[str, int] = {}
    for key in _MLFLOW.keys():
        for k, v in _MLFLOW.state(key)[1].items():
            total[k] = total.get(k, 0) + v
    return total


LOST_RUN = "runs ("  # the kind a run that could not be created is counted under: "runs (<its name>)"


def describe_not_logged(counts: dict[str, int]) -> str:
    """What was not logged, for a warning: the runs that could not be created by name, then the
    other kinds, e.g. ``2 runs (a, b), 40 metric points, 3 run endings``."""
    names = sorted(k[len(LOST_RUN):-1] for k in counts if k.startswith(LOST_RUN))
    items = [f"{sum(v for k, v in counts.items() if k.startswith(LOST_RUN))} runs ({', '.join(names)})"] if names else []
    return ", ".join(items + [f"{v} {k}" for k, v in sorted(counts.items()) if not k.startswith(LOST_RUN)])


def blocked_seconds() -> float:
    """Total seconds this process has waited on MLflow so far (the stage-work clock subtracts it)."""
    return _BLOCKED[0]


def check_tracking_store(timeout_s: float = 5.0) -> str:
    """Cheap reachability check of MLFLOW_TRACKING_URI, without importing MLflow; raises TrackingUnavailable."""
    import urllib.request

    from servers.runtime import stores_hint

    uri = os.environ["MLFLOW_TRACKING_URI"]
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                if r.status == 200:
                    return uri
                raise OSError(f"HTTP {r.status}")
        except OSError as e:
            raise TrackingUnavailable(
                f"the MLflow tracking server at MLFLOW_TRACKING_URI={uri} does not answer ({e}){stores_hint()}; start it, or "
                "unset MLFLOW_TRACKING_URI to use the project's SQLite store"
            ) from None
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        parent = db.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise TrackingUnavailable(f"MLFLOW_TRACKING_URI={uri}: directory {parent} does not exist or is not writable")
        if db.exists():
            _check_sqlite_store(db)
    return uri


def _check_sqlite_store(db: Path) -> None:
    """A SQLite store that is not a readable database (truncated, overwritten) stops the command here,
    exit code 3, naming the file and how to recover: the file is the project's own store (made by
    ``python -m flows init``), so unsetting MLFLOW_TRACKING_URI is no advice. Cheap: the header and the
    schema page, not a full integrity check."""
    import sqlite3

    try:
        with open(db, "rb") as f:
            header = f.read(16)
        if header and header != b"SQLite format 3\x00":
            raise sqlite3.DatabaseError("file is not a database (its header is not SQLite's)")
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            con.execute("select count(*) from sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e):  # another kdprune process writing: fine
            return
        raise TrackingUnavailable(_corrupt_store(db, e)) from None
    except (sqlite3.DatabaseError, OSError) as e:
        raise TrackingUnavailable(_corrupt_store(db, e)) from None


def _corrupt_store(db: Path, e: Exception) -> str:
    return (f"the MLflow store {db} cannot be read ({e}). It is the project's own tracking store (runs, "
            f"params, metrics; the pipeline's results are in its outputs, not here). Move it aside "
            f"(`mv {db.name} {db.name}.corrupt`) and run `make setup` (or `python -m flows init`) to create an "
            "empty one, or restore it from a backup")


_REACHED: set[str] = set()  # stores this process has opened: losing one later is "mid-run"


def _OWNER() -> str:
    """The ``kdprune.owner`` tag of the runs this process opens (see tracking_writer.Writer.reap)."""
    pid = os.getpid()
    return f"{socket.gethostname()} pid {pid} started {tracking_writer.process_started(pid)}"


def _closer() -> str:
    return f"`{' '.join(['kdprune', *sys.argv[1:]])[:200]}` (pid {os.getpid()} on {socket.gethostname()})"
OFFLINE = "offline-"  # run ids handed out while the store is unreachable mid-run: counted, never sent


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
        self.uri = os.environ["MLFLOW_TRACKING_URI"]
        self.key = uuid.uuid4().hex  # its offline state and counts are kept under this key
        art = (Path(root) / "mlartifacts").resolve().as_uri() if self.uri.startswith("sqlite:") else None
        self._client = None
        self.lost_reason: Optional[str] = None  # set when the store was lost mid-run
        try:
            self.experiment_id = _MLFLOW.call("open", self.uri, EXPERIMENT, art, EXPERIMENT_TAGS)
        except RuntimeError as e:  # connection refused, bad URI, ...
            if self.uri in _REACHED:
                self.experiment_id, self.lost_reason = None, str(e)
                return
            advice = ("check the file (or move it aside and run `python -m flows init` for an empty store)"
                      if self.uri.startswith("sqlite:") else
                      "start that server or unset MLFLOW_TRACKING_URI to use the project's SQLite store")
            raise TrackingUnavailable(
                f"cannot reach the MLflow tracking store at MLFLOW_TRACKING_URI={self.uri}: {e}; {advice}"
            ) from None
        if self.uri not in _REACHED:  # once per process and store: close runs whose process was killed
            _REACHED.add(self.uri)
            _MLFLOW.post(("reap", self.key, "closing of runs left by killed processes", 0, self.uri,
                          self.experiment_id, socket.gethostname(), _closer()))

    @property
    def client(self):
        """An MlflowClient in this process on the same store, for reading runs back (imports MLflow)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _best_effort(self, what: str, n: int, op: str, *args) -> None:
        """Queue one logging call; one for a run that could not be created is counted as not logged."""
        if args and str(args[0]).startswith(OFFLINE):
            _MLFLOW.count_lost(self.key, what, n, self.lost_reason or "the store was lost")
            return
        _MLFLOW.post((op, self.key, what, n, self.uri, *args))

    def flush(self) -> None:
        """Wait until every logging call sent so far has been written (or counted as not logged)."""
        _MLFLOW.flush()

    def summary(self, wait: bool = True) -> Optional[str]:
        """What could not be logged, or None when everything was (``wait=False``: as of the latest answer)."""
        if wait:
            self.flush()
        reason, counts = _MLFLOW.state(self.key)
        if not counts:
            return None
        return f"not logged to MLflow at {self.uri} ({reason}): {describe_not_logged(counts)}"

    def start(self, name: str, parent: Optional[str] = None, tags: Optional[dict] = None,
              params: Optional[dict] = None, start_ms: Optional[int] = None) -> str:
        """A new run; ``start_ms`` (epoch milliseconds) dates it, e.g. when a task that trained
        elsewhere began, so MLflow's duration is the training's."""
        t = {"mlflow.runName": name, tracking_writer.OWNER_TAG: _OWNER(),
             **{k: str(v) for k, v in (tags or {}).items()}}
        if parent:
            t["mlflow.parentRunId"] = parent
        try:
            if self.lost_reason:
                raise RuntimeError(self.lost_reason)
            run_id = _MLFLOW.call("create_run", self.key, self.uri, self.experiment_id, t, name, start_ms)
        except RuntimeError as e:
            if self.uri not in _REACHED:
                raise TrackingUnavailable(f"cannot create an MLflow run at MLFLOW_TRACKING_URI={self.uri}: {e}") from None
            # the store was lost mid-run: train anyway, count this run and what is logged to it
            self.lost_reason = self.lost_reason or f"{e}"
            _MLFLOW.count_lost(self.key, f"{LOST_RUN}{name})", 1, self.lost_reason)
            run_id = OFFLINE + uuid.uuid4().hex
        if params:
            self.log_params(run_id, params)
        return run_id

    def latest_run(self, filter_string: str) -> Optional[str]:
        """The id of this experiment's latest run matching ``filter_string`` (MLflow's search syntax), or None."""
        if self.experiment_id is None:
            return None
        try:
            return _MLFLOW.call("latest_run", self.uri, self.experiment_id, filter_string)
        except RuntimeError:
            return None

    def log_params(self, run_id: str, params: dict) -> None:
        items = [(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            chunk = items[i : i + 100]
            self._best_effort("params", len(chunk), "batch", run_id, [], chunk, [])

    def set_tags(self, run_id: str, tags: dict) -> None:
        self._best_effort("tags", len(tags), "batch", run_id, [], [], [(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        ts = int(time.time() * 1000)
        self._best_effort("metric points", len(metrics), "batch", run_id,
                          [(k, float(v), ts, step) for k, v in metrics.items()], [], [])

    def log_history(self, run_id: str, history: list[dict[str, float]]) -> None:
        """Per-epoch metrics (step = epoch, 1-based) in batches of at most 1000 points."""
        ts = int(time.time() * 1000)
        pts = [(k, float(v), ts, epoch) for epoch, row in enumerate(history, 1) for k, v in row.items()]
        for i in range(0, len(pts), 1000):
            self._best_effort("metric points", len(pts[i : i + 1000]), "batch", run_id, pts[i : i + 1000], [], [])

    def log_artifact(self, run_id: str, path: Path, artifact_path: Optional[str] = None) -> None:
        self._best_effort("artifacts", 1, "artifact", run_id, str(Path(path).resolve()), artifact_path)

    def log_dataset(self, run_id: str, name: str, digest: str, source_type: str, source: dict,
                    profile: Optional[dict] = None, context: str = "training") -> None:
        """A dataset input of the run (MLflow's Dataset column): name, digest and where it comes from."""
        import json

        d = {"name": name, "digest": digest, "source_type": source_type, "source": json.dumps(source),
             "profile": json.dumps(profile) if profile else None, "context": context}
        self._best_effort("datasets", 1, "inputs", run_id, [d])

    def set_experiment_tag(self, key: str, value: str) -> None:
        self._best_effort("experiment tags", 1, "experiment_tag", self.experiment_id, key, value)

    def log_model(self, run_id: str, name: str, registered_name: str, model_code: Path, artifacts: dict[str, Path],
                  code_paths: list[Path], pip_requirements: list[str], signature: dict, description: str = "",
                  tags: Optional[dict] = None) -> None:
        """A pyfunc model from code (no pickle), registered as a new version of ``registered_name`` with
        ``description`` and ``tags`` on the version."""
        self._best_effort("models", 1, "model", run_id, name, registered_name, str(Path(model_code).resolve()),
                          {k: str(Path(v).resolve()) for k, v in artifacts.items()},
                          [str(Path(c).resolve()) for c in code_paths], pip_requirements, signature, description,
                          {k: str(v) for k, v in (tags or {}).items()})

    def describe_model_version(self, registered_name: str, run_id: str, description: str, tags: dict) -> None:
        """Description and tags of the version of ``registered_name`` that run ``run_id`` logged."""
        self._best_effort("model version tags", 1, "teacher_version", registered_name, run_id, description,
                          {k: str(v) for k, v in tags.items()})

    def end(self, run_id: str, status: str = "FINISHED", wait: bool = True, end_ms: Optional[int] = None,
            last: bool = False) -> None:
        """End a run. ``last``: the command's outermost run: afterwards, the run endings MLflow missed
        while it was unreachable are recorded if it is back (else the next command closes those runs)."""
        self._best_effort("run endings", 1, "terminate", run_id, status, end_ms)
        if wait or last:
            self.flush()
        if last:
            with contextlib.suppress(RuntimeError):
                _MLFLOW.call("settle")

    @contextlib.contextmanager
    def run(self, name: str, parent: Optional[str] = None, tags: Optional[dict] = None,
            params: Optional[dict] = None, wait: bool = True, start_ms: Optional[int] = None,
            end_ms: Optional[int] = None) -> Iterator[str]:
        run_id = self.start(name, parent, tags, params, start_ms)
        outermost = parent is None and wait  # a command's own run (students: top-level runs, wait=False)
        try:
            yield run_id
        except BaseException as e:
            # Ctrl-C or SIGTERM (Prefect's cancellation): KILLED, as MLflow's own fluent API records it
            self.end(run_id, "KILLED" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "FAILED",
                     last=outermost)
            raise
        self.end(run_id, "FINISHED", wait=wait, end_ms=end_ms, last=outermost)


# ---------------------------------------------------------------- what a user opens in MLflow's UI

# the runs table's columns: what a researcher compares (test accuracy in %, rounded; the cell's mean ± std
# over seeds) and what tells the students apart (method, kept fraction, KD arm and weight, seed, teacher).
# MLflow lays them out by kind (metrics, params, tags); all fit beside the run names at 1,600 px. The
# training data (the Dataset column, 250 px) is on each run's page and one click away (Columns).
STUDENT_COLUMNS = [("metrics", "test_acc_pct"), ("params", "method"), ("params", "fraction"),
                   ("params", "kd_weight"), ("params", "seed"), ("params", "teacher_arch"), ("tags", "kd_arm"),
                   ("tags", "acc_over_seeds")]


def method_color(method: str, methods: list[str]) -> dict[str, str]:
    """The run-colour tag of a student when its run is created: none. The students are coloured by KD
    arm (``mlflow.runColor``, as the accuracy figure colours its lines) once the evaluate stage has
    measured them (tracking/study.py); until then MLflow picks the colours."""
    return {}


def students_view_state(sweep_run_id: str) -> dict:
    """MLflow UI state (the format its "share view" stores in the experiment tag
    ``mlflow.sharedViewState.<key>``) for one sweep's students: every student as a row (no grouping:
    MLflow's group rows would average the fractions and KD weights of different students) with the
    columns of STUDENT_COLUMNS, and a chart of test accuracy (%) against the kept fraction whose points
    are coloured by KD arm (the run colours tracking/study.py sets: black is no KD, as in the figure)."""
    section = "kdprune-students"
    return {
        "searchFilter": f"tags.`kdprune.sweep_run_id` = '{sweep_run_id}'",
        "orderByKey": "params.`method`", "orderByAsc": True, "startTime": "ALL", "lifecycleFilter": "Active",
        "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": [f"{kind}.`{key}`" for kind, key in STUDENT_COLUMNS],
        # MLflow applies columnWidths to the columns named in columnOrder only
        "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", "duration",
                        *[f"{kind}.`{key}`" for kind, key in STUDENT_COLUMNS]],
        "columnWidths": {"attributes.`Run Name`": 220, "runDateAndNestInfo": 100, "duration": 75,
                         "params.`teacher_arch`": 110, "tags.`acc_over_seeds`": 180},
        "runsExpanded": {}, "runsPinned": [], "runsHidden": [],
        "runsVisibilityMap": {}, "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": [
            {"uuid": "kdprune-acc-vs-fraction", "type": "SCATTER", "runsCountToCompare": 10000,
             "metricSectionId": section, "deleted": False, "isGenerated": False,
             "displayName": "test accuracy (%) vs kept fraction; colour = KD arm (black: no KD)",
             "xaxis": {"key": "fraction", "type": "PARAM"}, "yaxis": {"key": "test_acc_pct", "type": "METRIC"}},
        ],
        "compareRunSections": [{"uuid": section, "name": "Students", "display": True, "isReordered": False,
                                "deleted": False, "isGenerated": False}],
        "viewMaximized": False, "runListHidden": False, "isAccordionReordered": False,
        "useGroupedValuesInCharts": False, "hideEmptyCharts": True,
        "groupBy": None, "groupsExpanded": {}, "autoRefreshEnabled": True,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def publish_students_view(tracker: "Tracker", sweep_run_id: str) -> None:
    """Point the experiment's shared view STUDENTS_VIEW at this sweep's students."""
    import json

    tracker.set_experiment_tag(f"mlflow.sharedViewState.{STUDENTS_VIEW}", json.dumps(students_view_state(sweep_run_id)))


# MLflow's experiment kinds of model training (its UI's "Model training" workflow)
TRAINING_KINDS = {"custom_model_development", "custom_model_development_inferred", "finetuning", "forecasting",
                   "classification", "regression", "automl"}


def ui_url(base: str, experiment_id: str, experiment_tags: dict, view: Optional[str] = STUDENTS_VIEW) -> str:
    """The link to open an experiment in MLflow's UI. MLflow 3.17's UI picks GenAI or model-training
    pages from the browser's workflow switch (GenAI until the user flips it), so the link carries the
    workflow that the experiment's kind tag says; a model-training experiment opens on its runs, with
    ``view`` (a shared view) applied when the experiment has it."""
    base = base.rstrip("/")
    kind = experiment_tags.get("mlflow.experimentKind")
    if kind not in TRAINING_KINDS:
        return f"{base}/#/experiments/{experiment_id}" + ("?workflowType=genai" if kind else "")
    query = "workflowType=machine_learning"
    if view and f"mlflow.sharedViewState.{view}" in experiment_tags:
        query += f"&viewStateShareKey={view}"
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"
