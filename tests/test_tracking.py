"""MLflow tracking: what a tracked process logs arrives, in order, without training waiting on the
store; failures are counted, never raised into training."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path


from bench.project import REPO
from tracking.writer import Writer


def _client(db: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def _script(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter with the tracking store at tmp_path/mlflow.db."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KDPRUNE_"))}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", KDPRUNE_ROOT=str(tmp_path),
               PYTHONPATH=str(REPO))
    code = "import sys, json\nfrom pathlib import Path\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)


def test_a_tracked_process_logs_everything(tmp_path):
    (tmp_path / "art.txt").write_text("hello")
    out = _script(tmp_path, """
        from tracking.tracker import Tracker, import_mlflow_early
        import_mlflow_early()
        tr = Tracker(Path.cwd())
        with tr.run("parent", tags={"kdprune.stage": "pipeline"}, params={"a": {"b": 1}, "c": "x"}) as pid:
            with tr.run("child", pid, wait=False) as cid:
                tr.log_history(cid, [{"loss": 1.0 / e, "acc": e / 10} for e in range(1, 6)])
                tr.log_metrics(cid, {"best": 0.5})
                tr.log_artifact(cid, Path("art.txt"), "files")
            tr.set_tags(pid, {"stages_run": "all"})
        import sqlite3   # what the store holds now, while this process still runs
        db = sqlite3.connect("mlflow.db")
        stored = {"points": db.execute("select count(*) from metrics where run_uuid=?", (cid,)).fetchone()[0],
                  "status": [r[0] for r in db.execute("select status from runs order by name")]}
        print(json.dumps({"pid": pid, "cid": cid, "summary": tr.summary(), "stored": stored}))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["summary"] is None
    # the parent run's end waited for everything sent before it, the child's included
    assert res["stored"] == {"points": 11, "status": ["FINISHED", "FINISHED"]}
    c = _client(tmp_path / "mlflow.db")
    parent, child = c.get_run(res["pid"]), c.get_run(res["cid"])
    assert parent.data.params == {"a.b": "1", "c": "x"} and parent.data.tags["stages_run"] == "all"
    assert parent.info.status == child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == res["pid"]
    hist = c.get_metric_history(res["cid"], "loss")
    assert [(m.step, round(m.value, 6)) for m in sorted(hist, key=lambda m: m.step)] == \
        [(e, round(1.0 / e, 6)) for e in range(1, 6)]
    assert [a.path for a in c.list_artifacts(res["cid"], "files")] == ["files/art.txt"]


def test_a_failing_call_takes_the_tracker_offline_and_is_counted(tmp_path):
    out = _script(tmp_path, """
        from tracking.tracker import Tracker, not_logged_total
        tr = Tracker(Path.cwd())
        ok = Tracker(Path.cwd())
        rid = ok.start("fine")
        tr.log_metrics("no-such-run", {"a": 1.0, "b": 2.0})   # fails in MLflow: tr goes offline
        tr.log_metrics(rid, {"c": 3.0})                      # not tried any more, counted
        tr.log_params(rid, {"p": 1})
        ok.log_metrics(rid, {"d": 4.0})                      # another tracker is not affected
        ok.end(rid)
        print(json.dumps({"summary": tr.summary(), "ok": ok.summary(), "total": not_logged_total(), "rid": rid}))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ok"] is None
    assert "3 metric points" in res["summary"] and "1 params" in res["summary"]
    assert res["total"] == {"metric points": 3, "params": 1}
    assert out.stderr.count("further logging is skipped") == 1  # said once
    run = _client(tmp_path / "mlflow.db").get_run(res["rid"])
    assert run.data.metrics == {"d": 4.0} and run.data.params == {}


def test_an_offline_tracker_creates_no_more_runs_even_when_the_store_answers_again(monkeypatch):
    """A store back after an outage (PostgreSQL restarted under the tracking server) gets no run from a
    tracker whose logging went offline: its logging would all be skipped, leaving an empty run. The
    run is refused instead (the Tracker counts and names it); another tracker is not affected."""
    from types import SimpleNamespace

    down = [True]

    class Store:
        def create_run(self, experiment_id, tags, run_name, start_time=None):
            return SimpleNamespace(info=SimpleNamespace(run_id=f"id-{run_name}"))

        def log_batch(self, run_id, metrics, params, tags):
            if down[0]:
                raise ConnectionError("the store went away")

    monkeypatch.setattr(Writer, "client", lambda self, uri: Store())
    w = Writer()
    assert w.create_run("k1", "u", "0", {}, "a") == "id-a"
    w.best_effort("k1", "metric points", 1, "u", "batch", ("id-a", [("m", 1.0, 0, 1)], [], []))
    down[0] = False  # the store is back
    try:
        w.create_run("k1", "u", "0", {}, "b")
        raise AssertionError("an offline tracker created a run")
    except RuntimeError as e:
        assert "offline" in str(e) and "the store went away" in str(e)
    assert w.create_run("k2", "u", "0", {}, "c") == "id-c"


def test_an_unusable_store_stops_tracker_creation_with_the_uri(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    bad = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    out = _script(tmp_path, f"""
        import os
        os.environ["MLFLOW_TRACKING_URI"] = {bad!r}
        from tracking.tracker import Tracker, TrackingUnavailable
        try:
            Tracker(Path.cwd())
            print("opened")
        except TrackingUnavailable as e:
            print("refused:", e)
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("refused: cannot reach the MLflow tracking store at MLFLOW_TRACKING_URI=" + bad)


def test_a_run_ended_without_waiting_just_before_exit_is_logged_whole(tmp_path):
    """wait=False (students, the teacher): the run's end does not wait, and a process that then exits
    still leaves everything in the store (the queue is written at exit)."""
    out = _script(tmp_path, """
        import time, tracking.tracker as T
        tr = T.Tracker(Path.cwd())
        with tr.run("student", wait=False) as rid:
            tr.log_history(rid, [{"loss": 1.0 / e, "acc": e / 10} for e in range(1, 41)])
        print(json.dumps({"rid": rid}))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    rid = json.loads(out.stdout.strip().splitlines()[-1])["rid"]
    c = _client(tmp_path / "mlflow.db")
    assert c.get_run(rid).info.status == "FINISHED"
    assert len(c.get_metric_history(rid, "loss")) == len(c.get_metric_history(rid, "acc")) == 40


def test_the_fast_exit_comes_after_the_tracking_flush_and_skips_only_finalization(tmp_path):
    """As ``python -m flows`` does: ``_fast_exit`` registered first (so it runs last), a run ended
    without waiting, a clean finish. Everything is in the store, what was printed arrives, and the
    exit handlers registered before it (and interpreter finalization) are skipped."""
    out = _script(tmp_path, """
        import atexit
        atexit.register(lambda: print("finalized"))  # before the fast exit: must not run
        import cli.main as M
        atexit.register(M._fast_exit)
        import tracking.tracker as T
        tr = T.Tracker(Path.cwd())
        with tr.run("student", wait=False) as rid:
            tr.log_history(rid, [{"loss": 1.0 / e, "acc": e / 10} for e in range(1, 41)])
        print(json.dumps({"rid": rid}))
        M._DONE.append(0)
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert "finalized" not in lines  # left by os._exit
    rid = json.loads(lines[-1])["rid"]
    c = _client(tmp_path / "mlflow.db")
    assert c.get_run(rid).info.status == "FINISHED"
    assert len(c.get_metric_history(rid, "loss")) == len(c.get_metric_history(rid, "acc")) == 40


def test_logging_never_waits_on_the_store_but_a_flush_does(tmp_path):
    """A busy store (its database locked by another connection for 1 s): logging calls return at once
    and are not counted as waiting on MLflow (the stage-work clock); a flush waits for them and is
    counted; they are written in the order sent."""
    out = _script(tmp_path, """
        import sqlite3, threading, time
        import tracking.tracker as T
        tr = T.Tracker(Path.cwd())
        rid = tr.start("busy")
        tr.flush()
        lock = sqlite3.connect("mlflow.db", isolation_level=None, check_same_thread=False)
        lock.execute("BEGIN EXCLUSIVE")  # MLflow's writes wait for it (SQLite's busy timeout, 5 s)
        b0, t0 = T.blocked_seconds(), time.perf_counter()
        for i in range(5):
            tr.log_metrics(rid, {"m": float(i)}, step=0)
        posted_s, posted_blocked = time.perf_counter() - t0, T.blocked_seconds() - b0
        threading.Timer(1.0, lambda: lock.execute("COMMIT")).start()
        tr.flush()
        print(json.dumps({"rid": rid, "posted_s": posted_s, "posted_blocked": posted_blocked,
                          "flush_blocked": T.blocked_seconds() - b0 - posted_blocked, "summary": tr.summary()}))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["posted_s"] < 0.5 and res["posted_blocked"] == 0, res
    assert res["flush_blocked"] >= 0.8 and res["summary"] is None, res
    import sqlite3

    rows = sqlite3.connect(tmp_path / "mlflow.db").execute(
        "select value from metrics where run_uuid=? and key='m' order by rowid", (res["rid"],)).fetchall()
    assert [r[0] for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]

def test_the_study_summary_tells_the_kd_arms_apart_with_mean_and_std_over_seeds(tmp_path):
    """publish_study on a results table of 2 arms x 2 seeds: the summary run gets the figure and the
    mean ± std table, every student run its arm (tag and colour), its accuracy in % and its cell's
    mean ± std; the teacher's registered version its test accuracy."""
    import pandas as pd

    from tracking.study import NO_KD_COLOR, SUMMARY_TAG, summary_table

    rows = [{"name": f"random-0.5__{'kd0.5' if kd else 'nokd'}__s{s}", "method": "random", "fraction": 0.5, "kd": kd,
             "kd_weight": 0.5 if kd else 0.0, "kd_schedule": "constant" if kd else "none", "kd_setting": "",
             "seed": s, "teacher_arch": "small_cnn", "dataset": "digits", "test_acc": acc}
            for kd, s, acc in [(False, 0, 0.90), (False, 1, 0.92), (True, 0, 0.95), (True, 1, 0.96)]]
    table, arms = summary_table(pd.DataFrame(rows))
    assert arms == ["no KD", "KD a=0.5"]
    assert table[["kd_arm", "test_acc_mean_pct", "test_acc_std_pct", "seeds"]].values.tolist() == [
        ["no KD", 91.0, 1.41, 2], ["KD a=0.5", 95.5, 0.71, 2]]
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "accuracy_vs_fraction.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "reports" / "metrics.json").write_text(json.dumps({"teacher_test_acc": {"small_cnn": 0.9889}}))
    for sub, body in (("models/teacher/model.json", {"arch": "small_cnn", "n_params": 24058}),
                      ("models/teacher/metrics.json", {"val_acc": 0.99, "n_train": 1295, "best_epoch": 17}),
                      ("data/prepared/digits/meta.json", {"dataset": "digits", "shape": [1, 8, 8], "num_classes": 10,
                                                          "sizes": {"test": 359}, "sha256": "ab"})):
        (tmp_path / sub).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / sub).write_text(json.dumps(body))
    pd.DataFrame(rows).to_csv(tmp_path / "rows.csv", index=False)
    out = _script(tmp_path, """
        import pandas as pd, mlflow
        from tracking.tracker import Tracker
        from tracking.study import publish_study
        from telemetry.runlog import write_record
        tr = Tracker(Path.cwd())
        df = pd.read_csv("rows.csv")
        df["mlflow_run_id"] = [tr.start(n) for n in df["name"]]
        df.to_csv("reports/results.csv", index=False)
        with tr.run("teacher") as teacher:
            (Path.cwd() / "model.py").write_text("import mlflow\\nclass M(mlflow.pyfunc.PythonModel):\\n"
                                                 "    def predict(self, context, model_input, params=None):\\n"
                                                 "        return model_input\\nmlflow.models.set_model(M())\\n")
            tr.log_model(teacher, "teacher", "kdprune-teacher-digits", Path("model.py"), {}, [], [], {
                "inputs": json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": [-1, 1, 8, 8]}}]),
                "outputs": json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}])},
                "described at registration", {"arch": "small_cnn"})
        write_record(Path.cwd(), "teacher", {"mlflow_run_id": teacher})
        with tr.run("pipeline") as parent:
            pass
        assert publish_study(Path.cwd(), parent) == parent
        print(json.dumps({"parent": parent, "students": dict(zip(df["name"], df["mlflow_run_id"]))}))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "UserWarning" not in out.stderr and "Successfully registered" not in out.stderr, out.stderr
    ids = json.loads(out.stdout.strip().splitlines()[-1])
    c = _client(tmp_path / "mlflow.db")
    parent = c.get_run(ids["parent"])
    assert parent.data.tags[SUMMARY_TAG] == "summary/accuracy_vs_fraction.png"
    assert {a.path for a in c.list_artifacts(ids["parent"], "summary")} == {
        "summary/accuracy_vs_fraction.png", "summary/accuracy_mean_std.csv"}
    for name, run_id in ids["students"].items():
        r = c.get_run(run_id).data
        kd = "kd0.5" in name
        assert r.tags["kd_arm"] == ("KD a=0.5" if kd else "no KD")
        assert r.tags["acc_over_seeds"] == ("95.50 ± 0.71 (2 seeds)" if kd else "91.00 ± 1.41 (2 seeds)")
        assert (r.tags["mlflow.runColor"] == NO_KD_COLOR) != kd
        assert r.metrics["test_acc_pct"] in (90.0, 92.0, 95.0, 96.0)
    colors = {c.get_run(i).data.tags["mlflow.runColor"] for i in ids["students"].values()}
    assert len(colors) == 2  # one colour per arm
    (v,) = c.search_model_versions("name = 'kdprune-teacher-digits'")
    assert v.tags["test_acc"] == "0.9889" and v.tags["arch"] == "small_cnn" and v.tags["val_acc"] == "0.9900"
    assert "test accuracy 98.89%" in v.description and "models:/kdprune-teacher-digits/" in v.description
