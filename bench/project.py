"""A throw-away copy of the project (code, dvc.yaml, a params file) with its own git + DVC repo.

Used by the benchmarks and the tests to run the real entrypoints without touching this checkout.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from cli.verify import scratch_copy, scratch_env as clean_env  # noqa: F401 (clean_env: the tests' name for it)
from servers.runtime import free_port  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


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
    """A scratch copy of this checkout in ``dest`` (cli/verify.py's, as `make verify` makes it) with
    ``params`` over ``base`` as its params.yaml, on Prefect port ``port``."""
    proj = Project(dest, port)
    scratch_copy(REPO, dest, proj.env, prepare=lambda d: proj.write_params(params or {}, base))
    return proj
