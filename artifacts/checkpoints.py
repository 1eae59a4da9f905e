"""Per-epoch training state on the node a task runs on (resume after a crash), and the fault hook that tests it."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from artifacts.files import atomic_write_bytes


def fingerprint(*parts: Any) -> str:
    """A short hash of everything that determines a training run's result."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ray_node_id() -> Optional[str]:
    """The Ray node this process is a worker of, or None (not a Ray worker). Ray is looked up, not
    imported: a worker has it loaded, and elsewhere importing it would only cost time."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    return ctx.get_node_id() if ctx.worker.mode == ray.WORKER_MODE else None


def checkpoint_root(root: Path | str) -> Path:
    """Where a task keeps checkpoints on the node it runs on: the project (``.kdprune/checkpoints``)
    when this node has it, else the node's temp directory (a Ray task on another machine)."""
    root = Path(root)
    if root.is_dir() and os.access(root, os.W_OK):
        return root
    return Path(tempfile.gettempdir()) / "kdprune"


class FileCheckpoint:
    """Per-epoch training state under ``.kdprune/checkpoints/`` (outside every DVC out).

    Saved with torch.save through temp + rename, loaded with ``weights_only=True``. An unreadable
    checkpoint is reported and ignored (training starts afresh), never trusted.
    """

    def __init__(self, root: Path, stage: str, name: str, key: str, log=None):
        self.path = Path(root) / ".kdprune" / "checkpoints" / stage / f"{name}-{key}.pt"
        self.log = log
        self.resumed_from: int | None = None

    def load(self) -> dict | None:
        import torch

        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, corrupt or not ours
            if self.log:
                self.log.warning(f"ignoring unreadable checkpoint {self.path}: {e}")
            return None
        self.resumed_from = int(state["epoch"])
        if self.log:
            self.log.info(f"resuming from checkpoint {self.path.name} after epoch {self.resumed_from}")
        return state

    def save(self, state: dict) -> None:
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.path, buf.getvalue(), fsync=False)  # a kill cannot tear a rename

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def fault_point(root: Path | str, stage: str, epoch: int) -> None:
    """Test hook: ``KDPRUNE_FAULT=<stage>:<epoch>[:<how>]`` makes the first attempt fail after that epoch.

    ``how``: ``raise`` (default: an exception, which Prefect retries), ``kill`` (SIGKILL of the process
    running the task: a Ray worker dies mid-student), ``pause`` (write the node's id to the marker file
    and sleep, so that a test can remove that Ray node). ``KDPRUNE_FAULT_NODE=<Ray node id>`` limits it
    to tasks on that node. The fault fires once per project (a marker file records it), so a retry or
    re-run goes through.
    """
    spec = os.environ.get("KDPRUNE_FAULT")
    if not spec or not (spec == f"{stage}:{epoch}" or spec.startswith(f"{stage}:{epoch}:")):
        return
    node = os.environ.get("KDPRUNE_FAULT_NODE")
    if node and ray_node_id() != node:
        return
    marker = Path(root) / ".kdprune" / "faults" / spec.replace(":", "-")
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    how = spec.split(":")[2] if spec.count(":") >= 2 else "raise"
    if how == "kill":
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "pause":
        marker.write_text(node or "")
        time.sleep(600)
        return
    marker.touch()
    raise RuntimeError(f"injected fault after {stage} epoch {epoch} (KDPRUNE_FAULT)")


def drop_checkpoints(results: list[dict]) -> None:
    """Once a stage's outputs are in place, its tasks' per-epoch states are no longer needed."""
    for r in results:
        Path(r["checkpoint"]).unlink(missing_ok=True)
