"""Process environment for every entrypoint: project root, local servers on loopback, defaults.

Every entrypoint calls :func:`configure_env` before Prefect or MLflow is imported, so the defaults
below are in place when those libraries read their settings. Every default yields to a value already set in the
environment: ``PREFECT_API_URL`` and ``MLFLOW_TRACKING_URI`` point at remote servers unchanged.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DEFAULT_PREFECT_PORT = 4200  # the first choice; a port another project's server holds is never shared
SERVER_PID_FILE = "kdprune-server.pid"
SERVER_PORT_FILE = "kdprune-server.port"  # in PREFECT_HOME: the port this project's server listens on
_STARTS_LOCAL_PREFECT = "KDPRUNE_LOCAL_PREFECT"
_PINNED_PORT = "KDPRUNE_PREFECT_PORT"  # a port the user (or a test) chose: used as is, never moved


def project_root() -> Path:
    """The project directory: $KDPRUNE_ROOT, else the nearest parent of the cwd holding params.yaml."""
    env = os.environ.get("KDPRUNE_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "params.yaml").exists() and (d / "dvc.yaml").exists():
            return d
    return here


STORES_FILE = ".kdprune/stores.json"  # the lab's stores (servers/stores.py): URIs and client credentials
_STORES_LOADED = "KDPRUNE_STORES_LOADED"


def configure_env() -> None:
    root = project_root()
    env = os.environ
    _load_stores_file(root, env)
    env.setdefault("PREFECT_HOME", str(root / ".prefect"))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
    env.setdefault("PREFECT_SERVER_API_HOST", "127.0.0.1")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    env.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    # fail fast when a tracking server is gone (MLflow's default retries take minutes)
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    env.setdefault("GIT_PYTHON_REFRESH", "quiet")
    quiet_libraries(env)
    if "PREFECT_API_URL" not in env:
        # the project's own server: the port it was started on (kept in its PREFECT_HOME), else 4200;
        # ensure_prefect_server moves to a free port when another project's server holds this one
        port = int(env.get(_PINNED_PORT) or _stored_port(Path(env["PREFECT_HOME"])) or DEFAULT_PREFECT_PORT)
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        env[_STARTS_LOCAL_PREFECT] = "1"


def quiet_libraries(env) -> None:
    """The libraries' own switches for what they print that tells a user nothing (one line per event;
    nothing after the report). Each a default: a variable already set wins, e.g. ``RAY_LOG_TO_DRIVER=1``
    to see the workers' output again while debugging.

    - ``RAY_LOG_TO_DRIVER=0``: Ray copies every worker's output to the driver ("(train-student pid=N)"
      lines, deduplication notes, some arriving after the report). The workers' task logs are the
      Prefect task runs' (in the Prefect UI), the students' lines are the stage's own, and a task's
      error comes back as its exception; Ray keeps the workers' output in its session logs
      (/tmp/ray/session_latest/logs).
    - ``MLFLOW_LOGGING_LEVEL=WARNING``: MLflow's info lines (creating the store's tables, registering
      a model version) are what kdprune says in its own words; its warnings still show.
    - ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false``: MLflow drew a "Downloading artifacts" bar per file
      while registering the teacher (copies between local folders, a fraction of a second each).
    - ``DO_NOT_TRACK=1``: the clients' anonymous usage reports (Prefect's SDK telemetry and its notice,
      MLflow's) are off, as the servers' already are (PREFECT_SERVER_ANALYTICS_ENABLED, DVC_NO_ANALYTICS).
    """
    env.setdefault("RAY_LOG_TO_DRIVER", "0")
    env.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    env.setdefault("DO_NOT_TRACK", "1")


def _stored_port(home: Path) -> int | None:
    try:
        return int((home / SERVER_PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _load_stores_file(root: Path, env) -> None:
    """The client settings `make stores-up` wrote (or a colleague's copy; ``KDPRUNE_STORES`` names
    another file): each one a default, so a variable already set still wins."""
    path = Path(env.get("KDPRUNE_STORES") or root / STORES_FILE)
    if not path.is_file():
        return
    try:
        settings = json.loads(path.read_text())["env"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"kdprune: cannot read the stores file {path} ({e}); run `make stores-up` to rewrite it, "
                         "or remove it to use the project's local stores") from None
    for k, v in settings.items():
        env.setdefault(k, str(v))
    env[_STORES_LOADED] = str(path)


def stores_hint() -> str:
    """How to bring back a server named in the stores file, or '' when no stores file is in use."""
    path = os.environ.get(_STORES_LOADED)
    return (f" (set by {path}: bring the lab's stores up with `make stores-up`, or remove that file to use "
            "the project's local stores)") if path else ""


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def server_home(api_url: str, timeout: float = 2.0) -> Path | None:
    """The PREFECT_HOME of the Prefect server at ``api_url`` (its ``/admin/settings``), or None when
    it does not say (not a Prefect server, or none answers)."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/admin/settings", timeout=timeout) as r:
            return Path(json.loads(r.read())["home"]).resolve()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now (as servers do, with SO_REUSEADDR: the
    TIME_WAIT connections of a server just stopped do not hold the port)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_prefect_server(timeout_s: float = 90.0) -> str:
    """Make sure the Prefect API answers; start the project's local server on loopback if needed.

    Only the default local server is ever started, and only a server whose PREFECT_HOME is this
    project's is reused: one of another checkout on the same port is left alone and this project's
    own starts on a free port, kept in PREFECT_HOME for every later stage (with KDPRUNE_PREFECT_PORT
    set, that port is used as is, or it is an error). A user-set PREFECT_API_URL that does not answer
    is an error naming the URL. Sets PREFECT_API_URL for this process and its children; call it
    before Prefect is imported.
    """
    url = os.environ["PREFECT_API_URL"]
    if os.environ.get(_STARTS_LOCAL_PREFECT) != "1":
        if healthy(url):
            return url
        raise RuntimeError(
            f"the Prefect API at PREFECT_API_URL={url} does not answer{stores_hint()}; start that server, "
            "or unset PREFECT_API_URL to let kdprune start a local one on 127.0.0.1"
        )
    home = Path(os.environ["PREFECT_HOME"]).resolve()
    if healthy(url) and server_home(url) == home:
        return url
    home.mkdir(parents=True, exist_ok=True)
    pinned = os.environ.get(_PINNED_PORT)
    with open(home / "kdprune-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; the others then find it healthy
        port = _stored_port(home) or int(url.split(":")[-1].split("/")[0])
        if pinned:
            port = int(pinned)
        url = os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        if healthy(url) and server_home(url) == home:
            return url
        pid_file = home / SERVER_PID_FILE
        if pid_file.exists():
            if pid_alive(pid_file):
                # a server of this home is up but not answering yet (still starting): give it time
                if _wait_healthy(url, timeout_s) and server_home(url) == home:
                    return url
                raise RuntimeError(f"the local Prefect server (pid in {pid_file}) does not answer at {url}; "
                                   "stop it with `make stop` and run again")
            pid_file.unlink()  # left behind by a server that was killed
        if not port_free(port):
            other = server_home(url)
            held = (f"the Prefect server of another project (PREFECT_HOME={other})" if other
                    else "another program")
            if pinned:
                raise RuntimeError(f"port {port} (KDPRUNE_PREFECT_PORT) is held by {held}; set KDPRUNE_PREFECT_PORT "
                                   "to a free port, or unset it to let kdprune pick one")
            port = free_port()
            print(f"[kdprune] 127.0.0.1:{url.split(':')[-1].split('/')[0]} is held by {held}: this project's "
                  f"Prefect server gets port {port}", flush=True)
            url = os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
        print(f"[kdprune] starting a local Prefect server on 127.0.0.1:{port} (PREFECT_HOME={home}, "
              f"log {home / 'server.log'})", flush=True)
        start_detached([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], home / "server.log",
                       pid_file, url, {**os.environ, "PREFECT_HOME": str(home)}, timeout_s, "the local Prefect server")
        if not pinned:
            (home / SERVER_PORT_FILE).write_text(f"{port}\n")  # under the lock: later stages read it
        return url


def deployment_exists(name: str, api_url: str | None = None) -> bool:
    """Whether the deployment ``flow/deployment`` is registered on the Prefect server at ``api_url``
    (default PREFECT_API_URL): what `make setup` checks instead of trusting a marker file."""
    url = (api_url or os.environ["PREFECT_API_URL"]).rstrip("/")
    req = urllib.request.Request(f"{url}/deployments/name/{urllib.parse.quote(name)}")
    for k, v in _auth_header().items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status == 200
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise RuntimeError(f"the Prefect API at {url} answered {e.code} for deployment {name}") from None


def _auth_header() -> dict:
    import base64

    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}


def start_detached(cmd: list[str], log_path: Path, pid_file: Path, health_url: str, env: dict,
                   timeout_s: float, what: str) -> None:
    """Start a server in its own session, logging to ``log_path``, its pid in ``pid_file``, and wait
    until ``health_url`` answers 200; raises RuntimeError naming the log if it exits or stays silent."""
    # Prefect's own --background mode pipes the server's output to a parent that exits at once;
    # run it in the foreground in its own session instead, logging to a file.
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(health_url):
            return
        if proc.poll() is not None:
            pid_file.unlink(missing_ok=True)
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting; see {log_path}")
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer at {health_url} within {timeout_s:.0f}s; see {log_path}")


def pid_alive(pid_file: Path) -> bool:
    """Whether the pid in ``pid_file`` is a live process (a zombie counts as dead)."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (ValueError, OSError):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _wait_healthy(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(url):
            return True
        time.sleep(0.5)
    return False


def stop_prefect_server(timeout_s: float = 20.0) -> bool:
    """Stop the local server this project started (its process group); True if one was running."""
    return stop_detached(Path(os.environ["PREFECT_HOME"]) / SERVER_PID_FILE, timeout_s)


def stop_detached(pid_file: Path, timeout_s: float = 20.0) -> bool:
    """Stop a server started by ``start_detached`` (its process group); True if one was running."""
    if not pid_alive(pid_file):
        pid_file.unlink(missing_ok=True)
        return False
    pid = int(pid_file.read_text().strip())
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and pid_alive(pid_file):
            time.sleep(0.2)
        if pid_alive(pid_file):
            os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)
    return True
