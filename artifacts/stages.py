"""The stage artifacts, each with its reader and writer, checked against their hashes and the sample
ids they are keyed by: prepared data (``data/prepared/<dataset>``), the teacher's per-sample
dynamics (``models/teacher/dynamics``), score files (``data/scores``: ids and values written and
verified together), and index manifests (``data/manifests``). Model directories (safetensors +
model.json) have theirs in artifacts/models.py.

Every per-sample array is keyed by the train split's sample ids: a writer stores the ids beside the
values, and a reader refuses values whose ids are not the prepared train split's, in its order,
naming the stage to re-run."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from kdprune.data import PreparedSplit
from artifacts.files import IntegrityError, atomic_save_npy, atomic_write_json, load_json, load_npy, sha256_file


SPLITS = ("train", "val", "test")
# the files of each split: pixels in memory, or the index of a streamed dataset (meta.json "loader": "stream")
PARTS = {"memory": ("x", "y", "ids"), "stream": ("files", "sizes", "y", "ids")}


def prepared_dir(root: Path, dataset: str) -> Path:
    return Path(root) / "data" / "prepared" / dataset


@functools.lru_cache(maxsize=4)
def _load_prepared_cached(path: str, sha: str) -> tuple[dict, dict[str, PreparedSplit]]:
    d = Path(path)
    meta = load_json(d / "meta.json")
    splits = {}
    for s in SPLITS:
        arrays = {}
        for part in PARTS[meta.get("loader", "memory")]:
            f = d / f"{s}_{part}.npy"
            want = meta["files"].get(f.name)
            got = sha256_file(f)
            if got != want:
                raise IntegrityError(
                    f"{f} is corrupt or was changed: sha256 {got[:12]}... differs from meta.json's {str(want)[:12]}...; "
                    "re-create it with `dvc repro prepare` (or `dvc checkout`)"
                )
            arrays[part] = np.load(f, allow_pickle=False)
        splits[s] = PreparedSplit(**{"x": None, **arrays})
    return meta, splits


def load_prepared(root: Path, dataset: str) -> tuple[dict, dict[str, PreparedSplit]]:
    """Meta and splits of a prepared dataset, each file checked against its recorded sha256. A streamed
    dataset's splits hold its index (files, sizes, labels, ids) and no pixels (``split.x`` None)."""
    d = prepared_dir(root, dataset)
    if not (d / "meta.json").exists():
        raise FileNotFoundError(f"{d} has no prepared data; run `dvc repro prepare` first")
    meta = load_json(d / "meta.json")
    return _load_prepared_cached(str(d), meta["sha256"])


def ids_sha256(ids) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


def _check_keyed(path: Path, train: PreparedSplit, stage: str) -> np.ndarray:
    """The ids stored at ``path``, checked to be the train split's, in its order."""
    ids = load_npy(path)
    if not np.array_equal(ids, train.ids):
        raise IntegrityError(f"{path} does not match the prepared train split's sample ids; re-run `dvc repro {stage}`")
    return ids


# ---------------------------------------------------------------- the teacher's dynamics

def dynamics_work_dir(checkpoint_path: Path) -> Path:
    """Where a training run writes its dynamics epoch by epoch (kdprune.train.metrics.FileColumns): beside
    its checkpoint, outside every DVC out, and removed with it once the stage's outputs are in place."""
    p = Path(checkpoint_path)
    return p.with_name(p.stem + ".dynamics")


def _save_npy(path: Path, values: np.ndarray) -> None:
    """``values`` as ``path`` (atomically): an array saved with np.save, or, for a read-only memory map of a
    whole .npy file (the dynamics a run wrote to disk as it trained), that file's bytes copied (the same
    bytes np.save writes; the array is never read into memory)."""
    if isinstance(values, np.memmap) and values.filename and _whole_npy(values):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(values.filename, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        atomic_save_npy(path, values)


def _whole_npy(values: np.memmap) -> bool:
    """Whether ``values`` maps all of its file: header then exactly its bytes, C order."""
    size = os.path.getsize(values.filename)
    return (values.flags.c_contiguous and values.offset + values.nbytes == size
            and np.lib.format.open_memmap(values.filename, mode="r").shape == values.shape)


def write_dynamics(directory: Path, ids: np.ndarray, dynamics) -> None:
    """The teacher's training dynamics, rows in the order of ``ids`` (saved beside them as ``ids.npy``):
    the logits per epoch, (epochs, samples, classes) as float16 in ``logits.npy``; or per-example
    statistics (a dict name -> (epochs, samples) array, kdprune.train.metrics.STATS), one
    ``stats/<name>.npy`` each in its own dtype, epochs x samples x (bytes of the statistics) in all.
    Arrays the run wrote to files as it trained (memory maps) are copied file to file."""
    directory = Path(directory)
    if isinstance(dynamics, dict):
        for name, values in dynamics.items():
            if values.ndim != 2 or values.shape[1] != len(ids):
                raise ValueError(f"dynamics statistic {name}: shape {values.shape}, expected (epochs, {len(ids)})")
        (directory / "stats").mkdir(parents=True, exist_ok=True)
        for name, values in dynamics.items():
            _save_npy(directory / "stats" / f"{name}.npy", values)
    else:
        if dynamics.shape[1] != len(ids):
            raise ValueError(f"dynamics: {dynamics.shape[1]} rows for {len(ids)} sample ids")
        directory.mkdir(parents=True, exist_ok=True)
        _save_npy(directory / "logits.npy", dynamics if dynamics.dtype == np.float16 else dynamics.astype(np.float16))
    atomic_save_npy(directory / "ids.npy", ids)


def dynamics_kind(teacher_dir: Path) -> str:
    """What the teacher at ``teacher_dir`` recorded: ``"logits"`` or ``"stats"``."""
    d = Path(teacher_dir) / "dynamics"
    if (d / "logits.npy").exists():
        return "logits"
    if (d / "stats").is_dir():
        return "stats"
    raise FileNotFoundError(f"{d} holds no dynamics (logits.npy or stats/); re-run `dvc repro teacher`")


def read_dynamics(teacher_dir: Path, train: PreparedSplit) -> np.ndarray:
    """The teacher's dynamics as logits (float32), checked to be keyed by the prepared train split."""
    d = Path(teacher_dir) / "dynamics"
    if not (d / "logits.npy").exists() and (d / "stats").is_dir():
        raise IntegrityError(f"{d} holds per-example statistics, not the full logits (the teacher ran with "
                             "teacher.dynamics: stats, or auto on a large dataset); set teacher.dynamics: logits "
                             "and re-run `dvc repro teacher`")
    ids, logits = _check_keyed(d / "ids.npy", train, "teacher"), load_npy(d / "logits.npy")
    if logits.shape[1] != len(ids):
        raise IntegrityError(f"{d}: {logits.shape[1]} rows for {len(ids)} sample ids; re-run `dvc repro teacher`")
    return logits.astype(np.float32)


def read_dynamics_stats(teacher_dir: Path, train: PreparedSplit, names) -> dict[str, np.ndarray]:
    """The statistics ``names`` of the teacher's dynamics, each (epochs, samples) memory-mapped (read only:
    only the pages a score touches are read), checked to be keyed by the prepared train split."""
    d = Path(teacher_dir) / "dynamics"
    ids = _check_keyed(d / "ids.npy", train, "teacher")
    out, epochs = {}, set()
    for name in names:
        values = load_npy(d / "stats" / f"{name}.npy", mmap_mode="r")
        if values.ndim != 2 or values.shape[1] != len(ids):
            raise IntegrityError(f"{d / 'stats' / name}.npy has shape {values.shape}, expected (epochs, {len(ids)}); "
                                 "re-run `dvc repro teacher`")
        out[name] = values
        epochs.add(values.shape[0])
    if len(epochs) > 1:
        raise IntegrityError(f"{d / 'stats'}: statistics of different epoch counts {sorted(epochs)}; "
                             "re-run `dvc repro teacher`")
    return out


# ---------------------------------------------------------------- score files

@dataclass(frozen=True)
class Score:
    """One score file: its values (one per train example, in the split's order), its JSON (method,
    keep end, variant, options, recipe, hashes) and the sha256 of its values' file."""
    stem: str
    values: np.ndarray
    info: dict
    sha256: str


class ScoreWriter:
    """Writes a scores directory: ``ids.npy`` once, then per score ``<stem>.npy`` (the values) and
    ``<stem>.json`` (``info`` plus the count, the values' sha256 and the dataset's), together."""

    def __init__(self, directory: Path, ids: np.ndarray, meta: dict):
        self.dir, self.ids, self.dataset_sha256 = Path(directory), ids, meta["sha256"]
        atomic_save_npy(self.dir / "ids.npy", ids)

    def write(self, stem: str, values: np.ndarray, info: dict) -> dict:
        if values.shape != (len(self.ids),):
            raise ValueError(f"score {stem}: shape {values.shape}, expected one value per train example ({len(self.ids)},)")
        atomic_save_npy(self.dir / f"{stem}.npy", values)
        full = {**info, "n": int(len(values)), "sha256": sha256_file(self.dir / f"{stem}.npy"),
                "dataset_sha256": self.dataset_sha256}
        atomic_write_json(self.dir / f"{stem}.json", full)
        return full


class ScoreReader:
    """Reads a scores directory written by :class:`ScoreWriter`; refuses one whose ids are not the
    prepared train split's, and a score whose values or dataset differ from its JSON."""

    def __init__(self, directory: Path, meta: dict, train: PreparedSplit):
        self.dir, self.meta = Path(directory), meta
        _check_keyed(self.dir / "ids.npy", train, "scores")

    def read(self, stem: str) -> Score:
        info = load_json(self.dir / f"{stem}.json")
        sha = sha256_file(self.dir / f"{stem}.npy")
        if sha != info["sha256"] or info["dataset_sha256"] != self.meta["sha256"]:
            raise IntegrityError(f"{self.dir / stem}.npy does not match its {stem}.json (score or dataset sha256 "
                                 "differs); re-run `dvc repro scores`")
        values = load_npy(self.dir / f"{stem}.npy")
        if values.shape != (info["n"],):
            raise IntegrityError(f"{self.dir / stem}.npy has shape {values.shape}, its JSON says n={info['n']}; "
                                 "re-run `dvc repro scores`")
        return Score(stem, values, info, sha)


# ---------------------------------------------------------------- manifests

def write_manifest(path: Path, fields: dict[str, Any], kept: np.ndarray, train: PreparedSplit,
                   num_classes: int) -> dict:
    """An index manifest: ``fields`` (method, fraction, seed, selector, ...) plus the kept sample
    ids (sorted, unique, all in the train split), their count, class counts and sha256."""
    kept = np.asarray(kept, dtype=np.int64)
    if len(kept) > 1 and not (np.diff(kept) > 0).all():
        raise ValueError(f"manifest {Path(path).name}: kept ids must be sorted and unique")
    labels = train.y[train.positions(kept)]  # unknown ids are an error here
    manifest = {**fields, "n": int(len(kept)), "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
                "ids": kept.tolist(), "ids_sha256": ids_sha256(kept)}
    manifest["sha256"] = manifest_sha256(manifest)
    atomic_write_json(path, manifest)
    return manifest


def manifest_sha256(m: dict) -> str:
    """The sha256 that covers everything a manifest says (method, fraction, seed, options, counts, weights,
    ids...): of its JSON without this field, keys sorted, compact. Editing any field breaks it."""
    body = {k: v for k, v in m.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_REBUILD_MANIFEST = "it is written by the select stage: re-create it with `dvc repro select` (or `kdprune select`)"


def load_manifest(path: Path, meta: Optional[dict] = None, split_ids: Optional[np.ndarray] = None) -> dict:
    """Read an index manifest, checking its ids against their sha256, every other field against the
    manifest's own ``sha256``, given ``meta`` its dataset hash, and given ``split_ids`` (the prepared
    train split's) that each id is a sample of that split."""
    path = Path(path)
    try:
        m = json.loads(path.read_text())
        ids, want = m["ids"], m["ids_sha256"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise IntegrityError(f"{path} is not a valid manifest ({type(e).__name__}: {e}); {_REBUILD_MANIFEST}") from None
    if ids_sha256(ids) != want:
        raise IntegrityError(f"{path}: its sample ids do not match the manifest's ids_sha256 (file corrupted or "
                             f"edited); {_REBUILD_MANIFEST}")
    if m.get("sha256") != manifest_sha256(m):
        what = "has no sha256 (written by an older kdprune)" if "sha256" not in m else \
            "does not match its sha256: a field was edited or corrupted (fraction, method, counts, ...)"
        raise IntegrityError(f"{path} {what}; {_REBUILD_MANIFEST}")
    if meta is not None and m.get("dataset_sha256") != meta["sha256"]:
        raise IntegrityError(
            f"{path} was selected on dataset sha256 {str(m.get('dataset_sha256'))[:12]}... but the prepared "
            f"{meta['dataset']} is {meta['sha256'][:12]}...; re-run `dvc repro select` (or restore that dataset)"
        )
    if split_ids is not None:
        arr = np.asarray(ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(split_ids, arr), 0, max(len(split_ids) - 1, 0))
        bad = arr[split_ids[pos] != arr] if len(split_ids) else arr
        if len(bad):
            raise IntegrityError(f"{path}: {len(bad)} sample ids are not in the prepared train split, e.g. "
                                 f"{bad[:5].tolist()}; {_REBUILD_MANIFEST}")
    return m
