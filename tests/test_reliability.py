"""Fault tests: kill -9 and resume, atomic outputs, integrity, concurrent and failing tracking, safety."""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY, _free_port, clean_env, make_project

pytestmark = pytest.mark.integration

TEACHER_EPOCHS = 25
PARAMS = {**TINY, "teacher": {"epochs": TEACHER_EPOCHS, "batch_size": 32}}


@pytest.fixture(scope="module")
def proj(tmp_path_factory, prefect_port):
    port, home = prefect_port
    p = make_project(tmp_path_factory.mktemp("rel") / "kdp", port, PARAMS)
    p.env["PREFECT_HOME"] = str(home)
    p.run(sys.executable, "-m", "flows", "prepare")
    return p


def _stage(proj, name, check=True, env=None):
    return proj.run(sys.executable, "-m", "flows", name, check=check, env=env)


def _teacher_snapshot(root: Path) -> dict:
    d = root / "models" / "teacher"
    m = json.loads((d / "metrics.json").read_text())
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in m["history"]]
    return {"weights": (d / "model.safetensors").read_bytes(), "dynamics": (d / "dynamics" / "logits.npy").read_bytes(),
            "history": history, "val_acc": m["val_acc"], "best_epoch": m["best_epoch"]}


def _ckpt_epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def test_teacher_resumes_after_kill_9_and_equals_an_uninterrupted_run(proj):
    _stage(proj, "teacher")
    reference = _teacher_snapshot(proj.path)
    ckpt_dir = proj.path / ".kdprune" / "checkpoints" / "teacher"
    assert not list(ckpt_dir.glob("*.pt"))  # cleared once the outputs were in place
    import shutil

    shutil.rmtree(proj.path / "models" / "teacher")
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    p = subprocess.Popen([sys.executable, "-m", "flows", "teacher"], cwd=proj.path, env=proj.env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(ckpt_dir.glob("*.pt")) and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 1.0))  # a random point in the epochs that follow
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    ckpts = list(ckpt_dir.glob("*.pt"))
    assert len(ckpts) == 1, f"no checkpoint to resume from (seed {seed})"
    killed_after = _ckpt_epoch(ckpts[0])
    assert 1 <= killed_after < TEACHER_EPOCHS, f"killed too late (epoch {killed_after}, seed {seed})"
    assert not (proj.path / "models" / "teacher").exists()  # no partial output
    out = _stage(proj, "teacher")
    assert f"after epoch {killed_after}" in out.stdout + out.stderr
    resumed = _teacher_snapshot(proj.path)
    assert resumed == reference, f"resumed run differs from the uninterrupted one (seed {seed})"
    assert not list(ckpt_dir.glob("*.pt"))


def _students(root: Path) -> dict:
    out = {}
    for d in sorted((root / "models" / "students").iterdir()):
        if d.is_dir():
            m = json.loads((d / "metrics.json").read_text())
            out[d.name] = ((d / "model.safetensors").read_bytes(), m["val_acc"], m["steps"])
    return out


def test_prefect_retry_of_a_failed_student_resumes_from_its_checkpoint(proj):
    _stage(proj, "scores")
    _stage(proj, "select")
    _stage(proj, "distill")
    reference = _students(proj.path)
    assert len(reference) == 12
    # trained, not reused; the Ray workers' lines (the fault, the resume) copied to this output
    out = _stage(proj, "distill", env={"KDPRUNE_FAULT": "distill:3", "KDPRUNE_RETRAIN": "1", "RAY_LOG_TO_DRIVER": "1"})
    text = out.stdout + out.stderr
    assert "injected fault after distill epoch 3" in text
    assert "Retry 1/1 will start" in text or "AwaitingRetry" in text
    assert "after epoch 3" in text  # the retry resumed rather than restarted
    assert _students(proj.path) == reference


def _check_outs_complete(root: Path) -> list[str]:
    """Every stage output that exists is whole; returns the outputs found."""
    from artifacts.stages import load_manifest
    from artifacts.files import sha256_file

    found = []
    prepared = root / "data" / "prepared" / "digits"
    if prepared.exists():
        meta = json.loads((prepared / "meta.json").read_text())
        for name, sha in meta["files"].items():
            assert sha256_file(prepared / name) == sha, name
        found.append("prepared")
    teacher = root / "models" / "teacher"
    if teacher.exists():
        json.loads((teacher / "metrics.json").read_text())
        np.load(teacher / "dynamics" / "logits.npy")
        found.append("teacher")
    scores = root / "data" / "scores"
    if scores.exists():
        for e in json.loads((scores / "index.json").read_text()):
            np.load(scores / e["file"])
        found.append("scores")
    manifests = root / "data" / "manifests"
    if manifests.exists():
        for f in manifests.glob("*.json"):
            load_manifest(f)
        found.append("manifests")
    students = root / "models" / "students"
    if students.exists():
        index = json.loads((students / "index.json").read_text())
        for s in index:
            json.loads((students / s["name"] / "metrics.json").read_text())
            assert (students / s["name"] / "model.safetensors").stat().st_size > 0
        found.append("students")
    for rel in ("data/prepared/digits", "models/teacher", "models/teachers", "data/scores", "data/manifests",
                "models/students"):
        d = root / rel
        if d.exists():
            assert not [f for f in d.rglob("*") if f.name.endswith(".tmp")], f"temp file inside {rel}"
    return found


def test_killed_pipeline_leaves_no_partial_output_and_finishes_on_rerun(tmp_path, prefect_port):
    port, home = prefect_port
    p = make_project(tmp_path / "kill", port, TINY)
    p.env["PREFECT_HOME"] = str(home)
    rng = random.Random(1234)
    seen = set()
    for delay in sorted(rng.uniform(3, 20) for _ in range(4)):
        proc = subprocess.Popen([sys.executable, "-m", "flows", "pipeline"], cwd=p.path, env=p.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        seen.update(_check_outs_complete(p.path))
    out = p.run(sys.executable, "-m", "flows", "pipeline")
    assert "stages run:" in out.stdout
    assert set(_check_outs_complete(p.path)) == {"prepared", "teacher", "scores", "manifests", "students"}
    assert "Data and pipelines are up to date" in p.run("dvc", "status").stdout
    assert seen, "no kill happened after any output was written"


def test_a_failing_stage_leaves_the_stages_before_it_recorded_in_dvc_lock(tmp_path, prefect_port):
    """Each stage is recorded while the next one runs: when `scores` fails, prepare, teacher and
    teachers are in dvc.lock and only scores and what follows it are stale."""
    port, home = prefect_port
    p = make_project(tmp_path / "fail", port, TINY)
    p.env["PREFECT_HOME"] = str(home)
    script = (
        "import sys\n"
        "from servers.runtime import configure_env\n"
        "configure_env()\n"  # as the entry point does, before Prefect is imported
        "from prefect import flow\n"
        "import flows.pipeline as fp\n"
        "@flow(name='scores')\n"
        "def broken(root='.', parent_run_id=None):\n"
        "    raise RuntimeError('scores broke on purpose')\n"
        "fp.STAGES['scores'] = broken\n"
        "from servers.runtime import ensure_prefect_server\n"
        "ensure_prefect_server()\n"
        "fp.pipeline(root='.')\n"
    )
    out = p.run(sys.executable, "-c", script, check=False)
    assert out.returncode != 0 and "scores broke on purpose" in out.stdout + out.stderr
    from dvc.repo import Repo

    with Repo(str(p.path)) as repo:
        stale = {k.rsplit(":", 1)[-1] for k in repo.status()}
    assert stale == {"scores", "select", "distill", "evaluate"}, stale


# ---------------------------------------------------------------- integrity

def test_corrupt_or_truncated_prepared_data_is_refused(proj, tmp_path):
    import shutil

    from artifacts.stages import load_prepared
    from artifacts.files import IntegrityError

    for damage in ("flip", "truncate"):
        root = tmp_path / damage
        shutil.copytree(proj.path / "data" / "prepared", root / "data" / "prepared")
        f = root / "data" / "prepared" / "digits" / "train_x.npy"
        data = bytearray(f.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0x01
        else:
            data = data[: len(data) - 100]
        f.write_bytes(bytes(data))
        with pytest.raises(IntegrityError, match=r"train_x\.npy is corrupt or was changed.*dvc repro prepare"):
            load_prepared(root, "digits")


def test_stage_refuses_a_manifest_of_another_dataset_naming_both_hashes(proj):
    from artifacts.stages import ids_sha256, manifest_sha256

    mdir = proj.path / "data" / "manifests"
    f = sorted(mdir.glob("el2n-*.json"))[0]
    original = f.read_text()
    try:
        m = json.loads(original)
        m["dataset_sha256"] = "ab" * 32
        m["sha256"] = manifest_sha256(m)  # a whole manifest of another dataset, not an edit of this one
        f.write_text(json.dumps(m))
        out = _stage(proj, "distill", check=False)
        assert out.returncode != 0
        text = out.stdout + out.stderr
        assert f.name in text and "abababababab" in text and "was selected on dataset sha256" in text
        m = json.loads(original)
        m["ids"][0] += 1  # one flipped id: the ids no longer match their sha256
        f.write_text(json.dumps(m))
        out = _stage(proj, "distill", check=False)
        assert out.returncode != 0 and "do not match the manifest's ids_sha256" in out.stdout + out.stderr
        m = json.loads(original)
        m["ids"][-1] = 10**9  # an id that is not in the split, every hash recomputed: refused before any task
        m["ids_sha256"] = ids_sha256(m["ids"])
        m["sha256"] = manifest_sha256(m)
        f.write_text(json.dumps(m))
        out = _stage(proj, "distill", check=False)
        text = out.stdout + out.stderr
        assert out.returncode != 0 and f"{f.name}: 1 sample ids are not in the prepared train split" in text, text[-3000:]
        assert "`dvc repro select`" in text and "KeyError" not in text, text[-3000:]
        f.write_text(original[: len(original) // 2])  # truncated
        out = _stage(proj, "distill", check=False)
        assert out.returncode != 0 and "is not a valid manifest" in out.stdout + out.stderr
    finally:
        f.write_text(original)


# ---------------------------------------------------------------- tracking

def test_eight_concurrent_students_lose_no_run_and_no_metric_point(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    import tracking.tracker as T
    from tracking.tracker import Tracker

    monkeypatch.setattr(T, "_MLFLOW", T._Logger())  # a fresh one: nothing of an earlier test's store

    tracker = Tracker(tmp_path)
    epochs, keys = 30, ("train_loss", "train_acc", "val_acc", "val_loss", "lr")
    ids, errors = [], []

    def student(i: int) -> None:
        try:
            rid = tracker.start(f"student-{i}", tags={"kdprune.role": "student"}, params={"i": i})
            for e in range(1, epochs + 1):
                tracker.log_metrics(rid, {k: i + e / 100 for k in keys}, step=e)
            tracker.end(rid)
            ids.append(rid)
        except Exception as ex:  # pragma: no cover - reported below
            errors.append(ex)

    threads = [threading.Thread(target=student, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and tracker.summary() is None, (errors, tracker.summary())
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=100)
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        for k in keys:
            assert len(tracker.client.get_metric_history(r.info.run_id, k)) == epochs


def test_unreachable_tracking_server_stops_a_stage_before_training(proj):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    out = _stage(proj, "teacher", check=False, env={"MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 3
    assert f"MLFLOW_TRACKING_URI={uri}" in out.stderr and "Traceback" not in out.stderr
    assert "epoch" not in out.stdout  # no training happened
    assert time.monotonic() - t0 < 60


def _wait_http(url: str, timeout: float) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def test_tracking_server_lost_mid_run_keeps_the_model_and_says_what_was_not_logged(proj, tmp_path):
    import shutil

    port = _free_port()
    env = clean_env(port)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
         "--artifacts-destination", str(tmp_path / "art"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert _wait_http(f"http://127.0.0.1:{port}/health", 90), "mlflow server did not start"
        shutil.rmtree(proj.path / "models" / "teacher", ignore_errors=True)
        ckpt_dir = proj.path / ".kdprune" / "checkpoints" / "teacher"
        e = dict(proj.env, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
        stage = subprocess.Popen([sys.executable, "-m", "flows", "teacher"], cwd=proj.path, env=e,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while not list(ckpt_dir.glob("*.pt")) and time.monotonic() < deadline and stage.poll() is None:
            time.sleep(0.02)
        os.killpg(server.pid, signal.SIGKILL)  # the tracking server goes away mid-training
        text, _ = stage.communicate(timeout=300)
        assert stage.returncode == 0, text[-3000:]
        assert "not logged to MLflow at http://127.0.0.1" in text and "the model and metrics are on disk" in text
        m = json.loads((proj.path / "models" / "teacher" / "metrics.json").read_text())
        assert len(m["history"]) == TEACHER_EPOCHS
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)


# ---------------------------------------------------------------- safety

def test_checkpoints_load_weights_only(tmp_path):
    from artifacts.checkpoints import FileCheckpoint

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    ck = FileCheckpoint(tmp_path, "teacher", "t", "k")
    ck.path.parent.mkdir(parents=True)
    torch.save({"epoch": 3, "payload": Evil()}, ck.path)
    assert ck.load() is None  # refused, not executed
    assert not (tmp_path / "pwned").exists()
    ck.save({"epoch": 2, "w": torch.ones(2)})
    assert ck.load()["epoch"] == 2 and ck.resumed_from == 2


def test_local_servers_bind_loopback_only(proj):
    import psutil

    port = int(proj.env["KDPRUNE_PREFECT_PORT"])
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == "LISTEN" and c.laddr.port == port]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)


def test_paths_from_params_cannot_escape_the_project(tmp_path):
    from kdprune.config import ParamsError, validate
    from execution.params import inside

    assert inside(tmp_path, "data/x") == (tmp_path / "data" / "x").resolve()
    for bad in ("../outside", "/etc/passwd", "data/../../x"):
        with pytest.raises(ParamsError, match="leaves the project directory"):
            inside(tmp_path, bad)
    with pytest.raises(ParamsError, match="data.dataset"):  # the one params value that names a path
        validate({"data": {"dataset": "../../etc"}})
