"""Fixtures that build a throw-away copy of the project and run its real entrypoints."""
from __future__ import annotations

from kdprune.reproducibility import apply as _pin_cpu

# the tests' own process computes too (in-process trainings, Ray workers it starts inherit its environment):
# pinned as an entrypoint pins itself, before torch or NumPy loads (kdprune/reproducibility.py)
_pin_cpu("portable", 2)

import os  # noqa: E402

# Ray reads its single-machine switch when it is imported: tests that start Ray in this process (test_ddp)
# would otherwise find it imported by an earlier module without it, and the runner refuses (loopback only)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import subprocess  # noqa: E402
import sys

import pytest

from bench.project import REPO, Project, clean_env, free_port, make_project  # noqa: F401

# A tiny profile: the real pipeline, seconds per stage
TINY = {
    "teacher": {"epochs": 5, "batch_size": 32},
    "scores": {"methods": ["random", "el2n", "forgetting"], "seeds": [0], "el2n": {"epoch": 2}},
    "select": {"fractions": [0.2, 0.5]},
    "student": {"epochs": 8, "batch_size": 32, "seeds": [0], "kd_weights": [0.5]},
}
_free_port = free_port


@pytest.fixture(scope="session")
def prefect_port(tmp_path_factory):
    """One local Prefect server for the whole session, stopped at the end."""
    port = _free_port()
    home = tmp_path_factory.mktemp("prefect-home")
    yield port, home
    env = clean_env(port)
    env["PREFECT_HOME"] = str(home)
    subprocess.run([sys.executable, "-m", "flows", "stop"], env=env, cwd=REPO, capture_output=True,
                   timeout=60)


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory, prefect_port) -> Project:
    port, home = prefect_port
    proj = make_project(tmp_path_factory.mktemp("proj") / "kdp", port, TINY)
    proj.env["PREFECT_HOME"] = str(home)  # share the session's server
    return proj
