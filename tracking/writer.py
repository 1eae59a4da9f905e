"""The MLflow calls a kdprune process makes, made in its MLflow child process (``tracking.tracker``
submits them: opening the store and creating runs waiting for the answer, logging without waiting,
all in the order sent).

Logging is best effort per tracker: the first failed call marks that tracker offline (with the
reason, printed once to stderr), and its later calls are only counted, so that the tracker can say
what was not logged.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any, Optional


class Writer:
    def __init__(self) -> None:
        self.clients: dict[str, Any] = {}
        self.offline: dict[str, str] = {}  # tracker key -> why it went offline
        self.not_logged: dict[str, dict[str, int]] = {}  # tracker key -> kind -> count
        self.handled: dict[str, dict[str, int]] = {}  # tracker key -> kind -> count (logged or not)
        self.lock = threading.Lock()
        self.client_lock = threading.Lock()
        # run endings that could not be recorded (store unreachable): run id -> (key, uri, status, end_ms)
        self.unended: dict[str, tuple[str, str, str, Optional[int]]] = {}

    def client(self, uri: str):
        from mlflow.tracking import MlflowClient

        with self.client_lock:
            if uri not in self.clients:
                self.clients[uri] = MlflowClient(tracking_uri=uri)
            return self.clients[uri]

    def state(self) -> dict[str, tuple[Optional[str], dict[str, int], dict[str, int]]]:
        """Per tracker key: why it went offline (or None), what was not logged, what was handled."""
        with self.lock:
            return {k: (self.offline.get(k), dict(self.not_logged.get(k, {})), dict(h))
                    for k, h in self.handled.items()}

    # ------------------------------------------------------------------ requests with an answer
    def open(self, uri: str, experiment: str, artifact_location: Optional[str], tags: Optional[dict] = None) -> str:
        """The experiment's id, created with ``tags`` if it does not exist; ``tags`` it lacks are set
        (e.g. the experiment kind, so MLflow's UI treats it as model training)."""
        c = self.client(uri)
        exp = c.get_experiment_by_name(experiment)
        if exp is None:
            try:
                return c.create_experiment(experiment, artifact_location=artifact_location, tags=tags)
            except Exception:  # created concurrently by another process
                exp = c.get_experiment_by_name(experiment)
        for k, v in (tags or {}).items():
            if k not in exp.tags:
                c.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id

    def create_run(self, key: str, uri: str, experiment_id: str, tags: dict, name: str,
                   start_ms: Optional[int] = None) -> str:
        """A new run of tracker ``key`` (dated ``start_ms`` when given); refused once that tracker is
        offline, so that a store back after an outage gets no run whose logging would all be skipped
        (the caller counts the run instead)."""
        if key in self.offline:
            raise RuntimeError(f"logging went offline earlier in this process ({self.offline[key]})")
        return self.client(uri).create_run(experiment_id, start_time=start_ms, tags=tags, run_name=name).info.run_id

    def latest_run(self, uri: str, experiment_id: str, filter_string: str) -> Optional[str]:
        runs = self.client(uri).search_runs([experiment_id], filter_string=filter_string, max_results=1,
                                            order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    # ------------------------------------------------------------------ best-effort logging
    def batch(self, uri: str, run_id: str, metrics: list, params: list, tags: list) -> None:
        from mlflow.entities import Metric, Param, RunTag

        self.client(uri).log_batch(run_id, [Metric(k, v, ts, step) for k, v, ts, step in metrics],
                                   [Param(k, v) for k, v in params], [RunTag(k, v) for k, v in tags])

    def artifact(self, uri: str, run_id: str, path: str, artifact_path: Optional[str]) -> None:
        self.client(uri).log_artifact(run_id, path, artifact_path)

    def inputs(self, uri: str, run_id: str, datasets: list) -> None:
        """Dataset inputs of a run: dicts of name, digest, source_type, source, schema, profile (JSON
        strings, as MLflow's Dataset entity holds them) and context (training, validation, ...)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        self.client(uri).log_inputs(run_id, [
            DatasetInput(Dataset(d["name"], d["digest"], d["source_type"], d["source"], d.get("schema"), d.get("profile")),
                         tags=[InputTag("mlflow.data.context", d["context"])])
            for d in datasets])

    def experiment_tag(self, uri: str, experiment_id: str, key: str, value: str) -> None:
        self.client(uri).set_experiment_tag(experiment_id, key, value)

    def model(self, uri: str, run_id: str, name: str, registered_name: str, model_code: str, artifacts: dict,
              code_paths: list, pip_requirements: list, signature: dict, description: str = "",
              tags: Optional[dict] = None) -> None:
        """Log a pyfunc model from code (``model_code``, a Python file: nothing is pickled) with its
        ``artifacts`` under ``run_id`` and register it as a new version of ``registered_name``, with
        ``description`` and ``tags`` on that version (the Model Registry's page of the version).

        Quiet: MLflow's two warnings here say what does not apply to this model (it has an explicit
        tensor signature, so neither type hints nor an input example infer one), and its registration
        lines ("Successfully registered model", "Created version") are said by the version's page
        (the warnings: :func:`quiet_warnings`)."""
        import mlflow
        import mlflow.pyfunc
        from mlflow.models import Model, ModelSignature
        from mlflow.utils import logging_utils

        experiment_id = self.client(uri).get_run(run_id).info.experiment_id
        with self.client_lock:  # the fluent URIs and experiment are process-wide
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            # the logged model's experiment (and so its artifact location) is the fluent one, not its run's
            mlflow.set_experiment(experiment_id=experiment_id)
        logging_utils.disable_logging()  # MLflow's own switch for its event lines (eprint)
        try:
            info = Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
                             registered_model_name=registered_name, python_model=model_code, artifacts=artifacts,
                             code_paths=code_paths, pip_requirements=pip_requirements,
                             signature=ModelSignature.from_dict(signature), await_registration_for=0)
        finally:
            logging_utils.enable_logging()
        version = getattr(info, "registered_model_version", None)
        if version is not None:
            self.model_version(uri, registered_name, str(version), description, tags or {})

    def model_version(self, uri: str, name: str, version: str, description: Optional[str], tags: dict) -> None:
        """A registered model version's description (None: left as it is) and tags."""
        c = self.client(uri)
        if description is not None:
            c.update_model_version(name, version, description=description)
        for k, v in tags.items():
            c.set_model_version_tag(name, version, k, str(v))

    def teacher_version(self, uri: str, name: str, run_id: str, description: str, tags: dict) -> None:
        """The version of registered model ``name`` logged by run ``run_id`` (the teacher stage's run):
        its description and tags (e.g. the test accuracy the evaluate stage measured)."""
        versions = self.client(uri).search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        for v in versions:
            self.model_version(uri, name, v.version, description, tags)

    def terminate(self, uri: str, run_id: str, status: str, end_ms: Optional[int] = None) -> None:
        self.client(uri).set_terminated(run_id, status, end_time=end_ms)

    def settle(self) -> tuple[int, int]:
        """Record the run endings that failed while the store was unreachable, now that the command
        ends (the store may be back: `stores up` during a sweep). Each such run gets the status it
        ended with and a tag saying its end was recorded late; the first failure stops (the store is
        still away: the next command closes the runs, :meth:`reap`). Returns (recorded, left)."""
        done = 0
        for run_id, (key, uri, status, end_ms) in list(self.unended.items()):
            try:
                c = self.client(uri)
                c.set_tag(run_id, CLOSED_TAG, f"{status}: its end was recorded late, when the command ended, "
                          f"because MLflow was unreachable when the run ended ({self.offline.get(key, 'unknown')})")
                c.set_terminated(run_id, status, end_time=end_ms)
            except Exception as e:
                _say(f"MLflow at {uri} still fails ({type(e).__name__}); {len(self.unended)} run(s) stay RUNNING "
                     "until the next kdprune command finds their process gone and closes them")
                break
            del self.unended[run_id]
            done += 1
            with self.lock:
                counts = self.not_logged.get(key, {})
                if counts.get("run endings", 0) > 0:
                    counts["run endings"] -= 1
        if done:
            _say(f"recorded {done} run ending(s) that MLflow missed while it was unreachable")
        return done, len(self.unended)

    def reap(self, uri: str, experiment_id: str, host: str, closer: str) -> int:
        """Close the RUNNING runs this machine's kdprune processes opened whose process is gone (a
        stage killed, a machine that lost power): status KILLED and a tag saying why and by whom.
        A run's owner is its ``kdprune.owner`` tag (host, pid, process start time: a reused pid is
        not taken for the owner); runs of other machines are left to those machines' commands."""
        try:
            return self._reap(uri, experiment_id, host, closer)
        except Exception as e:  # never the reason this process's own logging goes offline
            _say(f"could not check MLflow for runs left RUNNING by killed processes ({type(e).__name__}: {e})")
            return 0

    def _reap(self, uri: str, experiment_id: str, host: str, closer: str) -> int:
        c = self.client(uri)
        runs = c.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
        closed = 0
        for r in runs:
            owner = r.data.tags.get(OWNER_TAG, "")
            o_host, _, rest = owner.partition(" pid ")
            pid_text, _, started = rest.partition(" started ")
            if o_host != host or not pid_text.isdigit() or _alive(int(pid_text), started):
                continue
            c.set_tag(r.info.run_id, CLOSED_TAG, f"KILLED by {closer}: the process that opened it ({owner}) no "
                      "longer runs (killed or crashed before it could end the run)")
            c.set_terminated(r.info.run_id, "KILLED")
            closed += 1
        if closed:
            _say(f"closed {closed} MLflow run(s) left RUNNING by killed kdprune processes (status KILLED, "
                 f"tag {CLOSED_TAG})")
        return closed

    def best_effort(self, key: str, what: str, n: int, uri: str, op: str, args: tuple) -> None:
        logged = False
        if key not in self.offline:
            try:
                getattr(self, op)(uri, *args)
                logged = True
            except Exception as e:
                self.offline[key] = f"{type(e).__name__}: {str(e)[:300]}"
                _say(f"MLflow at {uri} failed ({self.offline[key]}); training goes on, results stay on disk, "
                     "further logging is skipped")
        with self.lock:
            if not logged:
                counts = self.not_logged.setdefault(key, {})
                counts[what] = counts.get(what, 0) + n
                if op == "terminate":
                    self.unended[args[0]] = (key, uri, *args[1:3])
            handled = self.handled.setdefault(key, {})
            handled[what] = handled.get(what, 0) + n


OWNER_TAG = "kdprune.owner"  # "<host> pid <pid> started <process start time>": the process that opened the run
CLOSED_TAG = "kdprune.closed"  # why and by whom a run was ended for its process


def process_started(pid: int) -> str:
    """A process's start time (psutil), to tell it from a later process with the same pid."""
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        return ""


def _alive(pid: int, started: str) -> bool:
    now = process_started(pid)
    if not now:
        return False
    try:
        return abs(float(now) - float(started)) < 1.0
    except ValueError:
        return True  # no start time recorded: a live pid is taken for the owner


def _say(text: str) -> None:
    try:
        print(f"[kdprune] {text}", file=sys.stderr, flush=True)
    except Exception:  # stderr gone (the parent's terminal closed): nothing to tell
        pass


# ---------------------------------------------------------------- the child process (tracking.tracker._Logger)
_WRITER: Optional[Writer] = None


# MLflow's warnings that do not apply to kdprune's models: they have an explicit tensor signature, so neither
# type hints on ``predict`` nor an input example would infer one
_NOT_APPLICABLE = ("Add type hints to the `predict` method", "An input example was not provided when logging the model")


class _NotApplicable(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(n in text for n in _NOT_APPLICABLE)


def quiet_warnings() -> None:
    """Drop MLflow's warnings in _NOT_APPLICABLE, in this (the child) process. A warnings filter
    cannot: MLflow wraps the call that warns in its own ``catch_warnings`` + ``simplefilter("once")``
    (``filter_user_warnings_once``), which overrides the caller's filters. So warnings go through
    logging (the standard library's ``logging.captureWarnings``), where a filter on ``py.warnings``
    drops those two; every other warning is still printed."""
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addFilter(_NotApplicable())


def serve(parent_pid: int) -> None:
    """The child's start: its Writer, and a watch that ends the child when its parent is gone (a
    killed stage: nothing is left to take the calls, and the executor's pipes would keep it waiting)."""
    global _WRITER
    _WRITER = Writer()
    quiet_warnings()

    def watch() -> None:
        import time

        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def import_mlflow() -> None:
    """MLflow's imports (and its SQL store's), made in the child before the first call needs them."""
    import mlflow  # noqa: F401
    from mlflow.entities import Metric  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401

    if os.environ.get("MLFLOW_TRACKING_URI", "").startswith("sqlite:"):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


def call(op: str, args: tuple) -> Any:
    """A call whose answer is needed (opening the store, creating a run); MLflow's errors come back
    as RuntimeError with its message (MLflow's exception types need not survive pickling)."""
    try:
        return getattr(_WRITER, op)(*args)
    except Exception as e:
        raise RuntimeError(f"{type(e).__name__}: {str(e)[:500]}") from None


def best_effort(key: str, what: str, n: int, uri: str, op: str, args: tuple) -> None:
    _WRITER.best_effort(key, what, n, uri, op, args)


def state() -> dict:
    return _WRITER.state()
