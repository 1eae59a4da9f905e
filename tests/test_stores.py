"""The lab's stores: a throwaway PostgreSQL cluster, the MLflow and Prefect servers on it with
authentication (bound to 0.0.0.0), the tiny pipeline against them, 16 concurrent writers, killing
the MLflow server and PostgreSQL mid-sweep, a DVC remote round trip, and the SQLite import.

One project for the whole module (the stores take a while to come up on 2 cores); the tests run in
file order and build on each other, as a lab would use them."""
from __future__ import annotations

import base64
import csv
import json
import os
import re
import signal
import socket
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
from servers.stores import postgres_available  # noqa: E402

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

    def sweep_killing(self, kill, overrides: list[str], restart_when: str | None = None
                      ) -> tuple[int, str, str, int]:
        """Run a sweep and call ``kill`` at a fixed point of it: the first student has finished its first
        epoch (its per-epoch checkpoint is on disk) and is still training (its model directory is not
        written yet, checked again after the kill), so its MLflow run exists and no later student's does.
        With ``restart_when``: `stores up` once that text is in the sweep's output, while the sweep goes on.
        Returns the exit code, the output, the student killed under and the sweep's start (ms)."""
        log = self.path / f"sweep-{time.monotonic_ns()}.log"
        ckpts = self.path / ".kdprune" / "checkpoints" / "distill"
        old = set(ckpts.glob("*.pt"))
        args = [sys.executable, "-m", "flows", "sweep", *[x for o in overrides for x in ("-S", o)]]
        started_ms = int(time.time() * 1000)
        with open(log, "w") as out:
            # unbuffered: ``restart_when`` reaches the log when it is printed, not when a buffer fills
            proc = subprocess.Popen(args, cwd=self.path, env={**self.proj.env, **self.env, "PYTHONUNBUFFERED": "1",
                                                                          # every student trains (none reused): the kill lands mid-training
                                                                          "KDPRUNE_RETRAIN": "1"},
                                    stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 300
            while not (new := set(ckpts.glob("*.pt")) - old) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None and new, log.read_text()[-3000:]
            student = max(new).name.rsplit("-", 1)[0]  # <name>-<key>.pt (one student trains at a time on CPU)
            kill()
            # killed while that student trains: it writes its model only once its last epoch is done
            assert not list((self.path / "models").glob(f".students.*.tmp/{student}")), student
            if restart_when is not None:
                while restart_when not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert proc.poll() is None, log.read_text()[-3000:]
                self.flows("stores", "up")
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        return proc.returncode, log.read_text(), student, started_ms


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


def _not_logged(line: str) -> tuple[set[str], dict[str, int]]:
    """The runs named and the other kinds counted in a "not logged to MLflow ...: N runs (a, b), 40 metric
    points, ...; ..." line (the distill stage's warning or the command's last line)."""
    text = line.split("not logged to MLflow", 1)[1].split(": ", 1)[1].split(";")[0]
    m = re.match(r"(\d+) runs \(([^)]*)\)(, )?", text)
    names = set(m.group(2).split(", ")) if m else set()
    assert not m or int(m.group(1)) == len(names), line
    return names, {k: int(n) for n, k in re.findall(r"(\d+) ([a-z ]+)", text[m.end() if m else 0:])}


def _check_a_kill_mid_sweep(lab, rc: int, log: str, student: str, started_ms: int, before: dict,
                            store_back: bool) -> None:
    """What the README's failure table says of a store lost mid-sweep, once `stores up` has brought it back:
    training went on (every student trained and wrote its outputs); a student's run is created by the
    stage's process when the student has trained, so the student training at the kill (``student``) and
    every later one has no run on the server, not even a half-logged one: all are named as not logged,
    with what they would have logged counted (also when the store is back for them, ``store_back``: the
    sweep's tracker stays offline); every run logged before the sweep is intact."""
    assert rc == 0, log[-4000:]

    rows = list(csv.DictReader(open(lab.path / "reports" / "results.csv")))
    students = {r["name"] for r in rows}
    assert len(rows) == 6 and all(float(r["test_acc"]) > 0 for r in rows), rows
    for name in students:
        assert (lab.path / "models" / "students" / name / "model.safetensors").is_file(), name
    stage = [ln for ln in log.splitlines() if "| WARNING |" in ln and "- not logged to MLflow: " in ln]
    assert len(stage) == 1, log[-4000:]  # the distill stage's warning
    named, counts = _not_logged(stage[0])
    last = [ln for ln in log.splitlines() if ln.startswith("kdprune: not logged to MLflow at ")]
    assert len(last) == 1, log[-4000:]  # the command's last word: everything, all stages
    named_all, counts_all = _not_logged(last[0])

    after = lab.all_runs()
    on_server = {r.info.run_name: r for r in after.values()
                 if r.data.tags.get("kdprune.role") == "student" and r.info.start_time >= started_ms}
    assert set(on_server) == set(), set(on_server)  # none half-logged
    assert student in students and named == students, (named, students)  # every student named, none twice
    # the stage after distill: its own tracker opens the store afresh, so logs to it when it is back
    assert named_all == named if store_back else named_all == named | {"evaluate"}, named_all
    assert counts.get("metric points", 0) > 0 and counts.get("artifacts", 0) > 0 and counts.get("run endings", 0) > 0
    assert counts_all["metric points"] >= counts["metric points"]
    what = "postgres_kill" if store_back else "mlflow_kill"
    _figure(f"{what}_runs_named_not_logged", sorted(named_all))
    _figure(f"{what}_not_logged", last[0].split(": ", 2)[-1][:400])
    # every earlier run intact: status, params, tags, latest metrics; each earlier student's metric histories there
    assert set(before) <= set(after)
    c = lab.mlflow()
    histories = 0
    for rid, r in before.items():
        a = after[rid]
        if r.info.status == "RUNNING" and a.info.status == "KILLED" and "kdprune.closed" in a.data.tags:
            # left RUNNING by the earlier kill (store away until after that sweep): closed by this sweep's
            # first command, which found the process that opened it gone
            a.data.tags.pop("kdprune.closed")
            a.info._status = "RUNNING"
        assert (a.info.status, a.data.params, a.data.tags, a.data.metrics) == \
            (r.info.status, r.data.params, r.data.tags, r.data.metrics), r.info.run_name
        if r.data.tags.get("kdprune.role") == "student":
            for key in r.data.metrics:
                assert c.get_metric_history(rid, key), (r.info.run_name, key)
                histories += 1
    _figure(f"{what}_earlier_runs_intact", len(before))
    _figure(f"{what}_earlier_student_histories_checked", histories)
    if not store_back:  # the store came back after the sweep: the next command closes what it left open
        left = [r for r in after.values() if r.info.status == "RUNNING"]
        assert left, "the kill left no RUNNING run: nothing to check"
        lab.flows("init")  # any command that opens the store
        after = lab.all_runs()
    running = [r.info.run_name for r in after.values() if r.info.status == "RUNNING"]
    assert running == [], running  # every run ended, FINISHED, FAILED or KILLED, with the reason tagged
    closed = {r.info.run_name: r.data.tags["kdprune.closed"] for r in after.values() if "kdprune.closed" in r.data.tags}
    assert closed, "no run says it was closed late or for a killed process"
    _figure(f"{what}_runs_closed_late_or_killed", sorted(closed))


def test_killing_the_mlflow_server_mid_sweep(lab):
    before = lab.all_runs()

    def kill_mlflow():
        pid = int((lab.path / ".kdprune" / "mlflow" / "server.pid").read_text())
        os.killpg(pid, signal.SIGKILL)

    t0 = time.perf_counter()
    rc, log, student, started = lab.sweep_killing(kill_mlflow, ["student.kd_weights=[0.9]", "select.fractions=[0.2]"])
    _figure("sweep_with_mlflow_killed_s", round(time.perf_counter() - t0, 1))
    assert "further logging is skipped" in log, log[-4000:]  # the writer said it went offline, once per tracker
    t0 = time.perf_counter()
    lab.flows("stores", "up")
    _figure("stores_up_after_mlflow_kill_s", round(time.perf_counter() - t0, 1))
    _check_a_kill_mid_sweep(lab, rc, log, student, started, before, store_back=False)


def test_killing_postgresql_mid_sweep(lab):
    before = lab.all_runs()

    def kill_postgres():
        pid = int((lab.path / ".kdprune" / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)

    t0 = time.perf_counter()
    # `stores up` once logging has gone offline (the MLflow server answered errors), while the Prefect
    # client retries the Prefect server's 500s: the sweep finishes
    rc, log, student, started = lab.sweep_killing(kill_postgres, ["student.kd_weights=[0.7]", "select.fractions=[0.2]"],
                                                  restart_when="further logging is skipped")
    _figure("sweep_with_postgres_killed_s", round(time.perf_counter() - t0, 1))
    _check_a_kill_mid_sweep(lab, rc, log, student, started, before, store_back=True)
    rows = list(csv.DictReader(open(lab.path / "reports" / "results.csv")))
    assert {r["kd_weight"] for r in rows} >= {"0.7"}
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


def _own_address() -> str:
    import psutil

    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    pytest.skip("this machine has no non-loopback IPv4 address")


def test_a_colleague_logs_through_the_machines_address_with_the_client_file(lab, tmp_path):
    """`stores client --host <this machine's address>` writes a file that works: MLflow answered 403
    "Invalid Host header" to requests addressed to the machine's IP. The artifacts logged through it
    are private on disk (0700 directories, 0600 files), like the rest of .kdprune/."""
    from mlflow.tracking import MlflowClient

    lab.flows("stores", "up")
    ip = _own_address()
    text = lab.flows("stores", "client", "--host", ip).stdout
    env = json.loads(text)["env"]
    assert env["MLFLOW_TRACKING_URI"] == f"http://{ip}:{lab.ports['mlflow']}"
    creds = _basic(f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}")
    assert _status(env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1", creds) == 200
    assert _status(env["PREFECT_API_URL"] + "/flow_runs/filter", _basic(env["PREFECT_API_AUTH_STRING"]),
                   data=b"{}") == 200
    # log as a colleague would: a fresh process with only the client file's settings
    (tmp_path / "note.txt").write_text("from a colleague\n")
    code = ("import json, os, sys\n"
            "env = json.load(open(sys.argv[1]))['env']\n"
            "os.environ.update(env)\n"
            "from mlflow.tracking import MlflowClient\n"
            "c = MlflowClient(env['MLFLOW_TRACKING_URI'])\n"
            "exp = c.get_experiment_by_name('colleague') or c.get_experiment(c.create_experiment('colleague'))\n"
            "r = c.create_run(exp.experiment_id)\n"
            "c.log_metric(r.info.run_id, 'acc', 0.5)\n"
            "c.log_artifact(r.info.run_id, sys.argv[2], 'notes')\n"
            "c.set_terminated(r.info.run_id)\n"
            "print('RUN', r.info.run_id)\n")
    (tmp_path / "client.json").write_text(text)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "client.json"), str(tmp_path / "note.txt")],
                         capture_output=True, text=True, env=clean, timeout=180)
    assert out.returncode == 0 and "RUN " in out.stdout, out.stdout + out.stderr[-3000:]
    run_id = out.stdout.split("RUN ")[1].split()[0]
    c = MlflowClient(f"http://127.0.0.1:{lab.ports['mlflow']}")
    os.environ["MLFLOW_TRACKING_USERNAME"] = env["MLFLOW_TRACKING_USERNAME"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = env["MLFLOW_TRACKING_PASSWORD"]
    assert c.get_run(run_id).data.metrics["acc"] == 0.5
    arts = lab.path / ".kdprune" / "mlflow" / "artifacts"
    note = [f for f in arts.rglob("note.txt")]
    assert note, "the artifact is not in the lab's artifact store"
    for f in [arts, *arts.rglob("*")]:
        if run_id in str(f) or f == arts:
            want = 0o700 if f.is_dir() else 0o600
            assert stat.S_IMODE(f.stat().st_mode) == want, (f, oct(f.stat().st_mode))
