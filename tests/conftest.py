"""Fixtures that build a throw-away copy of the project and run its real entrypoints."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COPY = ["kdprune", "tasks", "flows", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"]

# A tiny profile: the real pipeline, seconds per stage
TINY = {
    "teacher": {"epochs": 5, "batch_size": 32},
    "scores": {"methods": ["random", "el2n", "forgetting"], "seeds": [0], "el2n_epoch": 2},
    "select": {"fractions": [0.2, 0.5]},
    "student": {"epochs": 8, "batch_size": 32, "seeds": [0], "kd_weights": [0.5]},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(project: Path, port: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "KDPRUNE_", "DVC_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        KDPRUNE_PREFECT_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DVC_NO_ANALYTICS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


class Project:
    def __init__(self, path: Path, port: int):
        self.path = path
        self.env = clean_env(path, port)

    def run(self, *cmd: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        p = subprocess.run(list(cmd), cwd=self.path, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\n"
                                 f"stderr:\n{p.stderr[-4000:]}")
        return p

    def write_params(self, overrides: dict) -> None:
        base = yaml.safe_load((REPO / "params.yaml").read_text())
        (self.path / "params.yaml").write_text(yaml.safe_dump(_merge(base, overrides), sort_keys=False))


def make_project(dest: Path, port: int, params: dict = TINY) -> Project:
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    proj = Project(dest, port)
    proj.write_params(params)
    proj.run("git", "init", "-q")
    proj.run("git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    proj.run("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    proj.run("dvc", "init", "-q")
    proj.run("dvc", "config", "core.analytics", "false")
    return proj


@pytest.fixture(scope="session")
def prefect_port(tmp_path_factory):
    """One local Prefect server for the whole session, stopped at the end."""
    port = _free_port()
    home = tmp_path_factory.mktemp("prefect-home")
    yield port, home
    env = clean_env(home, port)
    env["PREFECT_HOME"] = str(home)
    subprocess.run([sys.executable, "-m", "flows", "stop"], env=env, cwd=REPO, capture_output=True,
                   timeout=60)


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory, prefect_port) -> Project:
    port, home = prefect_port
    proj = make_project(tmp_path_factory.mktemp("proj") / "kdp", port)
    proj.env["PREFECT_HOME"] = str(home)  # share the session's server
    return proj
