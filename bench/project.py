"""A throw-away copy of the project (code, dvc.yaml, a params file) with its own git + DVC repo.

Used by the benchmarks and the tests to run the real entrypoints without touching this checkout.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from cli.verify import COPY  # what a copy of the project needs (code, pipeline, params): one list

REPO = Path(__file__).resolve().parents[1]


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(port: int) -> dict:
    """This process's environment without kdprune/Prefect/MLflow/DVC settings, on its own Prefect port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "KDPRUNE_", "DVC_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        KDPRUNE_PREFECT_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DVC_NO_ANALYTICS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def run_or_dump(cmd: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)``, in its own session. Past ``timeout``:
    every process under it that runs our entrypoint dumps its threads' stacks to stderr (SIGUSR1,
    cli/main.py), then the whole session is killed, not only ``cmd`` (a stage that outlived a
    killed ``dvc repro`` would hold its outputs and CPU into the next test), and AssertionError says
    which processes were running and where they were."""
    import psutil

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        running = []
        for c in tree:
            with contextlib.suppress(psutil.Error):
                line = " ".join(c.cmdline())[:200]
                running.append(f"  {c.pid} {c.status()} {line}")
                if "flows" in c.cmdline():
                    os.kill(c.pid, signal.SIGUSR1)
        time.sleep(3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(cmd)} did not finish in {timeout:g} s; running then:\n" + "\n".join(running)
                             + f"\nstdout (end):\n{out[-6000:]}\nstderr (end, with the stacks):\n{err[-12000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


class Project:
    def __init__(self, path: Path, port: int):
        self.path = path
        self.env = clean_env(port)

    def run(self, *cmd: str, check: bool = True, timeout: float = 600, env: dict | None = None
            ) -> subprocess.CompletedProcess:
        """Run a command in the project; ``env`` adds to (overrides) the project's environment."""
        p = run_or_dump(list(cmd), cwd=self.path, env={**self.env, **(env or {})}, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\n"
                                 f"stderr:\n{p.stderr[-4000:]}")
        return p

    def write_params(self, overrides: dict, base: Path = REPO / "params.yaml") -> None:
        params = merge(yaml.safe_load(base.read_text()), overrides)
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def stop_server(self) -> None:
        subprocess.run([sys.executable, "-m", "flows", "stop"], cwd=self.path, env=self.env, capture_output=True,
                       timeout=60)


def make_project(dest: Path, port: int, params: dict | None = None, base: Path = REPO / "params.yaml") -> Project:
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    proj = Project(dest, port)
    proj.write_params(params or {}, base)
    git = ("git", "-c", "user.email=kdprune@localhost", "-c", "user.name=kdprune")
    proj.run("git", "init", "-q")
    proj.run(*git, "add", "-A")
    proj.run(*git, "commit", "-qm", "init")
    proj.run("dvc", "init", "-q")
    proj.run("dvc", "config", "core.analytics", "false")
    shutil.copytree(REPO / ".dvc" / "plots", dest / ".dvc" / "plots")  # the plot templates dvc.yaml names
    proj.run(sys.executable, "-m", "flows", "init")  # what `make setup` does: the MLflow store, once
    return proj
