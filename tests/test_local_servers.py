"""Each checkout's own local servers: its Prefect server (never another checkout's) and `kdprune ui`'s MLflow."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from bench.project import REPO, clean_env, free_port, make_project


def _post(api: str, path: str) -> list[dict]:
    req = urllib.request.Request(f"{api}/{path}", data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _server_url(proj) -> str:
    port = (proj.path / ".prefect" / "kdprune-server.port").read_text().strip()
    return f"http://127.0.0.1:{port}/api"


def test_two_clones_each_get_their_own_prefect_server_runs_and_deployment(tmp_path):
    """Two checkouts on one machine, each doing what `make setup` does (`flows init`, `flows deploy --paused`)
    and running one stage (prepare: a flow run on its server). The second's stored port is the one the
    first's server holds (as 4200 is when a second clone comes along): it must move to a port of its own."""
    a = make_project(tmp_path / "a" / "kdp", free_port())
    b = make_project(tmp_path / "b" / "kdp", free_port())
    del a.env["KDPRUNE_PREFECT_PORT"], b.env["KDPRUNE_PREFECT_PORT"]  # the default path: the port each one picks
    (a.path / ".prefect").mkdir()
    (a.path / ".prefect" / "kdprune-server.port").write_text(str(free_port()))
    try:
        a.run(sys.executable, "-m", "flows", "deploy", "--paused")
        a_api = _server_url(a)
        (b.path / ".prefect").mkdir()
        (b.path / ".prefect" / "kdprune-server.port").write_text(a_api.split(":")[-1].split("/")[0])
        setup_b = b.run(sys.executable, "-m", "flows", "deploy", "--paused")
        assert "held by the Prefect server of another project" in setup_b.stdout, setup_b.stdout
        b_api = _server_url(b)
        assert b_api != a_api
        for proj, api in ((a, a_api), (b, b_api)):
            with urllib.request.urlopen(api + "/admin/settings", timeout=10) as r:
                assert Path(json.loads(r.read())["home"]).resolve() == (proj.path / ".prefect").resolve()
            proj.run(sys.executable, "-m", "flows", "prepare")
            again = proj.run(sys.executable, "-m", "flows", "deploy", "--paused")  # setup a second time: found
            assert "is registered on" in again.stdout and "starting a local Prefect server" not in again.stdout
            assert not (proj.path / ".prefect" / "kdprune-deployed").exists()
        for proj, api in ((a, a_api), (b, b_api)):
            deps = _post(api, "deployments/filter")
            assert [(d["name"], d["parameters"]["root"]) for d in deps] == [("nightly", str(proj.path))]
            runs = _post(api, "flow_runs/filter")
            assert runs and {r["parameters"].get("root") for r in runs} == {str(proj.path)}, runs
        # the deployment is asked of the server, not of a marker: a fresh server of b's gets it registered again
        b.stop_server()
        (b.path / ".prefect" / "prefect.db").unlink()
        setup_b = b.run(sys.executable, "-m", "flows", "deploy", "--paused")
        assert "deployment 'pipeline/nightly'" in setup_b.stdout and "paused" in setup_b.stdout, setup_b.stdout
        assert [d["name"] for d in _post(_server_url(b), "deployments/filter")] == ["nightly"]
    finally:
        a.stop_server()
        b.stop_server()


def test_a_pinned_prefect_port_held_by_another_project_is_an_error(tmp_path):
    a = make_project(tmp_path / "a" / "kdp", free_port())
    b = make_project(tmp_path / "b" / "kdp", int(a.env["KDPRUNE_PREFECT_PORT"]))
    probe = [sys.executable, "-c", "from servers.runtime import configure_env as c, ensure_prefect_server as e; c(); e()"]
    try:
        a.run(*probe)
        p = b.run(*probe, check=False)
        assert p.returncode != 0 and "held by the Prefect server of another project" in p.stderr, p.stderr[-2000:]
        assert "KDPRUNE_PREFECT_PORT" in p.stderr
    finally:
        a.stop_server()
        b.stop_server()


def _ui_env(tmp_path: Path) -> dict:
    env = clean_env(free_port())
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", PREFECT_API_URL="http://127.0.0.1:9/api")
    return env


def test_kdprune_ui_stopped_with_sigterm_leaves_no_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flows", "ui", "--port", str(port)], cwd=REPO, env=_ui_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    tree = []
    try:
        seen = []
        deadline = time.monotonic() + 180
        for line in proc.stdout:  # until it serves
            seen.append(line)
            if "MLflow UI serving" in line or time.monotonic() > deadline:
                break
        assert "MLflow UI serving" in "".join(seen), "".join(seen)
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert tree and not _port_free(port)
        proc.send_signal(signal.SIGTERM)  # to the command alone, as a supervisor or `kill` would
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(tree, timeout=15)
        assert not alive, [p.cmdline() for p in alive]
        assert _port_free(port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for child in tree:  # a server the command left behind (what this test is there to catch)
            with contextlib.suppress(psutil.Error):
                child.kill()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT do not count
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_kdprune_ui_refuses_a_taken_port_within_5_s(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "flows", "ui", "--port", str(port)], cwd=REPO, env=_ui_env(tmp_path),
                           capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
    assert p.returncode != 0 and f"port {port} on 127.0.0.1 is already in use" in p.stderr, p.stderr[-2000:]
    assert "--port N" in p.stderr and "http://" not in p.stdout  # no link to whatever holds it
    assert took < 5, took


def test_kdprune_ui_moves_off_a_taken_default_port_and_says_so(monkeypatch):
    from cli import tools

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        monkeypatch.setattr(tools, "DEFAULT_UI_PORT", held.getsockname()[1])
        port, note = tools.ui_port(None)
        assert port != tools.DEFAULT_UI_PORT and f"served on {port} instead" in note
        with pytest.raises(RuntimeError, match="already in use"):
            tools.ui_port(tools.DEFAULT_UI_PORT)


def test_a_killed_server_is_restarted_on_its_port_though_its_connections_linger(tmp_path):
    """After a SIGKILL the port has connections in TIME_WAIT: the restart must not read that as taken."""
    proj_env = {**clean_env(free_port()), "PREFECT_HOME": str(tmp_path / "home"), "KDPRUNE_ROOT": str(REPO)}
    probe = [sys.executable, "-c", "from servers.runtime import configure_env as c, ensure_prefect_server as e, server_home as h; "
             "c(); u = e(); [h(u) for _ in range(5)]; print(u)"]
    first = subprocess.run(probe, env=proj_env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr[-2000:]
    pid_file = tmp_path / "home" / "kdprune-server.pid"
    try:
        os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        time.sleep(1)
        again = subprocess.run(probe, env=proj_env, cwd=REPO, capture_output=True, text=True, timeout=180)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "starting a local Prefect server" in again.stdout
        assert again.stdout.strip().splitlines()[-1] == first.stdout.strip().splitlines()[-1]  # the same port
    finally:
        subprocess.run([sys.executable, "-m", "flows", "stop"], env=proj_env, cwd=REPO, capture_output=True,
                       timeout=60)
