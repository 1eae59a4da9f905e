"""The MLflow writer process: the one place that imports MLflow on behalf of a kdprune process.

``tasks.tracking`` starts it (``python -m tasks.tracking_writer``) and talks to it over its stdin
and stdout: length-prefixed pickled tuples, handled strictly in the order they were sent. Only
requests that carry a request id get an answer (opening the store, creating a run, flushing), so
logging never waits; answers may come back in another order than their requests. Importing MLflow and opening its SQLite store takes 1.5-2 s of CPU; done
here, it overlaps the parent's own start-up on another core instead of stalling it.

Logging is best effort per tracker: the first failed call marks that tracker offline (with the
reason, printed once to stderr), and its later calls are only counted. Every answer carries those
counts, so the parent can say what was not logged.

The process ignores SIGINT, SIGTERM and SIGHUP (sent to the whole process group they reach the
parent, which ends its runs as failed through here) and exits when its stdin closes, after
everything already sent has been handled. Every answer also carries, per tracker, what has been
handled, so that a parent whose writer died can count what was sent but never handled.
"""
from __future__ import annotations

import os
import pickle
import queue
import signal
import struct
import sys
import threading
from typing import Any, BinaryIO, Optional

HEADER = struct.Struct(">I")


def write_frame(f: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(HEADER.pack(len(data)) + data)
    f.flush()


def read_frame(f: BinaryIO) -> Optional[Any]:
    """The next message, or None at end of stream."""
    head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    n = HEADER.unpack(head)[0]
    data = f.read(n)
    if len(data) < n:
        return None
    return pickle.loads(data)


class Writer:
    def __init__(self) -> None:
        self.clients: dict[str, Any] = {}
        self.offline: dict[str, str] = {}  # tracker key -> why it went offline
        self.not_logged: dict[str, dict[str, int]] = {}  # tracker key -> kind -> count
        self.handled: dict[str, dict[str, int]] = {}  # tracker key -> kind -> count (logged or not)
        self.lock = threading.Lock()
        self.client_lock = threading.Lock()

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

    def flush(self) -> None:
        return None

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
              code_paths: list, pip_requirements: list, signature: dict) -> None:
        """Log a pyfunc model from code (``model_code``, a Python file: nothing is pickled) with its
        ``artifacts`` under ``run_id`` and register it as a new version of ``registered_name``."""
        import mlflow
        import mlflow.pyfunc
        from mlflow.models import Model, ModelSignature

        experiment_id = self.client(uri).get_run(run_id).info.experiment_id
        with self.client_lock:  # the fluent URIs and experiment are process-wide
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            # the logged model's experiment (and so its artifact location) is the fluent one, not its run's
            mlflow.set_experiment(experiment_id=experiment_id)
        Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
                  registered_model_name=registered_name, python_model=model_code, artifacts=artifacts,
                  code_paths=code_paths, pip_requirements=pip_requirements,
                  signature=ModelSignature.from_dict(signature), await_registration_for=0)

    def terminate(self, uri: str, run_id: str, status: str, end_ms: Optional[int] = None) -> None:
        self.client(uri).set_terminated(run_id, status, end_time=end_ms)

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
            handled = self.handled.setdefault(key, {})
            handled[what] = handled.get(what, 0) + n


def _say(text: str) -> None:
    try:
        print(f"[kdprune] {text}", file=sys.stderr, flush=True)
    except Exception:  # stderr gone (the parent's terminal closed): nothing to tell
        pass


IMMEDIATE = ("open", "create_run")  # answered at once, beside the logging queue
ORDERED = ("batch", "artifact", "inputs", "experiment_tag", "model", "terminate", "flush")  # in the order sent; a flush is answered when reached


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """Handle messages until ``inp`` ends, then finish what was sent; returns the exit code (1 after
    a message that could not be read). Opening the store and creating runs are answered at once, on
    their own thread, so a new run never waits behind the previous run's queued artifact uploads;
    logging calls and flushes keep their order on another thread. This thread only reads and
    routes, so the parent's writes never block on a full pipe."""
    w = Writer()
    out_lock = threading.Lock()
    ordered: queue.Queue = queue.Queue()
    immediate: queue.Queue = queue.Queue()

    def answer(rid: int, fn, args: tuple) -> None:
        try:
            a = (rid, True, fn(*args))
        except Exception as e:
            a = (rid, False, f"{type(e).__name__}: {str(e)[:500]}")
        with out_lock:  # the state taken here, so that later answers never carry older counts
            try:
                write_frame(out, (*a, w.state()))
            except Exception:  # the parent is gone: keep handling what it sent
                pass

    def in_order() -> None:
        while (msg := ordered.get()) is not None:
            try:
                if msg[0] == "flush":
                    answer(msg[1], w.flush, ())
                else:
                    key, what, n, uri = msg[1:5]
                    w.best_effort(key, what, n, uri, msg[0], msg[5:])
            except Exception as e:  # a malformed message: say so, go on with the next
                _say(f"MLflow writer: {msg[0]!r} failed: {type(e).__name__}: {e}")

    def at_once() -> None:
        while (msg := immediate.get()) is not None:
            try:
                answer(msg[1], getattr(w, msg[0]), msg[2:])
            except Exception as e:
                _say(f"MLflow writer: {msg[0]!r} failed: {type(e).__name__}: {e}")

    workers = [threading.Thread(target=in_order, name="mlflow-writer-log"),
               threading.Thread(target=at_once, name="mlflow-writer-runs")]
    for t in workers:
        t.start()
    code = 0
    try:
        while (msg := read_frame(inp)) is not None:
            if msg[0] in ORDERED:
                ordered.put(msg)
            elif msg[0] in IMMEDIATE:
                immediate.put(msg)
            else:
                _say(f"MLflow writer: unknown message {msg[0]!r} ignored")
    except Exception as e:  # a torn or garbled frame: nothing after it can be trusted
        _say(f"MLflow writer: unreadable message ({type(e).__name__}: {e}); stopping after what came before it")
        code = 1
    finally:
        ordered.put(None)
        immediate.put(None)
        for t in workers:
            t.join()
    return code


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the end of stdin is the signal to stop
        signal.signal(sig, signal.SIG_IGN)
    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything MLflow prints goes to stderr, not into the protocol
    import mlflow  # noqa: F401  (the import the parent no longer waits for)
    from mlflow.entities import Metric  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401

    if os.environ.get("MLFLOW_TRACKING_URI", "").startswith("sqlite:"):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    code = serve(inp, out)
    # everything sent has been handled and each call committed its own writes: skip interpreter
    # teardown (about a second with MLflow and SQLAlchemy loaded), which a caller reading this
    # process's stderr to its end (subprocess.run, a pipe) would otherwise wait for
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
