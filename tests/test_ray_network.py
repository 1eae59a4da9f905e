"""Ray on this machine listens on loopback only: the run's own instance (``runner.kind: ray``,
``address: null``, the default) and the head ``make ray-up`` starts.

The processes are found by the process tree (the run's process and its descendants, via psutil),
never by name; every TCP listener among them must be on a loopback address, and a connection to the
machine's own non-loopback address on each of their ports must be refused.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")
pytest.importorskip("ray", reason="ray is not installed (pip install -c constraints.txt -e .)")

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def own_address() -> str:
    """This machine's first non-loopback IPv4 address."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return a.address
    pytest.skip("this machine has no non-loopback IPv4 address to probe")


def is_loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(a, "ipv4_mapped", None)
    return (mapped or a).is_loopback


def tree_listeners(root: int) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every TCP listener in ``root``'s process tree."""
    top = psutil.Process(root)
    pids = {top.pid} | {p.pid for p in top.children(recursive=True)}
    out = []
    for c in psutil.net_connections("tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            try:
                name = psutil.Process(c.pid).name()
            except psutil.Error:
                name = "?"
            out.append((c.pid, name, c.laddr.ip, c.laddr.port))
    return out


def refused(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        try:
            s.connect((ip, port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return True  # unreachable/timeout: not accepted either
        return False


def check_loopback_only(root: int) -> list[tuple[int, str, str, int]]:
    listeners = tree_listeners(root)
    assert listeners, "found no listener in the run's process tree: the probe is broken"
    exposed = [x for x in listeners if not is_loopback(x[2])]
    ip = own_address()
    ours = {x[0] for x in listeners}
    # a port another process on this machine listens on beyond loopback (another user's Ray: the
    # dashboard agent's 52365 is a fixed port) answers on that port: not this tree's doing
    others = {c.laddr.port for c in psutil.net_connections("tcp")
              if c.status == psutil.CONN_LISTEN and c.pid not in ours and not is_loopback(c.laddr.ip)}
    accepted = sorted({x[3] for x in listeners if x[3] not in others and not refused(ip, x[3])})
    assert not exposed and not accepted, (
        f"listening beyond loopback: {exposed}; ports accepting connections on {ip}: {accepted}; "
        f"all listeners: {listeners}")
    return listeners


def kill_tree(proc: subprocess.Popen, pids: list[int]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    for pid in pids:  # the tree as it was: only processes this test started
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


_RUN = """
import sys, yaml
from execution.runner import task_runner
from kdprune.config import validate
params = validate(yaml.safe_load(open("params.yaml")))
assert (params.runner.kind, params.runner.address) == ("ray", None), params.runner
with task_runner(params):   # prefect-ray's RayTaskRunner starts the run's Ray instance, as a stage does
    import ray
    ray.get([ray.remote(lambda: 1).remote() for _ in range(2)])  # workers up, as when students train
    print("READY", flush=True)
    sys.stdin.readline()
"""


def test_the_runs_own_ray_instance_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.Popen([sys.executable, "-c", _RUN], cwd=REPO, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids: list[int] = []
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("READY"):
                break
        assert proc.poll() is None, "".join(lines)
        time.sleep(2)  # the agents finish binding
        pids = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        check_loopback_only(proc.pid)
    finally:
        if proc.poll() is None:
            proc.stdin.write("\n")
            proc.stdin.flush()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        kill_tree(proc, pids)


def test_make_ray_up_listens_on_loopback_only(tmp_path):
    """``make ray-up`` (its own command line, ``--block`` added so that its processes stay in one tree
    that this test can find and stop by pid; ``ray stop`` would stop every Ray on the machine)."""
    from bench.project import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    temp = Path("/tmp") / f"kdp-ray-{os.getpid()}"  # Ray's socket paths must stay short
    port = free_port()
    proc = subprocess.Popen(["make", "-o", "setup", "ray-up", f"RAY_PORT={port}",
                             f"RAY_START_ARGS=--block --temp-dir={temp}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids: list[int] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            kids = psutil.Process(proc.pid).children(recursive=True)
            if any(p.name() == "raylet" for p in kids if p.is_running()) and len(tree_listeners(proc.pid)) >= 6:
                break
            time.sleep(2)
        time.sleep(5)  # the agents finish binding
        check_loopback_only(proc.pid)
        # a run joins it as params.yaml's runner.address says (its workers start in the head's tree)
        join = ("from execution.runner import ray_env_defaults, ray_init_kwargs\n"
                "from kdprune.config import validate\n"
                f"p = validate({{'runner': {{'kind': 'ray', 'address': '127.0.0.1:{port}', 'cpus_per_task': 1}},\n"
                "     'reproducibility': {'cpu': 'portable', 'threads': 2}}, stage='prepare')\n"
                "ray_env_defaults()\nimport ray\nray.init(**ray_init_kwargs(p))\n"
                "print('JOINED', ray.get(ray.remote(lambda: 1).remote()))\n")
        # an explicit address needs Ray's token mode said (Ray enables it by itself for "auto" only)
        out = subprocess.run([sys.executable, "-c", join], cwd=REPO, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True,
                             timeout=120)
        assert "JOINED 1" in out.stdout, out.stdout + out.stderr[-3000:]
        pids = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        check_loopback_only(proc.pid)
    finally:
        pids += [p.pid for p in psutil.Process(proc.pid).children(recursive=True)] if proc.poll() is None else []
        kill_tree(proc, pids)
