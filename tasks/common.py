"""File I/O shared by the stage tasks: params, atomic writes, hashes, prepared data, provenance."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import yaml

from kdprune.config import ParamsError, validate
from kdprune.data import PreparedSplit

SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------- stage work clock

def timed_work(fn):
    """Wrap a stage task's body: its result dict gets ``work_s``, the seconds it ran minus the
    seconds it waited on MLflow. That is the stage's own work (reading inputs, training, scoring,
    selecting, evaluating, writing outputs); everything else a stage costs is orchestration."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import time

        from tasks.tracking import blocked_seconds

        t0, b0 = time.perf_counter(), blocked_seconds()
        out = fn(*args, **kwargs)
        out["work_s"] = max(0.0, time.perf_counter() - t0 - (blocked_seconds() - b0))
        return out

    return wrapper


def drop_checkpoints(results: list[dict]) -> None:
    """Once a stage's outputs are in place, its tasks' per-epoch states are no longer needed."""
    for r in results:
        Path(r["checkpoint"]).unlink(missing_ok=True)


def work_seconds(results) -> float:
    """The stage's work: the sum over its task results (tasks of one stage run one at a time per device)."""
    return float(sum(r["work_s"] for r in results))


# ---------------------------------------------------------------- params

def load_params(root: Path | str, stage: Optional[str] = None) -> dict:
    """Read and validate ``params.yaml``; raise ParamsError naming every bad key. With ``stage``, names
    are checked only against the registries that stage uses (kdprune.config.STAGE_NAMES)."""
    path = Path(root) / "params.yaml"
    if not path.exists():
        raise ParamsError(f"{path} not found: run from the project directory (the one with params.yaml)")
    return validate(parse_params_text(path, path.read_text()), stage)


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k, "<missing>") != b.get(k, "<missing>"):
                return _first_difference(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{where}.{k}" if where else str(k))
    return f"{where or 'the file'}: {a!r} here, {b!r} for DVC"


def parse_params_text(path: Path, text: str) -> dict:
    """A params file's YAML, read as kdprune reads it (PyYAML) and checked to read the same under the
    parser DVC uses (ruamel, YAML 1.2): an unquoted ``random:global`` inside ``[...]`` or a bare ``yes``
    parses under one and not (or differently) under the other, and DVC would then fail or track
    other values than the ones validated."""
    from ruamel.yaml import YAML
    from ruamel.yaml import YAMLError as RuamelError

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {e}") from None
    try:
        theirs = YAML(typ="safe").load(text)
    except RuamelError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ParamsError(f"{path}: DVC's YAML parser cannot read it{at}: {getattr(e, 'problem', None) or e}. "
                          "A value holding ':' inside [...] must be quoted, e.g. ['random', 'random:global']") from None
    if theirs != raw:
        raise ParamsError(f"{path} reads differently under DVC's YAML parser (YAML 1.2) at "
                          f"{_first_difference(raw, theirs)}; quote the value or write true/false") from None
    return raw


def inside(root: Path, rel: str | Path) -> Path:
    """Resolve an output path from params, refusing anything that escapes the project."""
    root = Path(root).resolve()
    p = (root / rel).resolve()
    if p != root and root not in p.parents:
        raise ParamsError(f"path {str(rel)!r} leaves the project directory {root}; use a path inside it")
    return p


# ---------------------------------------------------------------- profiles and overrides

PROFILES = "profiles"


def profile_names(root: Path) -> list[str]:
    return sorted(p.stem for p in (Path(root) / PROFILES).glob("*.yaml"))


def parse_override(text: str) -> tuple[list[str], object]:
    """``student.kd_weights=[0.3,0.9]`` -> (["student", "kd_weights"], [0.3, 0.9]); the value is YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {text!r} is not KEY=VALUE (e.g. student.seeds=[0,1,2])")
    try:
        return key.strip().split("."), yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ParamsError(f"override {text!r}: the value is not valid YAML: {e}") from None


def sweep_params(root: Path, profile: Optional[str], overrides: list[str]) -> dict:
    """The params a sweep runs with: the profile (or the current params.yaml) plus the overrides, validated."""
    root = Path(root)
    if profile:
        src = root / PROFILES / f"{profile}.yaml"
        if not src.exists():
            raise ParamsError(f"no profile {profile!r} in {root / PROFILES}; available: "
                              f"{', '.join(profile_names(root))}")
    else:
        src = root / "params.yaml"
    raw = parse_params_text(src, src.read_text()) or {}
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for k in path[:-1]:
            if not isinstance(node.setdefault(k, {}), dict):
                raise ParamsError(f"override {text!r}: {k} is not a section")
            node = node[k]
        node[path[-1]] = value
    validate(raw)  # every problem named before anything is written
    return raw


def write_params(root: Path, raw: dict, origin: str, profile: Optional[str] = None, overrides=()) -> bool:
    """Write params.yaml (atomically) if it differs; True when it changed. A profile without
    overrides is copied verbatim (its comments too)."""
    path = Path(root) / "params.yaml"
    if profile and not overrides:
        text = (Path(root) / PROFILES / f"{profile}.yaml").read_text()
    else:
        text = (f"# kdprune params written by `{origin}`; every key is validated before any compute\n"
                "# (kdprune/config.py). Restore the default profile with `make profile NAME=digits`.\n"
                + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None))
    old = yaml.safe_load(path.read_text()) if path.exists() else None
    if old == raw:
        return False
    atomic_write_text(path, text)
    return True



# ---------------------------------------------------------------- atomic writes

def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write to a temp file beside ``path`` and rename it over ``path``: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
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
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed earlier run
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
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


# ---------------------------------------------------------------- manifests

def ids_sha256(ids) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


def load_manifest(path: Path, meta: dict | None = None) -> dict:
    """Read an index manifest, checking its ids against their sha256 and, given ``meta``, its dataset hash."""
    path = Path(path)
    try:
        m = json.loads(path.read_text())
        ids, want = m["ids"], m["ids_sha256"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise IntegrityError(f"{path} is not a valid manifest ({type(e).__name__}: {e}); "
                             "re-create it with `dvc repro select`") from None
    if ids_sha256(ids) != want:
        raise IntegrityError(f"{path}: its sample ids do not match the manifest's ids_sha256 (file corrupted or "
                             "edited); re-create it with `dvc repro select`")
    if meta is not None and m.get("dataset_sha256") != meta["sha256"]:
        raise IntegrityError(
            f"{path} was selected on dataset sha256 {str(m.get('dataset_sha256'))[:12]}... but the prepared "
            f"{meta['dataset']} is {meta['sha256'][:12]}...; re-run `dvc repro select` (or restore that dataset)"
        )
    return m


# ---------------------------------------------------------------- provenance

@functools.lru_cache(maxsize=8)
def git_commit(root: Path) -> str:
    """HEAD (with -dirty for uncommitted tracked changes), read once per process: a run does not commit."""
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
    for attempt in range(50):  # DVC rewrites dvc.lock in place: the pipeline's commit of the previous
        if not lock.exists():  # stage may be writing it right now (seen under `pipeline --force`)
            return None
        try:
            data = yaml.safe_load(lock.read_text()) or {}
            break
        except yaml.YAMLError:
            if attempt == 49:
                raise
            time.sleep(0.05)
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


# ---------------------------------------------------------------- checkpoints (resume after a crash)

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
