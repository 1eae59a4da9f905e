"""The MLflow writer process: what a tracked process logs arrives, in order, without this process
importing MLflow; failures are counted, never raised into training; a dead writer is reported."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from bench.project import REPO
from tasks.tracking_writer import Writer, read_frame, serve, write_frame


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


def test_a_tracked_process_logs_everything_without_importing_mlflow(tmp_path):
    (tmp_path / "art.txt").write_text("hello")
    out = _script(tmp_path, """
        from tasks.tracking import Tracker, start_writer
        start_writer()
        tr = Tracker(Path.cwd())
        with tr.run("parent", tags={"kdprune.stage": "pipeline"}, params={"a": {"b": 1}, "c": "x"}) as pid:
            with tr.run("child", pid, wait=False) as cid:
                tr.log_history(cid, [{"loss": 1.0 / e, "acc": e / 10} for e in range(1, 6)])
                tr.log_metrics(cid, {"best": 0.5})
                tr.log_artifact(cid, Path("art.txt"), "files")
            tr.set_tags(pid, {"stages_run": "all"})
        print(json.dumps({"pid": pid, "cid": cid, "summary": tr.summary(),
                          "mlflow_imported": any(m == "mlflow" or m.startswith("mlflow.") for m in sys.modules)}))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["summary"] is None and res["mlflow_imported"] is False
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
        from tasks.tracking import Tracker, not_logged_total
        tr = Tracker(Path.cwd())
        ok = Tracker(Path.cwd())
        rid = ok.start("fine")
        tr.log_metrics("no-such-run", {"a": 1.0, "b": 2.0})   # fails in the writer: tr goes offline
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
    assert "further logging is skipped" in out.stderr  # said once, by the writer
    run = _client(tmp_path / "mlflow.db").get_run(res["rid"])
    assert run.data.metrics == {"d": 4.0} and run.data.params == {}


def test_a_dead_writer_is_reported_not_raised_into_training(tmp_path):
    out = _script(tmp_path, """
        import tasks.tracking as T
        tr = T.Tracker(Path.cwd())
        rid = tr.start("run")
        T._WRITER.proc.kill(); T._WRITER.proc.wait()
        tr.log_metrics(rid, {"a": 1.0})   # must not raise
        tr.end(rid)
        s = tr.summary()
        try:
            T.Tracker(Path.cwd())
            opened = "opened"
        except T.TrackingUnavailable as e:
            opened = str(e)
        print(json.dumps({"summary": s, "opened": opened}))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert "writer process exited" in res["summary"] and "1 metric points" in res["summary"]
    assert "1 run endings" in res["summary"]
    assert res["opened"].startswith("cannot reach the MLflow tracking store") and "writer process exited" in res["opened"]


def test_writer_answers_in_order_and_stops_at_end_of_input(tmp_path, monkeypatch):
    """The protocol itself, in this process: logging gets no answer; a flush answers after
    everything sent before it, with the failure counts; end of input ends the loop."""
    calls = []

    def fake_batch(self, uri, run_id, metrics, params, tags):
        calls.append((run_id, metrics))
        if run_id == "bad":
            raise ValueError("no such run")

    monkeypatch.setattr(Writer, "batch", fake_batch)
    monkeypatch.setattr(Writer, "create_run", lambda self, uri, exp, tags, name: f"id-{name}")
    inp = io.BytesIO()
    write_frame(inp, ("create_run", 1, "u", "0", {}, "a"))
    write_frame(inp, ("batch", "k1", "metric points", 1, "u", "r1", [("m", 1.0, 0, 1)], [], []))
    write_frame(inp, ("batch", "k1", "metric points", 2, "u", "bad", [], [], []))
    write_frame(inp, ("batch", "k1", "metric points", 1, "u", "r1", [("m", 2.0, 0, 2)], [], []))
    write_frame(inp, ("batch", "k2", "metric points", 1, "u", "r2", [("m", 3.0, 0, 1)], [], []))
    write_frame(inp, ("flush", 2))
    inp.seek(0)
    out = io.BytesIO()
    serve(inp, out)
    out.seek(0)
    first, second = read_frame(out), read_frame(out)
    assert read_frame(out) is None
    assert first[:3] == (1, True, "id-a")
    assert second[0] == 2 and second[1] is True
    reason, counts = second[3]["k1"]
    assert "no such run" in reason and counts == {"metric points": 3}  # the failed call and the one after it
    assert "k2" not in second[3]
    assert [c[0] for c in calls] == ["r1", "bad", "r2"]  # k1's third call was not tried


def test_an_unusable_store_stops_tracker_creation_with_the_uri(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    bad = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    out = _script(tmp_path, f"""
        import os
        os.environ["MLFLOW_TRACKING_URI"] = {bad!r}
        from tasks.tracking import Tracker, TrackingUnavailable
        try:
            Tracker(Path.cwd())
            print("opened")
        except TrackingUnavailable as e:
            print("refused:", e)
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("refused: cannot reach the MLflow tracking store at MLFLOW_TRACKING_URI=" + bad)
