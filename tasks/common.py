"""File I/O shared by the stage tasks: params, atomic writes, hashes, prepared data, provenance."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from kdprune.config import ParamsError, validate
from kdprune.data import PreparedSplit

SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------- params

def load_params(root: Path | str) -> dict:
    """Read and validate ``params.yaml``; raise ParamsError naming every bad key."""
    path = Path(root) / "params.yaml"
    if not path.exists():
        raise ParamsError(f"{path} not found: run from the project directory (the one with params.yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {e}") from None
    return validate(raw)


def inside(root: Path, rel: str | Path) -> Path:
    """Resolve an output path from params, refusing anything that escapes the project."""
    root = Path(root).resolve()
    p = (root / rel).resolve()
    if p != root and root not in p.parents:
        raise ParamsError(f"path {str(rel)!r} leaves the project directory {root}; use a path inside it")
    return p


# ---------------------------------------------------------------- atomic writes

def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Build a directory in a sibling temp dir and swap it in only when the block succeeds.

    A failure or kill inside the block leaves the previous directory (if any) untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- hashes

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def md5_file(path: Path) -> str:
    """DVC 3's hash of a single file (md5 of its bytes)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def combined_sha256(file_hashes: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(file_hashes):
        h.update(f"{name}:{file_hashes[name]}\n".encode())
    return h.hexdigest()


class IntegrityError(RuntimeError):
    """A file's content does not match the hash recorded for it."""


# ---------------------------------------------------------------- prepared data

def prepared_dir(root: Path, dataset: str) -> Path:
    return Path(root) / "data" / "prepared" / dataset


@functools.lru_cache(maxsize=4)
def _load_prepared_cached(path: str, sha: str) -> tuple[dict, dict[str, PreparedSplit]]:
    d = Path(path)
    meta = json.loads((d / "meta.json").read_text())
    splits = {}
    for s in SPLITS:
        arrays = {}
        for part in ("x", "y", "ids"):
            f = d / f"{s}_{part}.npy"
            want = meta["files"].get(f.name)
            got = sha256_file(f)
            if got != want:
                raise IntegrityError(
                    f"{f} is corrupt or was changed: sha256 {got[:12]}... differs from meta.json's {str(want)[:12]}...; "
                    "re-create it with `dvc repro prepare` (or `dvc checkout`)"
                )
            arrays[part] = np.load(f, allow_pickle=False)
        splits[s] = PreparedSplit(**arrays)
    return meta, splits


def load_prepared(root: Path, dataset: str) -> tuple[dict, dict[str, PreparedSplit]]:
    """Meta and splits of a prepared dataset, each file checked against its recorded sha256."""
    d = prepared_dir(root, dataset)
    if not (d / "meta.json").exists():
        raise FileNotFoundError(f"{d} has no prepared data; run `dvc repro prepare` first")
    meta = json.loads((d / "meta.json").read_text())
    return _load_prepared_cached(str(d), meta["sha256"])


# ---------------------------------------------------------------- provenance

def git_commit(root: Path) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_out_hash(root: Path, out_path: str) -> str | None:
    """The md5 dvc.lock records for an output path (None before DVC has committed it)."""
    lock = Path(root) / "dvc.lock"
    if not lock.exists():
        return None
    data = yaml.safe_load(lock.read_text()) or {}
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs", []) or []:
            if out.get("path") == out_path:
                return out.get("md5")
    return None


def stage_tags(root: Path, stage: str, meta: dict) -> dict:
    """Tags every stage run carries: stage, git commit, dataset and its sha256 / DVC hash."""
    tags = {
        "kdprune.stage": stage,
        "git_commit": git_commit(root),
        "dataset": meta["dataset"],
        "dataset_sha256": meta["sha256"],
    }
    md5 = dvc_out_hash(root, f"data/prepared/{meta['dataset']}")
    if md5:
        tags["dvc.dataset_md5"] = md5
    return tags


# ---------------------------------------------------------------- models on disk

def save_model(directory: Path, model, info: dict) -> None:
    """Weights as safetensors plus model.json (architecture and input shape) in ``directory``."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(Path(directory) / "model.safetensors", save(state))
    atomic_write_json(Path(directory) / "model.json", info)


def load_model(directory: Path, device):
    """Rebuild a model saved by :func:`save_model` (no pickle involved)."""
    from safetensors.torch import load

    from kdprune.models import build_model

    directory = Path(directory)
    info = json.loads((directory / "model.json").read_text())
    model = build_model(info["arch"], info["in_channels"], info["num_classes"], info["image_size"])
    model.load_state_dict(load((directory / "model.safetensors").read_bytes()))
    return model.to(device).eval(), info


def device_data(meta: dict, split: PreparedSplit, device):
    from kdprune.train import DeviceData

    return DeviceData.from_numpy(split.x, split.y, meta["mean"], meta["std"], device)
