"""Bad files and a full disk give errors that name the file, the stage that writes it and the command
that re-creates it; temp files a killed writer left are removed by the next writer; a corrupt
``mlflow.db`` stops a command with exit code 3 and advice about the project's own store."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bench.project import REPO, make_project
from kdprune.data import PreparedSplit
from artifacts.files import IntegrityError, atomic_save_npy, atomic_write_json


@pytest.fixture
def proj(tmp_path):
    """A directory laid out like the project (its dvc.yaml says which stage writes what)."""
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    return tmp_path


def test_a_corrupt_model_json_names_the_file_its_stage_and_the_command(proj):
    from artifacts.models import load_model

    d = proj / "models" / "teacher"
    d.mkdir(parents=True)
    (d / "model.json").write_text('{"arch": "small_cnn", "in_ch')  # cut short
    with pytest.raises(IntegrityError, match=r"models/teacher/model\.json is corrupt: not JSON .*written by the "
                                             r"teacher stage: re-create it with `dvc repro teacher`"):
        load_model(d, "cpu")
    s = proj / "models" / "students" / "random-0.1-0"
    s.mkdir(parents=True)
    (s / "model.json").write_text("[]")
    with pytest.raises(IntegrityError, match=r"random-0\.1-0/model\.json is corrupt.*`dvc repro distill`"):
        load_model(s, "cpu")


def test_a_truncated_logits_npy_names_the_file_its_stage_and_the_command(proj):
    from artifacts.stages import read_dynamics, write_dynamics

    ids = np.arange(10, 30, 2, dtype=np.int64)
    train = PreparedSplit(np.zeros((10, 1, 2, 2), np.uint8), np.zeros(10, np.int64), ids)
    tdir = proj / "models" / "teacher"
    write_dynamics(tdir / "dynamics", ids, np.ones((2, 10, 3), np.float32))
    f = tdir / "dynamics" / "logits.npy"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(IntegrityError, match=r"dynamics/logits\.npy is truncated or corrupt .*teacher stage: "
                                             r"re-create it with `dvc repro teacher`"):
        read_dynamics(tdir, train)


def test_a_full_disk_names_the_path_and_leaves_the_old_file(proj, monkeypatch):
    target = proj / "reports" / "metrics.json"
    atomic_write_json(target, {"old": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("artifacts.files.os.fsync", full)
    with pytest.raises(OSError, match=r"No space left on device while writing .*reports/metrics\.json; free space"):
        atomic_write_json(target, {"new": 2})
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]  # no temp file left


def test_stale_temp_files_of_a_killed_writer_are_removed_by_the_next_writer(proj):
    reports = proj / "reports"
    reports.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    planted = [reports / ".metrics.json.k2x9_abc.tmp",  # an older kdprune's (no pid)
               reports / f".metrics.json.{dead}-q1w2e3.tmp"]  # its writer is gone
    live = reports / f".metrics.json.{os.getpid()}-live.tmp"  # a writer that still runs: left alone
    other = reports / ".report.md.k2x9_abc.tmp"  # another file's: its own writer cleans it
    for p in (*planted, live, other):
        p.write_text("half")
    atomic_write_json(reports / "metrics.json", {"a": 1})
    assert not any(p.exists() for p in planted)
    assert live.exists() and other.exists()
    atomic_save_npy(reports / "x.npy", np.zeros(3))
    assert sorted(p.name for p in reports.iterdir()) == sorted(
        [".metrics.json." + live.name.split(".metrics.json.")[1], ".report.md.k2x9_abc.tmp", "metrics.json", "x.npy"])


def test_a_corrupt_mlflow_db_exits_3_naming_the_file_and_the_recovery(tmp_path):
    p = make_project(tmp_path / "p", port=1)
    db = p.path / "mlflow.db"
    db.write_bytes(b"this is not a database" * 100)
    out = p.run(sys.executable, "-m", "flows", "prepare", check=False, timeout=120)
    if (p.path / ".prefect").exists():  # it got as far as starting the project's Prefect server: stop it
        p.run(sys.executable, "-m", "flows", "stop", check=False, timeout=60)
    assert out.returncode == 3, out.stdout + out.stderr
    assert f"the MLflow store {db} cannot be read" in out.stderr and "make setup" in out.stderr, out.stderr
    assert "unset MLFLOW_TRACKING_URI" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (p.path / "data").exists()  # stopped before any compute
