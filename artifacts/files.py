"""Atomic writes (temp file + rename, so readers see old or new, never half) and file hashes."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


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


def atomic_save_npy(path: Path, arr) -> None:
    buf = io.BytesIO()
    import numpy as np  # here, not at import: entrypoints pin NumPy's kernels before it loads

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


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    return _file_digest(path, "sha256")


def md5_file(path: Path) -> str:
    """DVC 3's hash of a single file (md5 of its bytes)."""
    return _file_digest(path, "md5")


def combined_sha256(file_hashes: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(file_hashes):
        h.update(f"{name}:{file_hashes[name]}\n".encode())
    return h.hexdigest()


class IntegrityError(RuntimeError):
    """A file's content does not match the hash recorded for it."""
