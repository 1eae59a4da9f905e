"""Where a fan-out stage's tasks run: ``runner.kind`` in params.yaml.

- ``local``: Prefect's ThreadPoolTaskRunner in the stage's process, one task per CUDA device at a
  time, or one at a time on CPU (two CPU trainings in one process are not reproducible: measured,
  the same student came out different from run to run, as BLAS threading reacts to the other
  training; separate processes, Ray's, are).
- ``ray``: prefect-ray's RayTaskRunner. ``runner.address`` null starts a Ray instance for the run on
  loopback, every port (:func:`ray_env_defaults`; dashboard and usage stats off); ``auto``,
  ``HOST:PORT`` or ``ray://HOST:PORT`` joins a running cluster (``make ray-up`` starts one on loopback).

The same flow code serves both: a task gets everything it needs as arguments (under Ray the large
ones go through the object store once, :func:`share`), trains, and returns its result (weights,
history, the node it ran on) to the stage's process, which alone writes the stage's outputs and logs
to MLflow. Nothing is assumed about a shared filesystem, and the tracking store has one writer.

Each task runs torch with ``runner.cpus_per_task`` threads, under both runners: the thread count
changes floating-point reduction order, so it is part of what determines a result (a stage param),
while which runner ran the task is not.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import socket
import sys
from typing import Any, Callable, Iterator, Optional, TypeVar

from kdprune.settings import Params
from artifacts.checkpoints import ray_node_id

T = TypeVar("T")

# passed to Ray workers: the servers they report to (a worker without PREFECT_API_URL starts a
# temporary Prefect server of its own) and the project's test hooks
_WORKER_ENV = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_ANALYTICS_ENABLED",
               "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def is_ray(params: Params) -> bool:
    return params.runner.kind == "ray"


def worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in _WORKER_ENV or k.startswith("KDPRUNE_")}


def ray_init_kwargs(params: Params) -> dict[str, Any]:
    """ray.init's arguments. Joining a cluster: the project's code shipped to every node
    (``runtime_env`` ``py_modules``: no install of kdprune needed there, and never a stale one) and
    the servers' settings in every worker's environment. A Ray instance of the run's own (address
    null) binds to loopback with the dashboard off; its workers are started by it on this machine,
    with this process's environment and import path, so they need no runtime environment, and
    Ray's pre-started workers take the first tasks (a runtime environment would start new ones)."""
    address = params.runner.address
    if address is None:  # "local": a new instance even where a cluster runs on this machine
        _check_loopback_possible()
        return {"address": "local", "logging_level": "WARNING", "include_dashboard": False,
                "_node_ip_address": "127.0.0.1", "num_cpus": os.cpu_count() or 1}
    import artifacts
    import execution
    import kdprune

    from kdprune.reproducibility import environment

    # and the packages of the stage that called this (loaded: they are above this module)
    shipped = [kdprune, artifacts, execution, *[sys.modules[m] for m in ("tasks", "flows") if m in sys.modules]]

    # a cluster's workers start on other machines: the kernels and threads `reproducibility` asks for are
    # in their environment before they import torch (the run's own instance: inherited from this process)
    pinned = environment(params.reproducibility.cpu, params.runner.cpus_per_task)
    return {"address": address, "logging_level": "WARNING",
            "runtime_env": {"py_modules": shipped, "env_vars": {**worker_env(), **pinned},
                            "excludes": ["__pycache__", "*.pyc"]}}


def ray_env_defaults() -> None:
    """Set before Ray is imported here: no usage stats; workers at nice 0. Ray starts its workers at
    nice 15, so on a shared machine any other process (another user's job, a test run) took the CPU
    from the students first (seen: a study's workers at nice 15 losing to an editor's test run); the
    local runner trains at the stage process's priority, and so do Ray's workers now.

    Loopback stays loopback. Ray 2.60 replaces a loopback address given to it (``ray.init``'s
    ``_node_ip_address``, an ``address`` of 127.0.0.1:PORT) by the machine's own address
    (``resolve_ip_for_localhost``): the run's own instance then listened on every interface (GCS,
    raylet, core workers' gRPC, agents, metrics), and a run could not join ``make ray-up``'s loopback
    head. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is Ray's own switch for single-machine use: a
    loopback address is kept, and each server of the run's instance binds to 127.0.0.1 (measured:
    tests/test_ray_network.py). Joining a cluster at another address it changes nothing (the driver
    takes its node's address from the GCS). It is read when ``ray`` is imported, so it is set here,
    before."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault(_RAY_SINGLE_MACHINE, "0")
    private_ray_token()


def private_ray_token() -> None:
    """Ray's token (token authentication, on by default in Ray 2.60) readable by its owner only: Ray
    writes ``~/.ray/auth_token`` with the umask (0644), and any local user holding it could run code
    on the loopback-only instance."""
    token = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    with contextlib.suppress(OSError):
        if os.stat(token).st_mode & 0o077:
            os.chmod(token, 0o600)


_RAY_SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _check_loopback_possible() -> None:
    """The run's own instance would listen beyond loopback if ``ray`` was imported before
    :func:`ray_env_defaults`: refused rather than exposed."""
    consts = sys.modules.get("ray._private.ray_constants")
    if consts is not None and getattr(consts, "ENABLE_RAY_CLUSTER", False):
        raise RuntimeError(
            "ray was imported before execution.runner.ray_env_defaults() set "
            f"{_RAY_SINGLE_MACHINE}=0, so the run's own Ray instance would listen on every network "
            f"interface; call ray_env_defaults() before importing ray (or set {_RAY_SINGLE_MACHINE}=0 "
            "in the environment), or join a cluster with runner.address")


def task_runner(params: Params):
    """The Prefect task runner ``params.runner`` asks for."""
    if not is_ray(params):
        from prefect.task_runners import ThreadPoolTaskRunner

        from kdprune.device import device_count

        return ThreadPoolTaskRunner(max_workers=device_count(params.device))  # one per CUDA device, or one
    ray_env_defaults()
    from prefect_ray import RayTaskRunner

    return RayTaskRunner(init_kwargs=ray_init_kwargs(params))  # the address is one of ray.init's arguments


def fan_out(stage_flow, stage: str, has_tasks: Callable[[dict], bool] = lambda p: True):
    """The entrypoint of a fan-out stage: runs ``stage_flow`` with the task runner params.yaml's
    ``runner`` asks for (a Prefect flow's task runner is fixed when it is called, so it is chosen
    here, per call). A stage with nothing to fan out (``has_tasks`` false) runs locally and starts
    no Ray instance."""
    from execution.params import load_params

    @functools.wraps(stage_flow)
    def run(root: str = ".", parent_run_id: Optional[str] = None) -> dict:
        params = load_params(root, stage)
        if not has_tasks(params):
            params = dataclasses.replace(params, runner=dataclasses.replace(params.runner, kind="local", address=None))
        return stage_flow.with_options(task_runner=task_runner(params))(root=root, parent_run_id=parent_run_id)

    return run


@contextlib.contextmanager
def ray_session(params: Params) -> Iterator[None]:
    """One Ray connection for several stages in this process (the pipeline): each stage's
    RayTaskRunner finds Ray initialised and uses it, instead of starting and stopping its own."""
    if not is_ray(params):
        yield
        return
    ray_env_defaults()
    import ray

    owned = not ray.is_initialized()
    if owned:
        ray.init(**ray_init_kwargs(params))
        private_ray_token()  # made by this ray.init if there was none
        # each worker imports torch, Prefect's task engine and the tasks now, while the stages before
        # the fan-out run here (about 5 s per worker on this machine), not when the first student arrives
        warm = ray.remote(num_cpus=params.runner.cpus_per_task)(_import_task_modules)
        for _ in range(int(ray.cluster_resources().get("CPU", 1) // params.runner.cpus_per_task)):
            warm.remote()
    try:
        yield
    finally:
        if owned:
            ray.shutdown()


def share(value: Any, params: Params) -> Any:
    """``value`` as a task argument: under Ray, put in the object store once (every task on a node
    reads that node's copy; prefect-ray resolves the reference before the task runs); else itself."""
    if not is_ray(params):
        return value
    import ray

    return ray.put(value)


@contextlib.contextmanager
def resources(params: Params, device: str) -> Iterator[None]:
    """Submissions inside ask Ray for ``cpus_per_task`` CPUs (and ``gpus_per_task`` GPUs on CUDA)."""
    if not is_ray(params):
        yield
        return
    from prefect_ray.context import remote_options

    r = params.runner
    opts: dict[str, Any] = {"num_cpus": r.cpus_per_task}
    if device.startswith("cuda"):
        opts["num_gpus"] = 1 if r.gpus_per_task is None else r.gpus_per_task
    with remote_options(**opts):
        yield


def run_tasks(params: Params, device: str, task, calls: list[tuple], handle: Callable[[int, Any], T],
              order: Optional[list[int]] = None) -> list[T]:
    """A fan-out: ``task.submit(*calls[i])`` for each call (in ``order``, default as given) on the
    flow's runner with the runner's resources, each result handed to ``handle(i, result)`` in this
    process as soon as it arrives; returns what ``handle`` returned, in call order. Torch runs
    ``cpus_per_task`` threads in this process meanwhile (the local runner's tasks run here)."""
    from prefect.futures import as_completed

    with task_threads(params.runner.cpus_per_task):
        with resources(params, device):
            futures = {task.submit(*calls[i]): i for i in (range(len(calls)) if order is None else order)}
        done = {}
        for f in as_completed(list(futures)):
            done[futures[f]] = handle(futures[f], f.result())
    return [done[i] for i in range(len(calls))]


def _import_task_modules() -> None:
    import importlib

    for m in ("torch", "prefect.task_engine", "tasks.distill", "tasks.scores", "tasks.teachers"):
        importlib.import_module(m)


def task_device(params: Params, device: str):
    """Inside a task: torch set to ``cpus_per_task`` threads (the stage's process restores its own
    after a local fan-out) with the kernels ``reproducibility.cpu`` pins verified (a Ray worker started
    without them fails here, naming the cause), and the device to train on: under Ray the GPU Ray
    assigned the task (CUDA_VISIBLE_DEVICES is set to it, so ``cuda``), else the one the stage gave it."""
    import torch

    from kdprune.reproducibility import check

    check(params.reproducibility.cpu, params.runner.cpus_per_task)
    return torch.device("cuda" if is_ray(params) and device.startswith("cuda") else device)


@contextlib.contextmanager
def task_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for a task (restored after: the local runner's tasks
    share one process with the stage)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def where() -> dict[str, Optional[str]]:
    """Where a task runs: host name and process id, and under Ray the node's id and IP address."""
    from kdprune.reproducibility import cpu_capability

    node = ray_node_id()
    ip = sys.modules["ray"].util.get_node_ip_address() if node else None
    return {"host": socket.gethostname(), "pid": os.getpid(), "ray_node_id": node, "ray_node_ip": ip,
            "cpu_capability": cpu_capability()}


def task_compute(params: Params, node: dict) -> dict:
    """What explains the bytes of a model a task trained (its model.json's ``compute``): the setting, the
    task's thread count, and the CPU capability its process ran at (``node``: :func:`where`)."""
    from kdprune.reproducibility import provenance

    return {**provenance(params.reproducibility.cpu, params.runner.cpus_per_task),
            "cpu_capability": node["cpu_capability"]}


def node_tags(node: dict) -> dict[str, str]:
    """MLflow tags saying where a task ran."""
    tags = {"kdprune.host": node["host"], "kdprune.task_cpu_capability": node.get("cpu_capability", "")}
    if node.get("ray_node_id"):
        tags.update({"kdprune.ray_node_id": node["ray_node_id"], "kdprune.ray_node_ip": node["ray_node_ip"]})
    return tags
