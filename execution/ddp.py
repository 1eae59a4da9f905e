"""The data-parallel teacher (``teacher.workers`` > 1): PyTorch DDP under Ray Train.

``fit`` starts a ``ray.train.torch.TorchTrainer`` of ``teacher.workers`` workers on the Ray that
``runner.address`` names (null: a Ray instance of the run's own on loopback, with the project's
settings, execution/runner.py; ``auto`` or an address: that cluster), or on the Ray this process is
already connected to (the pipeline's). One worker per GPU on CUDA (NCCL), else CPU workers (gloo),
each running ``reproducibility.threads // teacher.workers`` torch threads and asking Ray for that
many CPUs: the workers together never use more threads than one process would.

Every worker trains with kdprune/train/distributed.py. The prepared data travels to the workers
through Ray's object store (no shared filesystem assumed): the pixels of an in-memory dataset, the
index of a streamed one, whose files each worker reads (its shard of every batch) from data.root,
which must then be a path every node reaches (a shared filesystem); data.workers decoding processes
per worker (null: the machine's share, :func:`decode_workers`); rank 0 keeps the per-epoch checkpoint on
its node (artifacts/checkpoints.py FileCheckpoint, outside every DVC out, as a single-process
teacher's), sends each epoch's metrics to the stage's process as it goes (a ``ray.util.queue.Queue``:
the stage's observer shows the progress and logs to MLflow there; workers never log), and at the end
the result: the best weights, history, merged dynamics and the best model's validation metrics
(held by the queue's actor, so it outlives the workers). Rank 0 writes the merged dynamics epoch by
epoch into files beside its checkpoint (host memory does not grow with the epochs); the result names
those files when the stage's process is on rank 0's node, else carries the arrays.

A worker that dies (killed, its node gone) or raises fails the worker group; Ray Train starts a new
one once (``FailureConfig(max_failures=1)``, as the stage task's one retry), whose workers resume
from rank 0's checkpoint: the result equals an uninterrupted run's. Ray Train's own checkpoints are
not used: on a cluster they need storage every node reaches (NFS, S3), which this project does not
assume; its run directory (``storage_path``) holds nothing but Ray Train's marker files.
"""
from __future__ import annotations

import contextlib
import os
import queue as queue_mod
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from kdprune.settings import Params
from artifacts.checkpoints import checkpoint_root, fault_point, FileCheckpoint, fingerprint
from artifacts.files import load_npy
from artifacts.stages import dynamics_work_dir
from execution.runner import private_ray_token, ray_env_defaults, ray_init_kwargs, worker_env

STAGE = "teacher"


def worker_threads(params: Params) -> int:
    """Torch threads (and Ray CPUs) of each worker: its share of ``reproducibility.threads``."""
    return max(1, params.reproducibility.threads // params.teacher.workers)


def decode_workers(local: int) -> int:
    """data.workers null on a data-parallel teacher: each of the ``local`` workers on a node decodes with
    its share of the CPUs the streamed path would use in one process (at least one)."""
    from kdprune.data.stream import default_workers

    return max(1, default_workers() // local)


def checkpoint_key(params: Params, arch: str, meta: dict, device_type: str) -> str:
    tp, rp = params.teacher, params.reproducibility
    return fingerprint(params.section("teacher"), arch, meta["sha256"], device_type, worker_threads(params), rp.cpu,
                       "ddp")


def checkpoint(root: Path, params: Params, arch: str, meta: dict, device_type: str, log=None) -> FileCheckpoint:
    """The teacher's per-epoch state on the node rank 0 runs on."""
    return FileCheckpoint(checkpoint_root(root), STAGE, "teacher", checkpoint_key(params, arch, meta, device_type), log)


@contextlib.contextmanager
def ray_connection(params: Params) -> Iterator[Any]:
    """Ray, as the fan-out stages get it: this process's connection if it has one (the pipeline's),
    else one made from ``runner.address`` (null: a loopback instance of the run's own) and closed after."""
    ray_env_defaults()
    import ray

    owned = not ray.is_initialized()
    if owned:
        ray.init(**ray_init_kwargs(params))
        private_ray_token()
    try:
        yield ray
    finally:
        if owned:
            ray.shutdown()


def use_gpu(params: Params, cluster: dict) -> bool:
    """Whether the workers train on CUDA: ``device: cuda`` (or ``auto`` where the Ray cluster has a
    GPU per worker); ValueError where the cluster cannot hold the workers (rather than wait forever)."""
    workers, device = params.teacher.workers, params.device
    gpus, cpus, share = cluster.get("GPU", 0), cluster.get("CPU", 0), worker_threads(params)
    gpu = device == "cuda" or (device == "auto" and gpus > 0)
    if gpu and gpus < workers:
        raise ValueError(f"teacher.workers: {workers} trains one worker per GPU, but the Ray cluster has {gpus:g} "
                         f"GPUs; lower teacher.workers to {int(gpus)} (or device: cpu)" if gpus else
                         f"device: {device!r} asks for CUDA, but the Ray cluster has no GPU")
    if cpus < workers * share:
        raise ValueError(f"teacher.workers: {workers} workers of {share} CPUs each (reproducibility.threads "
                         f"{params.reproducibility.threads} shared between them) need {workers * share} CPUs; "
                         f"the Ray cluster has {cpus:g}")
    return gpu


def fit(root: Path, params: Params, arch: str, cfg, meta: dict, splits: dict,
        on_epoch: Callable[[int, dict], None], log) -> dict:
    """Train the teacher ``arch`` with the TrainConfig ``cfg`` on ``teacher.workers`` DDP workers
    (kdprune/train/distributed.py); ``on_epoch(epoch, metrics)`` runs here as
    each epoch's metrics arrive. Returns rank 0's result: ``best_state`` (CPU tensors), ``history``,
    ``best_epoch``, ``best_score``, ``selected_on``, ``steps``, ``samples_seen``, ``seconds``,
    ``dynamics`` (merged, rows in id order), ``val`` (the best model's), ``shares`` (rows each worker
    recorded per epoch, epochs trained by the last attempt), ``resumed_from`` (None or the epoch the
    last attempt resumed after), ``checkpoint`` (its path on rank 0's node), ``compute`` (the
    workers' thread count and CPU capability), ``device`` ('cuda' or 'cpu'), ``peak_gpu_bytes``
    (rank 0's peak allocated CUDA memory; None on CPU; never written into an output)."""
    ray_env_defaults()  # before ray is imported (a local instance stays on loopback)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    tp = params.teacher
    with ray_connection(params) as ray:
        gpu = use_gpu(params, ray.cluster_resources())
        share = worker_threads(params)
        messages = Queue()
        config = {"root": str(root), "params": params, "arch": arch, "cfg": cfg, "data": ray.put((meta, splits)),
                  "gpu": gpu, "messages": messages, "env": worker_env(),
                  "node": ray.get_runtime_context().get_node_id()}
        storage, name = checkpoint_root(root) / ".kdprune" / "ray_train", f"teacher-{os.getpid()}-{threading.get_ident()}"
        trainer = TorchTrainer(
            train_worker, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=tp.workers, use_gpu=gpu, resources_per_worker={"CPU": share}),
            run_config=RunConfig(name=name, storage_path=str(storage), failure_config=FailureConfig(max_failures=1)))
        log.info(f"training the teacher on {tp.workers} data-parallel workers ({'CUDA, nccl' if gpu else 'CPU, gloo'}; "
                 f"{share} threads each) with Ray Train")
        done: dict[str, Any] = {}

        def run() -> None:
            try:
                done["result"] = trainer.fit()
            except BaseException as e:  # noqa: BLE001 -- re-raised in the stage's thread below
                done["error"] = e

        runner = threading.Thread(target=run, name="ray-train-fit", daemon=True)
        runner.start()
        out = None
        while True:
            try:
                kind, *body = messages.get(timeout=0.5)
            except queue_mod.Empty:
                if not runner.is_alive() and messages.empty():
                    break
                continue
            if kind == "epoch":
                on_epoch(*body)
            elif kind == "resumed":
                log.info(f"resuming from checkpoint after epoch {body[0]} (data-parallel teacher)")
            elif kind == "result":
                out = body[0]
        runner.join()
        shutil.rmtree(storage / name, ignore_errors=True)  # Ray Train's marker files only
        if "error" in done:
            raise done["error"]
        if done["result"].error is not None:
            raise done["result"].error
        if out is None:
            raise RuntimeError("the data-parallel teacher finished without sending its result")
        out["dynamics"] = received_dynamics(out["dynamics"])
        return out


def train_worker(config: dict) -> None:
    """One DDP worker (Ray Train's train_loop_per_worker)."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from artifacts.models import device_data
    from kdprune.models import build_model
    from kdprune.reproducibility import check
    from kdprune.train import evaluate, seeded
    from kdprune.train.distributed import train_distributed

    os.environ.update(config["env"])  # the stage's servers and test hooks, whenever the Ray instance started
    params, root, messages = config["params"], Path(config["root"]), config["messages"]
    tp, rp = params.teacher, params.reproducibility
    compute = check(rp.cpu, worker_threads(params))  # torch threads: the worker's share; the CPU pin verified
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if config["gpu"] else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    meta, splits = ray.get(config["data"])
    # a streamed split: each worker reads its shard of every batch from data.root (a path every node reaches)
    train_d, val_d = (device_data(meta, splits[s], device, params) for s in ("train", "val"))
    if splits["train"].streamed and params.data.workers is None:
        train_d.workers = val_d.workers = decode_workers(ctx.get_local_world_size())  # the node's decoders, shared
    c, h, _ = meta["shape"]
    with seeded(tp.seed):
        model = build_model(config["arch"], c, meta["num_classes"], h)
    ckpt = checkpoint(root, params, config["arch"], meta, device.type) if rank == 0 else None

    def on_epoch(epoch: int, metrics: dict) -> None:
        if rank == 0:
            messages.put(("epoch", epoch, metrics))
            fault_point(root, STAGE, epoch)

    store = None if ckpt is None else _Announced(ckpt, messages)
    try:
        res, shares = train_distributed(model, train_d, config["cfg"], rank, world, val=val_d, on_epoch=on_epoch,
                                        checkpoint=store,
                                        dynamics_dir=None if ckpt is None else dynamics_work_dir(ckpt.path))
    finally:
        for d in (train_d, val_d):
            if hasattr(d, "close"):  # a streamed split's decoding processes
                d.close()
    if rank != 0:
        return
    model.load_state_dict(res.best_state)
    val = evaluate(model, val_d)
    result = {"best_state": {k: t.detach().cpu() for k, t in res.best_state.items()}, "history": res.history,
              "best_epoch": res.best_epoch, "best_score": res.best_score, "selected_on": res.selected_on,
              "steps": res.steps, "samples_seen": res.samples_seen, "seconds": res.seconds,
              "dynamics": sent_dynamics(res.dynamics, ray.get_runtime_context().get_node_id() == config["node"]),
              "val": val, "shares": shares, "resumed_from": ckpt.resumed_from,
              "checkpoint": str(ckpt.path), "device": device.type,
              "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
              "compute": {"threads": compute["threads"], "cpu_capability": compute["cpu_capability"]}}
    messages.put(("result", result))  # returns once the queue's actor holds it: it outlives this worker


def sent_dynamics(dynamics, same_node: bool) -> Optional[dict]:
    """Rank 0's merged dynamics as the stage's process gets them: the paths of the files rank 0 wrote as it
    trained (next to its checkpoint) when that process runs on this node, read there memory-mapped; else
    the arrays (through Ray's object store: the stage's process then holds them in memory)."""
    if dynamics is None:
        return None
    named = dynamics if isinstance(dynamics, dict) else {"logits": dynamics}
    kind = "stats" if isinstance(dynamics, dict) else "logits"
    if same_node and all(isinstance(v, np.memmap) and v.filename for v in named.values()):
        return {"kind": kind, "files": {k: str(v.filename) for k, v in named.items()}}
    return {"kind": kind, "arrays": {k: np.array(v) for k, v in named.items()}}


def received_dynamics(sent: Optional[dict]):
    """What :func:`sent_dynamics` sent, as the trainer's result holds dynamics (logits array or name -> array)."""
    if sent is None:
        return None
    named = sent["arrays"] if "arrays" in sent else {k: load_npy(Path(f), mmap_mode="r") for k, f in sent["files"].items()}
    return named["logits"] if sent["kind"] == "logits" else named


class _Announced:
    """Rank 0's checkpoint store: a resume is announced to the stage's process (its log says so)."""

    def __init__(self, ckpt: FileCheckpoint, messages):
        self.ckpt, self.messages = ckpt, messages

    def load(self) -> Optional[dict]:
        state = self.ckpt.load()
        if state is not None:
            self.messages.put(("resumed", int(state["epoch"])))
        return state

    def save(self, state: dict) -> None:
        self.ckpt.save(state)
