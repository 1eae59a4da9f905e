"""The MLflow writer process: the one place that imports MLflow on behalf of a kdprune process.

``tasks.tracking`` starts it (``python -m tasks.tracking_writer``) and talks to it over its stdin
and stdout: length-prefixed pickled tuples, handled strictly in the order they were sent. Only
requests that carry a request id get an answer (opening the store, creating a run, flushing), so
logging never waits; answers may come back in another order than their requests. Importing MLflow and opening its SQLite store takes 1.5-2 s of CPU; done
here, it overlaps the parent's own start-up on another core instead of stalling it.

Logging is best effort per tracker: the first failed call marks that tracker offline (with the
reason, printed once to stderr), and its later calls are only counted. Every answer carries those
counts, so the parent can say what was not logged.

The process ignores SIGINT (Ctrl-C reaches the parent, which ends its runs as failed through
here) and exits when its stdin closes, after everything already sent has been handled.
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
        self.lock = threading.Lock()
        self.client_lock = threading.Lock()

    def client(self, uri: str):
        from mlflow.tracking import MlflowClient

        with self.client_lock:
            if uri not in self.clients:
                self.clients[uri] = MlflowClient(tracking_uri=uri)
            return self.clients[uri]

    def failures(self) -> dict[str, tuple[Optional[str], dict[str, int]]]:
        with self.lock:
            return {k: (self.offline.get(k), dict(v)) for k, v in self.not_logged.items()}

    # ------------------------------------------------------------------ requests with an answer
    def open(self, uri: str, experiment: str, artifact_location: Optional[str]) -> str:
        c = self.client(uri)
        exp = c.get_experiment_by_name(experiment)
        if exp is not None:
            return exp.experiment_id
        try:
            return c.create_experiment(experiment, artifact_location=artifact_location)
        except Exception:  # created concurrently by another process
            return c.get_experiment_by_name(experiment).experiment_id

    def create_run(self, uri: str, experiment_id: str, tags: dict, name: str) -> str:
        return self.client(uri).create_run(experiment_id, tags=tags, run_name=name).info.run_id

    def flush(self) -> None:
        return None

    # ------------------------------------------------------------------ best-effort logging
    def batch(self, uri: str, run_id: str, metrics: list, params: list, tags: list) -> None:
        from mlflow.entities import Metric, Param, RunTag

        self.client(uri).log_batch(run_id, [Metric(k, v, ts, step) for k, v, ts, step in metrics],
                                   [Param(k, v) for k, v in params], [RunTag(k, v) for k, v in tags])

    def artifact(self, uri: str, run_id: str, path: str, artifact_path: Optional[str]) -> None:
        self.client(uri).log_artifact(run_id, path, artifact_path)

    def terminate(self, uri: str, run_id: str, status: str) -> None:
        self.client(uri).set_terminated(run_id, status)

    def best_effort(self, key: str, what: str, n: int, uri: str, op: str, args: tuple) -> None:
        if key not in self.offline:
            try:
                getattr(self, op)(uri, *args)
                return
            except Exception as e:
                self.offline[key] = f"{type(e).__name__}: {str(e)[:300]}"
                print(f"[kdprune] MLflow at {uri} failed ({self.offline[key]}); training goes on, results stay on "
                      "disk, further logging is skipped", file=sys.stderr, flush=True)
        with self.lock:
            counts = self.not_logged.setdefault(key, {})
            counts[what] = counts.get(what, 0) + n


IMMEDIATE = ("open", "create_run")  # answered at once, beside the logging queue
ORDERED = ("batch", "artifact", "terminate", "flush")  # in the order sent; a flush is answered when reached


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Handle messages until ``inp`` ends, then finish what was sent. Opening the store and creating
    runs are answered at once, on their own thread, so a new run never waits behind the previous
    run's queued artifact uploads; logging calls and flushes keep their order on another thread.
    This thread only reads and routes, so the parent's writes never block on a full pipe."""
    w = Writer()
    out_lock = threading.Lock()
    ordered: queue.Queue = queue.Queue()
    immediate: queue.Queue = queue.Queue()

    def answer(rid: int, fn, args: tuple) -> None:
        try:
            a = (rid, True, fn(*args), w.failures())
        except Exception as e:
            a = (rid, False, f"{type(e).__name__}: {str(e)[:500]}", w.failures())
        with out_lock:
            write_frame(out, a)

    def in_order() -> None:
        while (msg := ordered.get()) is not None:
            if msg[0] == "flush":
                answer(msg[1], w.flush, ())
            else:
                key, what, n, uri = msg[1:5]
                w.best_effort(key, what, n, uri, msg[0], msg[5:])

    def at_once() -> None:
        while (msg := immediate.get()) is not None:
            answer(msg[1], getattr(w, msg[0]), msg[2:])

    workers = [threading.Thread(target=in_order, name="mlflow-writer-log"),
               threading.Thread(target=at_once, name="mlflow-writer-runs")]
    for t in workers:
        t.start()
    while (msg := read_frame(inp)) is not None:
        if msg[0] in ORDERED:
            ordered.put(msg)
        elif msg[0] in IMMEDIATE:
            immediate.put(msg)
        else:
            print(f"[kdprune] MLflow writer: unknown message {msg[0]!r} ignored", file=sys.stderr, flush=True)
    ordered.put(None)
    immediate.put(None)
    for t in workers:
        t.join()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything MLflow prints goes to stderr, not into the protocol
    import mlflow  # noqa: F401  (the import the parent no longer waits for)
    from mlflow.entities import Metric  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401

    if os.environ.get("MLFLOW_TRACKING_URI", "").startswith("sqlite:"):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    serve(inp, out)
    # everything sent has been handled and each call committed its own writes: skip interpreter
    # teardown (about a second with MLflow and SQLAlchemy loaded), which a caller reading this
    # process's stderr to its end (subprocess.run, a pipe) would otherwise wait for
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
