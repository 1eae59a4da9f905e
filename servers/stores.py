"""A lab's stores: a PostgreSQL cluster of the project's own, the MLflow tracking server and the
Prefect server on it, and a DVC remote.

``stores up`` (``make stores-up``) creates, once, a cluster under ``.kdprune/postgres`` with the
system's PostgreSQL tools (``initdb``, ``pg_ctl``), its superuser password generated and kept in a
file of mode 0600; it starts the cluster on 127.0.0.1 (only the two servers talk to it), then
``mlflow server`` (PostgreSQL backend store, artifacts served by the server from
``.kdprune/mlflow/artifacts``) and ``prefect server start`` (``PREFECT_API_DATABASE_CONNECTION_URL``)
as detached processes with pid files, like the embedded local Prefect server (``servers.runtime``).
Finally it writes ``.kdprune/stores.json`` (mode 0600): the client settings (``MLFLOW_TRACKING_URI``,
``PREFECT_API_URL`` and, with authentication, the credentials), which ``servers.runtime.configure_env``
reads at every entrypoint's start, so ``make run``, ``dvc repro`` and any worker that imports
``tasks`` use these servers with no other step. A variable already set in the environment wins.

The servers bind 127.0.0.1 unless ``KDPRUNE_BIND`` names another interface, which is refused unless
authentication is on (``KDPRUNE_AUTH=1``): MLflow's ``basic-auth`` app (its admin user and the auth
tables in the same cluster) and Prefect's API auth string; credentials are generated once and kept
0600 in ``.kdprune/stores/server.json``. Ports: ``KDPRUNE_PG_PORT`` (15432), ``KDPRUNE_MLFLOW_PORT``
(5000), ``KDPRUNE_PREFECT_PORT`` (4200), fixed when the stores are first created.

Secrets never appear on a command line (other users can read those): the servers get their database
URIs through their environment.
"""
from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from servers.runtime import STORES_FILE, healthy, pid_alive, start_detached, stop_detached, stop_prefect_server

STATE = ".kdprune"
PG_USER = "kdprune"  # the cluster's superuser (a database role, not an OS account)
DATABASES = ("mlflow", "mlflow_auth", "prefect")
DEFAULT_PORTS = {"pg": 15432, "mlflow": 5000, "prefect": 4200}
PORT_ENV = {"pg": "KDPRUNE_PG_PORT", "mlflow": "KDPRUNE_MLFLOW_PORT", "prefect": "KDPRUNE_PREFECT_PORT"}
LOOPBACK = "127.0.0.1"


class StoresError(RuntimeError):
    """The lab's stores cannot be brought up or used; the message says what to do."""


# ---------------------------------------------------------------- files

class Paths:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.state = self.root / STATE
        self.pg = self.state / "postgres"            # the cluster (data/), its log, the password
        self.pg_data = self.pg / "data"
        self.pg_log = self.pg / "postgres.log"
        self.pg_password = self.pg / "password"
        self.mlflow = self.state / "mlflow"          # artifacts/, server.log, server.pid, auth.ini
        self.prefect = self.state / "prefect"        # the Prefect server's PREFECT_HOME
        self.server = self.state / "stores" / "server.json"  # ports, bind, credentials (0600)
        self.client = self.root / STORES_FILE        # what every entrypoint reads (0600)


def _write_private(path: Path, text: str) -> None:
    """Atomically write ``text`` to ``path`` with mode 0600 (created so, never readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_config(p: Paths) -> dict:
    """The stores' settings, created on first use (ports from the environment, secrets generated)."""
    if p.server.exists():
        cfg = json.loads(p.server.read_text())
    else:
        cfg = {"ports": {k: int(os.environ.get(PORT_ENV[k], v)) for k, v in DEFAULT_PORTS.items()},
               "pg_password": secrets.token_urlsafe(24),
               "mlflow_user": "kdprune", "mlflow_password": secrets.token_urlsafe(24),
               "prefect_auth": f"kdprune:{secrets.token_urlsafe(24)}"}
        _write_private(p.server, json.dumps(cfg, indent=2) + "\n")
    if "flask_secret" not in cfg:  # the auth app's CSRF key: the same across its workers and restarts
        cfg["flask_secret"] = secrets.token_urlsafe(32)
        _write_private(p.server, json.dumps(cfg, indent=2) + "\n")
    os.chmod(p.server.parent, 0o700)
    return cfg


def _auth_wanted() -> bool:
    v = os.environ.get("KDPRUNE_AUTH", "").strip().lower()
    if v in ("", "0", "false", "no", "off"):
        return False
    if v in ("1", "true", "yes", "on"):
        return True
    raise StoresError(f"KDPRUNE_AUTH={v!r}: use 1 (authentication on) or 0 (off)")


def _bind() -> str:
    bind = os.environ.get("KDPRUNE_BIND", LOOPBACK).strip() or LOOPBACK
    if not _is_loopback(bind) and not _auth_wanted():
        raise StoresError(
            f"KDPRUNE_BIND={bind} would expose the MLflow and Prefect servers beyond this machine without "
            "authentication; set KDPRUNE_AUTH=1 as well (MLflow basic auth + Prefect API auth string, credentials "
            f"generated into {STATE}/stores/server.json), or leave KDPRUNE_BIND unset to bind {LOOPBACK}")
    return bind


def _client_host(bind: str) -> str:
    return LOOPBACK if bind in ("0.0.0.0", "::") or _is_loopback(bind) else bind


def client_settings(cfg: dict, host: str, auth: bool) -> dict:
    """The environment a client of these stores needs (URIs, and credentials when auth is on)."""
    env = {"MLFLOW_TRACKING_URI": f"http://{host}:{cfg['ports']['mlflow']}",
           "PREFECT_API_URL": f"http://{host}:{cfg['ports']['prefect']}/api",
           # a 500 is the Prefect server's database restarting: retry it (2, 4, ... 32 s) like a 503
           "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500,502,503"}
    if auth:
        env.update(MLFLOW_TRACKING_USERNAME=cfg["mlflow_user"], MLFLOW_TRACKING_PASSWORD=cfg["mlflow_password"],
                   PREFECT_API_AUTH_STRING=cfg["prefect_auth"])
    return env


# ---------------------------------------------------------------- PostgreSQL

def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):  # Debian keeps them off PATH
        if (d / name).is_file():
            return str(d / name)
    raise StoresError(f"PostgreSQL's `{name}` was not found: install the PostgreSQL server (Debian: "
                      "`apt-get install postgresql`) or put its bin directory on PATH")


def postgres_available() -> bool:
    try:
        _pg_bin("initdb"), _pg_bin("pg_ctl")
        return True
    except StoresError:
        return False


def _pg_account() -> Optional[str]:
    """The OS account that runs PostgreSQL: None for the current one; as root (which PostgreSQL refuses)
    ``KDPRUNE_PG_OS_USER``, default the ``postgres`` account Debian's package creates."""
    if os.geteuid() != 0:
        return None
    import pwd

    name = os.environ.get("KDPRUNE_PG_OS_USER", "postgres")
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise StoresError(f"PostgreSQL refuses to run as root and there is no OS account {name!r} to run it as; "
                          "create one (Debian's postgresql package creates `postgres`) or name another with "
                          "KDPRUNE_PG_OS_USER") from None
    return name


def _pg_run(p: Paths, args: list[str], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    account = _pg_account()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8")
    kw = {}
    if account:
        import pwd

        pw = pwd.getpwnam(account)
        kw = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        env["HOME"] = str(p.pg)
    r = subprocess.run(args, env=env, cwd=p.pg, capture_output=True, text=True, timeout=timeout,
                       start_new_session=True, **kw)
    if check and r.returncode != 0:
        raise StoresError(f"`{' '.join(Path(a).name if i == 0 else a for i, a in enumerate(args))}` failed "
                          f"(exit {r.returncode}): {(r.stderr or r.stdout).strip()[-1500:]}; log: {p.pg_log}")
    return r


def _pg_prepare_dir(p: Paths) -> None:
    p.pg.mkdir(parents=True, exist_ok=True)
    account = _pg_account()
    if account:
        import pwd

        pw = pwd.getpwnam(account)
        os.chown(p.pg, pw.pw_uid, pw.pw_gid)
        # the account must reach the directory through every parent
        r = subprocess.run(["test", "-w", str(p.pg)], user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        if r.returncode != 0:
            raise StoresError(f"PostgreSQL runs as the OS account {account!r} (not as root), which cannot reach {p.pg}: "
                              "a parent directory is not searchable by others (e.g. mode 0700); "
                              "`chmod o+x` it, or move the project")
    os.chmod(p.pg, 0o700)


def _pg_init(p: Paths, cfg: dict) -> None:
    if (p.pg_data / "PG_VERSION").exists():
        return
    _pg_prepare_dir(p)
    if p.pg_data.exists():  # a previous initdb was interrupted
        shutil.rmtree(p.pg_data)
    _write_private(p.pg_password, cfg["pg_password"] + "\n")
    pwfile = p.pg / ".initdb-pw"
    _write_private(pwfile, cfg["pg_password"] + "\n")
    account = _pg_account()
    if account:
        import pwd

        os.chown(pwfile, pwd.getpwnam(account).pw_uid, -1)
    try:
        print(f"[kdprune] creating a PostgreSQL cluster in {p.pg_data}", flush=True)
        _pg_run(p, [_pg_bin("initdb"), "-D", str(p.pg_data), "-U", PG_USER, "--auth=scram-sha-256",
                    f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C.UTF-8"])
    finally:
        pwfile.unlink(missing_ok=True)


def _pg_running(p: Paths) -> bool:
    return (p.pg_data / "PG_VERSION").exists() and \
        _pg_run(p, [_pg_bin("pg_ctl"), "-D", str(p.pg_data), "status"], check=False).returncode == 0


def _pg_start(p: Paths, cfg: dict) -> None:
    if _pg_running(p):
        return
    port = cfg["ports"]["pg"]
    _check_port_free(LOOPBACK, port, "PostgreSQL", "KDPRUNE_PG_PORT")
    print(f"[kdprune] starting PostgreSQL on {LOOPBACK}:{port} (log {p.pg_log})", flush=True)
    opts = f"-c listen_addresses={LOOPBACK} -p {port} -c unix_socket_directories='' -c max_connections=200"
    _pg_run(p, [_pg_bin("pg_ctl"), "-D", str(p.pg_data), "-l", str(p.pg_log), "-w", "-t", "60", "-o", opts, "start"])


def _pg_stop(p: Paths) -> bool:
    if not _pg_running(p):
        return False
    _pg_run(p, [_pg_bin("pg_ctl"), "-D", str(p.pg_data), "-w", "-t", "60", "-m", "fast", "stop"])
    return True


def _pg_url(cfg: dict, db: str, driver: str = "postgresql+psycopg2") -> str:
    return f"{driver}://{PG_USER}:{cfg['pg_password']}@{LOOPBACK}:{cfg['ports']['pg']}/{db}"


def _pg_create_databases(cfg: dict) -> None:
    import psycopg2

    conn = psycopg2.connect(host=LOOPBACK, port=cfg["ports"]["pg"], user=PG_USER, password=cfg["pg_password"],
                            dbname="postgres", connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for db in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{db}"')
    finally:
        conn.close()


def _check_port_free(host: str, port: int, what: str, env_name: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host not in ("0.0.0.0", "::") else "0.0.0.0", port))
        except OSError as e:
            raise StoresError(f"{what} cannot listen on {host}:{port} ({e.strerror}): another program holds that "
                              f"port; stop it, or remove {STATE}/stores/server.json and choose another port with "
                              f"{env_name}") from None


# ---------------------------------------------------------------- MLflow and Prefect servers

def _mlflow_url(cfg: dict) -> str:
    return f"http://{LOOPBACK}:{cfg['ports']['mlflow']}"


def _prefect_api(cfg: dict) -> str:
    return f"http://{LOOPBACK}:{cfg['ports']['prefect']}/api"


# a server's files (MLflow's artifacts, Prefect's home) created 0600/0700: the command runs under umask 077
# (``exec`` keeps the pid that start_detached records)
_PRIVATE = ["/bin/sh", "-c", 'umask 077 && exec "$@"', "kdprune-private"]


def _start(cmd: list[str], log: Path, pid_file: Path, url: str, env: dict, what: str) -> None:
    """``start_detached``, and a server that did not come up is stopped again (no stray process)."""
    try:
        start_detached(cmd, log, pid_file, url, _server_env(env), 180, what)
    except RuntimeError as e:
        stop_detached(pid_file)
        last = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip() and not ln.startswith(" ")]
        raise StoresError(f"{e}; its last lines:\n  " + "\n  ".join(last[-4:])) from None


def _server_env(extra: dict) -> dict:
    """The servers' environment: this one without client settings that would confuse them, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "PREFECT_API_", "PREFECT_SERVER_", "PREFECT_HOME"))}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    env.update(extra)
    return env


def _machine_addresses() -> list[str]:
    """This machine's IPv4 addresses (every interface): what a server bound to 0.0.0.0 is reached at."""
    import psutil

    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family == socket.AF_INET]


def _allowed_hosts(bind: str, client_hosts: list[str] = ()) -> str:
    """The Host headers MLflow accepts (its DNS-rebinding guard answers 403 "Invalid Host header" to
    any other): loopback, the bind address (with 0.0.0.0, every address of this machine), the host
    names of this machine, each ``--host`` a client file was written for (``stores client``) and
    ``KDPRUNE_ALLOWED_HOSTS`` (comma-separated), each with any port."""
    hosts = ["localhost", LOOPBACK, bind, socket.gethostname(), socket.getfqdn()]
    if bind in ("0.0.0.0", "::"):
        hosts += _machine_addresses()
    hosts += list(client_hosts)
    hosts += [h for h in os.environ.get("KDPRUNE_ALLOWED_HOSTS", "").split(",") if h.strip()]
    out: list[str] = []
    for h in dict.fromkeys(h.strip() for h in hosts if h and h not in ("0.0.0.0", "::")):
        out += [h, f"{h}:*"]
    return ",".join(out)


def _needs_start(pid_file: Path, url: str, bind: str, port: int, what: str, port_var: str) -> bool:
    """False when the server of ``pid_file`` is alive and answers at ``url``; otherwise clear what is
    left of it and check its port is free (or raise naming ``port_var``): it needs starting."""
    if pid_alive(pid_file) and healthy(url):
        return False
    stop_detached(pid_file)
    _check_port_free(bind, port, what, port_var)
    return True


def _start_mlflow(p: Paths, cfg: dict, bind: str, auth: bool) -> None:
    pid_file, port = p.mlflow / "server.pid", cfg["ports"]["mlflow"]
    if not _needs_start(pid_file, _mlflow_url(cfg), bind, port, "the MLflow server", "KDPRUNE_MLFLOW_PORT"):
        return
    (p.mlflow / "artifacts").mkdir(parents=True, exist_ok=True)
    for d in (p.mlflow, p.mlflow / "artifacts"):  # private like the rest of .kdprune/ (older stores: 0755)
        os.chmod(d, 0o700)
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    cmd = _PRIVATE + [mlflow, "server", "--host", bind, "--port", str(port),
           "--workers", os.environ.get("KDPRUNE_MLFLOW_WORKERS", "4"),
           "--artifacts-destination", str((p.mlflow / "artifacts").resolve()), "--serve-artifacts"]
    env = {"MLFLOW_BACKEND_STORE_URI": _pg_url(cfg, "mlflow")}
    if not _is_loopback(bind):
        cmd += ["--allowed-hosts", _allowed_hosts(bind, cfg.get("client_hosts", []))]
    if auth:
        ini = p.mlflow / "auth.ini"
        _write_private(ini, "[mlflow]\ndefault_permission = READ\n"
                            f"database_uri = {_pg_url(cfg, 'mlflow_auth')}\n"
                            f"admin_username = {cfg['mlflow_user']}\nadmin_password = {cfg['mlflow_password']}\n"
                            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                            # a password hash per request is the server's main cost under many writers:
                            # check a user's password once a minute per worker instead
                            "auth_cache_ttl_seconds = 60\n")
        cmd += ["--app-name", "basic-auth"]
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_FLASK_SERVER_SECRET_KEY=cfg["flask_secret"])
    print(f"[kdprune] starting the MLflow server on {bind}:{port}{' with basic auth' if auth else ''} "
          f"(log {p.mlflow / 'server.log'})", flush=True)
    _start(cmd, p.mlflow / "server.log", pid_file, _mlflow_url(cfg), env, "the MLflow server")


def _start_prefect(p: Paths, cfg: dict, bind: str, auth: bool) -> None:
    pid_file, port = p.prefect / "server.pid", cfg["ports"]["prefect"]
    if not _needs_start(pid_file, _prefect_api(cfg), bind, port, "the Prefect server", "KDPRUNE_PREFECT_PORT"):
        return
    p.prefect.mkdir(parents=True, exist_ok=True)
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    env = {"PREFECT_HOME": str(p.prefect), "PREFECT_API_DATABASE_CONNECTION_URL": _pg_url(cfg, "prefect",
                                                                                          "postgresql+asyncpg")}
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = cfg["prefect_auth"]
    print(f"[kdprune] starting the Prefect server on {bind}:{port}{' with an API auth string' if auth else ''} "
          f"(log {p.prefect / 'server.log'})", flush=True)
    os.chmod(p.prefect, 0o700)
    _start(_PRIVATE + [prefect, "server", "start", "--host", bind, "--port", str(port)], p.prefect / "server.log", pid_file,
           _prefect_api(cfg), env, "the Prefect server")


def _check_auth(url: str, what: str, creds: Optional[tuple[str, str]]) -> None:
    """With auth on, a request without credentials must get 401 and one with them must not."""
    def status(headers: dict) -> int:
        try:  # a fresh server's first requests (workers connecting, password hashing) can be slow
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=90) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError as e:
            raise StoresError(f"{what} did not answer {url} ({e})") from None
    if creds is None:
        return
    anon = status({})
    if anon != 401:
        raise StoresError(f"{what} answered {anon} to a request without credentials at {url} (expected 401); "
                          "authentication is not on: run `make stores-down` then `make stores-up` again")
    token = base64.b64encode(":".join(creds).encode()).decode()
    authed = status({"Authorization": f"Basic {token}"})
    if authed >= 400:
        raise StoresError(f"{what} refused the stored credentials at {url} (HTTP {authed})")


# ---------------------------------------------------------------- commands

def up(root: Path) -> dict:
    """Bring the stores up (creating them on first use) and write the client file; returns its settings."""
    p = Paths(root)
    bind, auth = _bind(), _auth_wanted()
    _pg_bin("initdb"), _pg_bin("pg_ctl")  # say what is missing before creating anything
    p.state.mkdir(parents=True, exist_ok=True)
    cfg = _server_config(p)
    # the embedded local Prefect server of this project would hold the port
    if cfg["ports"]["prefect"] == int(os.environ.get("KDPRUNE_PREFECT_PORT", DEFAULT_PORTS["prefect"])):
        stop_prefect_server()
    _pg_init(p, cfg)
    _pg_start(p, cfg)
    _pg_create_databases(cfg)
    running_auth = cfg.get("running_auth")
    if running_auth is not None and running_auth != auth or cfg.get("running_bind", bind) != bind:
        stop_detached(p.mlflow / "server.pid")  # started with other settings: restart with these
        stop_detached(p.prefect / "server.pid")
    _start_mlflow(p, cfg, bind, auth)
    _start_prefect(p, cfg, bind, auth)
    cfg.update(running_auth=auth, running_bind=bind)
    _write_private(p.server, json.dumps(cfg, indent=2) + "\n")
    if auth:
        _check_auth(f"http://{LOOPBACK}:{cfg['ports']['mlflow']}/api/2.0/mlflow/experiments/search?max_results=1",
                    "the MLflow server", (cfg["mlflow_user"], cfg["mlflow_password"]))
        _check_auth(f"http://{LOOPBACK}:{cfg['ports']['prefect']}/api/admin/version", "the Prefect server",
                    tuple(cfg["prefect_auth"].split(":", 1)))
    settings = client_settings(cfg, _client_host(bind), auth)
    _write_private(p.client, json.dumps({"env": settings}, indent=2, sort_keys=True) + "\n")
    return settings


def down(root: Path) -> list[str]:
    """Stop the servers, then PostgreSQL; the data and the client file stay. Returns what was stopped."""
    p = Paths(root)
    stopped = []
    if stop_detached(p.prefect / "server.pid"):
        stopped.append("Prefect server")
    if stop_detached(p.mlflow / "server.pid"):
        stopped.append("MLflow server")
    if (p.pg_data / "PG_VERSION").exists() and postgres_available() and _pg_stop(p):
        stopped.append("PostgreSQL")
    return stopped


def status(root: Path) -> dict:
    p = Paths(root)
    if not p.server.exists():
        return {"created": False}
    cfg = json.loads(p.server.read_text())
    return {"created": True, "postgres": postgres_available() and _pg_running(p),
            "mlflow": healthy(_mlflow_url(cfg)), "prefect": healthy(_prefect_api(cfg)),
            "auth": cfg.get("running_auth"), "bind": cfg.get("running_bind")}


def colleague_file(root: Path, host: str) -> str:
    """The client file for another machine: the same settings with ``host`` in the URIs. ``host`` joins
    the MLflow server's allowed hosts (kept in server.json); a running server bound beyond loopback
    that does not know it yet is restarted with it, so the file works as written."""
    p = Paths(root)
    if not p.server.exists():
        raise StoresError("no stores here yet: run `make stores-up` first")
    cfg = json.loads(p.server.read_text())
    if host not in cfg.get("client_hosts", []):
        cfg["client_hosts"] = [*cfg.get("client_hosts", []), host]
        _write_private(p.server, json.dumps(cfg, indent=2) + "\n")
        bind = cfg.get("running_bind", LOOPBACK)
        if not _is_loopback(bind) and pid_alive(p.mlflow / "server.pid"):
            print(f"[kdprune] restarting the MLflow server to accept requests addressed to {host}",
                  file=sys.stderr, flush=True)
            stop_detached(p.mlflow / "server.pid")
            with contextlib.redirect_stdout(sys.stderr):  # stdout is the client file
                _start_mlflow(p, cfg, bind, bool(cfg.get("running_auth")))
    return json.dumps({"env": client_settings(cfg, host, bool(cfg.get("running_auth")))}, indent=2,
                      sort_keys=True) + "\n"


# ---------------------------------------------------------------- migration from the local SQLite store

IMPORT_SOURCE = "kdprune.import.source_run"  # on an imported run: the run id in the SQLite store
IMPORT_DONE = "kdprune.import.complete"      # set once everything of the run is copied


def import_local_runs(root: Path, dest_uri: Optional[str] = None, log=print) -> dict:
    """Copy every run of the project's SQLite MLflow store (``mlflow.db``, artifacts in ``mlartifacts/``)
    into the tracking server: experiments by name, runs with their params, tags, every metric point,
    artifacts, status and times, children under their imported parents. Runs already imported are
    skipped, a run left half-copied by an interrupted import is deleted and copied again."""
    from mlflow.entities import Metric, Param, RunTag, ViewType
    from mlflow.tracking import MlflowClient

    db = Path(root) / "mlflow.db"
    if not db.exists():
        raise StoresError(f"no local MLflow store at {db}: nothing to import")
    dest_uri = dest_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not dest_uri.startswith(("http://", "https://")):
        raise StoresError(f"MLFLOW_TRACKING_URI={dest_uri!r} is not a tracking server: run `make stores-up` first")
    src, dst = MlflowClient(f"sqlite:///{db}"), MlflowClient(dest_uri)
    counts = {"runs": 0, "skipped": 0, "metric points": 0, "artifacts": 0}
    for exp in src.search_experiments(view_type=ViewType.ALL):
        runs = _all_runs(src, exp.experiment_id)
        if not runs:
            continue
        dexp = dst.get_experiment_by_name(exp.name)
        dexp_id = dexp.experiment_id if dexp else dst.create_experiment(exp.name, tags=exp.tags)
        done: dict[str, str] = {}
        for r in _all_runs(dst, dexp_id):
            source = r.data.tags.get(IMPORT_SOURCE)
            if source and r.data.tags.get(IMPORT_DONE) == "true":
                done[source] = r.info.run_id
            elif source:
                dst.delete_run(r.info.run_id)  # half copied by an interrupted import
        pending = [r for r in runs if r.info.run_id not in done]
        counts["skipped"] += len(runs) - len(pending)
        while pending:  # parents before their children
            ready = [r for r in pending if r.data.tags.get("mlflow.parentRunId") in (None, *done)
                     or r.data.tags.get("mlflow.parentRunId") not in {x.info.run_id for x in runs}]
            if not ready:
                ready = pending[:1]
            for r in ready:
                done[r.info.run_id] = _copy_run(src, dst, dexp_id, r, done, counts, Metric, Param, RunTag)
                pending.remove(r)
        log(f"[kdprune] experiment {exp.name}: {len(runs)} runs in {db.name}, "
            f"{len(runs) - counts['skipped']} copied so far to {dest_uri}")
    return counts


def _all_runs(client, experiment_id: str) -> list:
    from mlflow.entities import ViewType

    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  page_token=token, order_by=["attributes.start_time ASC"])
        out += list(page)
        token = page.token
        if not token:
            return out


def _copy_run(src, dst, exp_id: str, r, mapped: dict, counts: dict, Metric, Param, RunTag) -> str:
    tags = {k: v for k, v in r.data.tags.items() if k != "mlflow.parentRunId"}
    parent = r.data.tags.get("mlflow.parentRunId")
    if parent in mapped:
        tags["mlflow.parentRunId"] = mapped[parent]
    tags[IMPORT_SOURCE] = r.info.run_id
    new = dst.create_run(exp_id, start_time=r.info.start_time, tags=tags, run_name=r.info.run_name).info.run_id
    params = [Param(k, v) for k, v in r.data.params.items()]
    for i in range(0, len(params), 100):
        dst.log_batch(new, params=params[i:i + 100])
    points = [Metric(m.key, m.value, m.timestamp, m.step)
              for key in r.data.metrics for m in src.get_metric_history(r.info.run_id, key)]
    for i in range(0, len(points), 1000):
        dst.log_batch(new, metrics=points[i:i + 1000])
    counts["metric points"] += len(points)
    if src.list_artifacts(r.info.run_id):
        with tempfile.TemporaryDirectory() as tmp:
            local = src.download_artifacts(r.info.run_id, "", tmp)
            dst.log_artifacts(new, local)
            counts["artifacts"] += sum(1 for f in Path(local).rglob("*") if f.is_file())
    dst.set_tag(new, IMPORT_DONE, "true")
    if r.info.status != "RUNNING":
        dst.set_terminated(new, r.info.status, r.info.end_time)
    counts["runs"] += 1
    return new


# ---------------------------------------------------------------- DVC remote

REMOTE_NAME = "kdprune"


def dvc_remote(root: Path) -> str:
    """The DVC remote push/pull use: the default remote in DVC's config, else a directory remote from
    ``KDPRUNE_DVC_REMOTE`` (added to this clone's local config as the default)."""
    r = subprocess.run(["dvc", "remote", "default"], cwd=root, capture_output=True, text=True)
    name = r.stdout.strip()
    if r.returncode == 0 and name:
        return name
    url = os.environ.get("KDPRUNE_DVC_REMOTE", "").strip()
    if not url:
        raise StoresError("no DVC remote: set KDPRUNE_DVC_REMOTE to a directory (e.g. a shared mount) or add any "
                          "remote DVC supports with `dvc remote add -d NAME URL`")
    if "://" not in url:
        url = str(Path(url).expanduser().resolve())
        Path(url).mkdir(parents=True, exist_ok=True)
    subprocess.run(["dvc", "remote", "add", "--local", "--force", "-d", REMOTE_NAME, url], cwd=root, check=True,
                   capture_output=True, text=True)
    return REMOTE_NAME


def dvc_transfer(root: Path, direction: str) -> int:
    """``dvc push`` or ``dvc pull`` against the remote above; returns DVC's exit code."""
    remote = dvc_remote(root)
    print(f"[kdprune] dvc {direction} (remote {remote})", flush=True)
    return subprocess.run(["dvc", direction, "-r", remote], cwd=root).returncode
