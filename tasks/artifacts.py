"""The stage artifacts every stage reads: prepared data and index manifests, checked against their hashes."""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from kdprune.data import PreparedSplit
from tasks.files import IntegrityError, sha256_file


SPLITS = ("train", "val", "test")


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
