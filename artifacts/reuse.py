"""Trained models that did not change, found again instead of retrained.

A model directory that a stage may reuse holds a key file (``training.json``): the sha256 of everything
that determined its bytes (its ``inputs``: data, settings, teacher, compute, and the stage's code),
the sha256 of its files, and the training's result. A stage looks for its wanted keys among the model
directories of its out in the workspace (kept there by DVC's ``persist``) and in every directory out DVC
has cached (so an experiment or commit checked out and back, or a `dvc exp run`, still finds them), and
copies a match, checked against its recorded hashes, instead of training it again.

The code of a stage is what dvc.yaml lists as its code deps (tests/test_lineage.py checks that list
against the stage's imports): its hash is part of every key, so a change to any file the stage runs
retrains everything, and a change anywhere else (an output-neutral module, another stage) nothing.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from artifacts.files import atomic_write_json, sha256_file

KEY_FILE = "training.json"
IGNORED = ("__pycache__",)  # as .dvcignore: interpreter caches are not code
IGNORED_SUFFIXES = (".pyc",)


def code_deps(root: Path, stage: str) -> list[str]:
    """The code a stage runs, as dvc.yaml lists it: its deps that lie in a Python package of the project
    (a top-level directory with an ``__init__.py``), data deps left out."""
    import yaml

    root = Path(root)
    spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]
    return [d for d in spec.get("deps", []) if "${" not in d and (root / d.split("/")[0] / "__init__.py").is_file()]


def code_sha256(root: Path, stage: str) -> str:
    """One sha256 over the files of the stage's code deps (:func:`code_deps`; directories recursively, as
    DVC hashes them, without interpreter caches): relative path and content hash of each, sorted."""
    root = Path(root)
    files: set[Path] = set()
    for d in code_deps(root, stage):
        p = root / d
        if p.is_file():
            files.add(p)
        elif p.is_dir():
            files.update(f for f in p.rglob("*") if f.is_file() and not any(part in IGNORED for part in f.parts)
                         and f.suffix not in IGNORED_SUFFIXES)
        else:
            raise FileNotFoundError(f"dvc.yaml stage {stage!r} depends on {d}, which does not exist")
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
        h.update(f"{f.relative_to(root).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def write_key(directory: Path, key: str, inputs: dict, result: dict, files: tuple[str, ...]) -> None:
    """The key file of a trained model's ``directory``: ``key``, the ``inputs`` it hashes, the ``result``
    of the training (what its records are rebuilt from) and the sha256 of each of ``files``."""
    directory = Path(directory)
    atomic_write_json(directory / KEY_FILE, {"key": key, "inputs": inputs, "result": result,
                                             "sha256": {f: sha256_file(directory / f) for f in files}})


@dataclass(frozen=True)
class Earlier:
    """A model directory with a wanted key, found in ``where`` (``models/students/<name>`` or ``DVC cache
    <dir hash>/<name>``): its key file's content and where each of its files can be copied from."""

    where: str
    record: dict
    files: dict[str, Path]

    @property
    def result(self) -> dict:
        return self.record["result"]

    def copy_to(self, directory: Path) -> bool:
        """Copy the model's files and its key file into ``directory``; False, with nothing copied, when a
        file is missing or its hash is not the one its key file recorded."""
        want = self.record.get("sha256", {})
        if not want or set(want) - set(self.files) or KEY_FILE not in self.files:
            return False
        try:
            if any(sha256_file(self.files[f]) != h for f, h in want.items()):
                return False
        except OSError:
            return False
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for f in (*want, KEY_FILE):
            shutil.copyfile(self.files[f], directory / f)
        return True


def _key_record(text: str) -> Optional[dict]:
    try:
        rec = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("key"), str) else None


def in_workspace(out: Path, keys: set[str], label: str = "") -> Iterator[Earlier]:
    """Model directories under ``out`` (``out/<name>/training.json``) whose key is one of ``keys``; ``label``:
    how ``out`` is named in their ``where`` (default: its path)."""
    out = Path(out)
    label = label or out.as_posix()
    if not out.is_dir():
        return
    for d in sorted(p for p in out.iterdir() if p.is_dir()):
        try:
            rec = _key_record((d / KEY_FILE).read_text())
        except OSError:
            continue
        if rec is not None and rec["key"] in keys:
            yield Earlier(f"{label}/{d.name}", rec, {f.name: f for f in d.iterdir() if f.is_file()})


def in_dvc_cache(root: Path, keys: set[str]) -> Iterator[Earlier]:
    """Model directories with one of ``keys`` in any directory out DVC has cached: every ``.dir`` listing
    of the project's cache that holds ``<name>/training.json`` (nothing when the project is no DVC repo)."""
    try:
        from dvc.exceptions import NotDvcRepoError
        from dvc.repo import Repo
    except ImportError:
        return
    try:
        repo = Repo(str(root))
    except NotDvcRepoError:
        return
    with repo:
        odb = repo.cache.local
        if odb is None:
            return
        for oid in sorted(o for o in odb.all() if o.endswith(".dir")):
            try:
                listing = json.loads(Path(odb.oid_to_path(oid)).read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                continue
            dirs: dict[str, dict[str, Path]] = {}
            for e in listing if isinstance(listing, list) else []:
                parts = str(e.get("relpath", "")).split("/")
                if len(parts) == 2 and e.get("md5"):
                    dirs.setdefault(parts[0], {})[parts[1]] = Path(odb.oid_to_path(e["md5"]))
            for name, files in sorted(dirs.items()):
                if KEY_FILE not in files:
                    continue
                try:
                    rec = _key_record(files[KEY_FILE].read_text())
                except OSError:
                    continue
                if rec is not None and rec["key"] in keys:
                    yield Earlier(f"DVC cache {oid.removesuffix('.dir')[:8]}/{name}", rec, files)


def find_earlier(root: Path, out: Path, keys: set[str]) -> dict[str, Earlier]:
    """Per wanted key, one earlier model directory with it: from the workspace's ``out`` first, then from
    the DVC cache for the keys still missing."""
    found: dict[str, Earlier] = {}
    for e in in_workspace(out, keys, Path(out).relative_to(root).as_posix() if Path(out).is_relative_to(root) else ""):
        found.setdefault(e.record["key"], e)
    missing = keys - found.keys()
    if missing:
        for e in in_dvc_cache(root, missing):
            found.setdefault(e.record["key"], e)
    return found
