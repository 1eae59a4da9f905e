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


def _remove_stale_temps(path: Path) -> None:
    """Remove the temp files of ``path`` that a killed writer left: ``.<name>.<pid>-<random>.tmp`` whose
    process is gone, and any ``.<name>.*.tmp`` file without a pid (an older kdprune's). A live writer's
    (another process or thread writing the same file) is left alone."""
    prefix = f".{path.name}."
    try:
        entries = [e for e in os.scandir(path.parent) if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    except OSError:
        return
    for e in entries:
        pid = e.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and "-" in e.name[len(prefix):] and _pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if e.is_file(follow_symlinks=False):
                os.unlink(e.path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write to a temp file beside ``path`` and rename it over ``path``: readers see old or new, never half.
    Temp files a killed writer left beside ``path`` are removed first; an error of the filesystem (a full
    disk: "No space left on device" names no file) is raised naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            raise OSError(e.errno, f"{e.strerror} while writing {path}; free space (or fix the filesystem) "
                                   f"there and run the command again: nothing half-written was left", str(path)) from e
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


def rebuild_hint(path: Path) -> str:
    """Which stage writes ``path`` (from the project's dvc.yaml: the stage whose out holds it) and the
    command that re-creates it, for an error about a missing or corrupt file."""
    path = Path(path).resolve()
    root = next((d for d in path.parents if (d / "dvc.yaml").exists()), None)
    if root is None:
        return "re-create it with `dvc repro` (or `make run`)"
    import re

    import yaml

    rel = path.relative_to(root).as_posix()
    best, best_len = None, -1
    for name, stage in (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {}).items():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []) or []:
                o = out if isinstance(out, str) else next(iter(out))
                head = re.split(r"\$\{", o)[0]
                hit = rel.startswith(head) if "${" in o else (rel == o or rel.startswith(o.rstrip("/") + "/"))
                if hit and len(head) > best_len:
                    best, best_len = name, len(head)
    if best is None:
        return "re-create it with `dvc repro` (or `make run`)"
    return f"it is written by the {best} stage: re-create it with `dvc repro {best}` (or `make run`)"


def load_npy(path: Path, mmap_mode=None):
    """``np.load`` (no pickle; ``mmap_mode`` as np.load's) of one of the pipeline's arrays; a truncated or
    corrupt file is an IntegrityError naming it, the stage that writes it and the command that re-creates it."""
    import numpy as np  # here, not at import: entrypoints pin NumPy's kernels before it loads

    try:
        return np.load(path, allow_pickle=False, mmap_mode=mmap_mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; {rebuild_hint(path)}") from None
    except (ValueError, EOFError, OSError) as e:
        raise IntegrityError(f"{path} is truncated or corrupt ({e}); {rebuild_hint(path)}") from None


def load_json(path: Path) -> Any:
    """A JSON file of the pipeline's; one that is not JSON is an IntegrityError naming it, its stage and
    the command that re-creates it."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; {rebuild_hint(path)}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{path} is corrupt: not JSON ({e}); {rebuild_hint(path)}") from None
