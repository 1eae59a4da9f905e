"""Every MLflow run kdprune opens ends FINISHED, FAILED or KILLED: a SIGKILLed stage's run is closed by
the next command (its process is gone: KILLED, with the reason in the ``kdprune.closed`` tag), and run
endings that a lost store missed are recorded by the same command once the store is back."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.project import REPO, clean_env, free_port, make_project
from tests.conftest import TINY

pytestmark = pytest.mark.integration


def _runs(db: Path) -> list[tuple[str, str, str]]:
    """(run name, status, kdprune.closed tag) of every run in a project's SQLite store."""
    with sqlite3.connect(db) as c:
        rows = c.execute("select r.name, r.status, t.value from runs r left join tags t "
                         "on t.run_uuid = r.run_uuid and t.key = 'kdprune.closed'").fetchall()
    return [(name, status, closed or "") for name, status, closed in rows]


def test_a_sigkilled_stage_leaves_no_running_run_after_the_next_command(tmp_path, prefect_port):
    port, home = prefect_port
    proj = make_project(tmp_path / "kdp", port, TINY)
    proj.env["PREFECT_HOME"] = str(home)
    proj.run(sys.executable, "-m", "flows", "prepare", timeout=300)
    db = proj.path / "mlflow.db"
    stage = subprocess.Popen([sys.executable, "-m", "flows", "teacher"], cwd=proj.path, env=proj.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while ("teacher", "RUNNING", "") not in _runs(db):
            assert stage.poll() is None and time.monotonic() < deadline, "the teacher stage ended before its kill"
            time.sleep(0.2)
        time.sleep(1.0)  # training
        os.killpg(stage.pid, signal.SIGKILL)  # the stage and its children (MLflow's child process)
        stage.wait(timeout=30)
    finally:
        if stage.poll() is None:
            os.killpg(stage.pid, signal.SIGKILL)
    assert ("teacher", "RUNNING", "") in _runs(db)  # what a kill leaves
    proj.run(sys.executable, "-m", "flows", "teacher", timeout=600)
    runs = _runs(db)
    assert [r for r in runs if r[1] == "RUNNING"] == [], runs
    teachers = sorted((s, why) for n, s, why in runs if n == "teacher")
    assert [s for s, _ in teachers] == ["FINISHED", "KILLED"], runs
    why = teachers[1][1]
    assert "no longer runs" in why and f"pid {stage.pid} " in why and "kdprune teacher" in why, why


_CMD = """
import os, sys
from pathlib import Path
from tracking.tracker import Tracker
tr = Tracker(Path(sys.argv[1]))
with tr.run("command", None) as top:
    with tr.run("stage", top) as stage:
        tr.log_metrics(stage, {"acc": 0.5})
        tr.flush()
        print("KILL", flush=True)
        sys.stdin.readline()  # the store is down now
    print("ENDED", flush=True)
    sys.stdin.readline()  # the store is back
"""


def _mlflow_server(root: Path, port: int) -> subprocess.Popen:
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{root / 'store.db'}",
                             "--default-artifact-root", str(root / "artifacts")],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            assert proc.poll() is None, "the MLflow server did not start"
            time.sleep(0.5)
    raise AssertionError("the MLflow server did not answer")


def test_run_endings_missed_while_the_store_was_down_are_recorded_once_it_is_back(tmp_path):
    """A small real setup (a real `mlflow server` on SQLite, killed with SIGKILL and started again, and
    kdprune's Tracker in a separate process): the stage run ends while the server is down, the
    command's run after it is back; both end FINISHED, tagged as recorded late."""
    from mlflow.tracking import MlflowClient

    port = free_port()
    server = _mlflow_server(tmp_path, port)
    env = {**clean_env(free_port()), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    cmd = subprocess.Popen([sys.executable, "-c", _CMD, str(tmp_path)], cwd=REPO, env=env, text=True,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert cmd.stdout.readline().strip() == "KILL", cmd.stderr.read() if cmd.poll() is not None else ""
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        cmd.stdin.write("\n")
        cmd.stdin.flush()
        assert cmd.stdout.readline().strip() == "ENDED"
        server = _mlflow_server(tmp_path, port)
        cmd.stdin.write("\n")
        cmd.stdin.flush()
        _, err = cmd.communicate(timeout=180)
        assert cmd.returncode == 0, err
        c = MlflowClient(f"http://127.0.0.1:{port}")
        runs = {r.info.run_name: r for r in c.search_runs([c.get_experiment_by_name("kdprune").experiment_id])}
        assert {n: r.info.status for n, r in runs.items()} == {"command": "FINISHED", "stage": "FINISHED"}, err
        assert "recorded late" in runs["stage"].data.tags.get("kdprune.closed", ""), runs["stage"].data.tags
    finally:
        if cmd.poll() is None:
            cmd.kill()
        os.killpg(server.pid, signal.SIGKILL)
