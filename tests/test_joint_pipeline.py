"""Every joint selector through `dvc repro` on a tiny profile: manifests (with CRAIG/GradMatch weights),
students trained on them, costs in MLflow and outside the DVC outputs, manifests byte-reproducible."""
import json

import pandas as pd
import pytest

from tests.conftest import TINY, make_project
from tests.test_integration import _mlflow_runs

pytestmark = pytest.mark.integration

JOINT = ["herding", "kcenter", "facility_location", "graph_cut", "craig", "gradmatch", "glister", "cal", "deepfool"]


def test_every_joint_selector_runs_through_dvc_repro(tmp_path, prefect_port):
    port, home = prefect_port
    proj = make_project(tmp_path / "joint", port, {
        "teacher": {"epochs": 2, "batch_size": 64},
        "scores": {**TINY["scores"], "methods": ["random"]},
        "select": {"methods": ["random", *JOINT], "fractions": [0.3],
                   "glister": {"eta": 0.05}, "herding": {"balance": True}, "deepfool": {"max_iter": 10}},
        "student": {"epochs": 1, "batch_size": 64, "seeds": [0], "kd_weights": [0.5]},
    })
    proj.env["PREFECT_HOME"] = str(home)
    proj.run("dvc", "repro", timeout=1200)  # minutes on a busy 2-core machine
    mdir = proj.path / "data" / "manifests"
    n_train = json.loads((proj.path / "data/prepared/digits/meta.json").read_text())["sizes"]["train"]
    from kdprune.selection import budget

    before = {}
    for name in JOINT:
        stem = f"{name}-0.3-0" if name in ("kcenter", "gradmatch") else f"{name}-0.3"
        raw = (mdir / f"{stem}.json").read_bytes()
        before[stem] = raw
        m = json.loads(raw)
        assert m["selector"] == name and m["n"] == budget(n_train, 0.3) and m["joint"]["model_sha256"]
        assert not {"seconds", "peak_mem_mb", "total_s"} & set(m)  # volatile figures stay out of DVC outputs
        assert ("weights" in m) == (name in ("craig", "gradmatch"))
        if "weights" in m:
            assert len(m["weights"]) == m["n"] and sum(m["weights"]) == pytest.approx(m["n"])
        cost = json.loads((proj.path / ".kdprune" / "runs" / "select.json").read_text())["costs"][f"{stem}.json"]
        assert cost["seconds"] >= 0 and cost["peak_mem_mb"] >= 0 and cost["inputs_s"] > 0
    assert json.loads((mdir / "glister-0.3.json").read_text())["selector_options"] == {
        "balance": True, "eta": 0.05, "greedy": "naive"}
    assert json.loads((mdir / "herding-0.3.json").read_text())["selector_options"] == {"balance": True}
    df = pd.read_csv(proj.path / "reports" / "results.csv")
    assert set(JOINT) <= set(df.method) and len(df) == 2 * (len(JOINT) + 1)
    craig = json.loads(next((proj.path / "models" / "students").glob("craig-0.3__nokd*/metrics.json")).read_text())
    assert craig["weighted"] is True
    _, runs = _mlflow_runs(proj)
    select_run = next(r for r in runs if r.info.run_name == "select")
    assert {"craig-0.3.seconds", "craig-0.3.peak_mem_mb", "kcenter-0.3-0.total_s"} <= set(select_run.data.metrics)
    # re-selecting gives the same bytes: nothing downstream goes stale
    proj.run("dvc", "repro", "-f", "-s", "select")
    for stem, raw in before.items():
        assert (mdir / f"{stem}.json").read_bytes() == raw, stem
    assert "changed" not in proj.run("dvc", "status").stdout
