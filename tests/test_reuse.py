"""Nothing retrains that did not change: a student whose training key (data, teacher, settings, code,
compute) an earlier student has is copied, byte for byte, not retrained, whatever else in the distill
stage changed; the results table says so, and dvc.lock stays what a from-scratch run records."""
import json
import shutil

import pandas as pd
import pytest
import yaml

from bench.project import make_project, merge
from tests.conftest import TINY

pytestmark = pytest.mark.integration


def _students_md5(proj) -> str:
    lock = yaml.safe_load((proj.path / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["distill"]["outs"] if o["path"] == "models/students")


def _files(proj) -> dict[str, bytes]:
    root = proj.path / "models" / "students"
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_a_kd_weight_change_trains_only_the_new_students(tmp_path, prefect_port):
    port, home = prefect_port
    proj = make_project(tmp_path / "kdp", port, TINY)
    proj.env["PREFECT_HOME"] = str(home)
    proj.run("dvc", "repro", timeout=900)
    before = _files(proj)
    n_before = len(pd.read_csv(proj.path / "reports" / "results.csv"))  # 3 methods x 2 fractions x (no KD, KD 0.5)

    # one more KD weight: only the KD 0.9 students are new
    proj.write_params(merge(TINY, {"student": {"kd_weights": [0.5, 0.9]}}))
    p = proj.run("dvc", "repro", timeout=900)
    assert "Running stage 'distill'" in p.stdout and "Running stage 'teacher'" not in p.stdout
    df = pd.read_csv(proj.path / "reports" / "results.csv")
    assert len(df) == n_before + n_before // 2
    new = df.kd_weight == 0.9
    assert not df[new].reused.any(), "a new KD 0.9 student was not trained"
    assert df[~new].reused.all(), f"unchanged students retrained: {sorted(df[~new & ~df.reused].name)}"
    assert df[~new].reused_from.str.startswith("models/students/").all()  # from the workspace: the out persists
    trained = json.loads((proj.path / ".kdprune" / "runs" / "distill.json").read_text())
    assert sum(not r["reused"] for r in trained.values()) == n_before // 2
    assert f"{n_before // 2} trained, {n_before} reused" in p.stdout + p.stderr
    assert "students were reused from earlier runs" in (proj.path / "reports" / "report.md").read_text()
    after = _files(proj)
    assert {k: v for k, v in after.items() if k in before and k != "index.json"} == \
        {k: v for k, v in before.items() if k != "index.json"}, "a reused student's files differ from its training's"
    reused_md5 = _students_md5(proj)

    # the same params from scratch (no earlier students anywhere: workspace and DVC cache emptied):
    # every student trains, and dvc.lock records the same out
    shutil.rmtree(proj.path / "models" / "students")
    shutil.rmtree(proj.path / ".dvc" / "cache")
    p = proj.run("dvc", "repro", "-f", "distill", timeout=900)
    assert f"{len(df)} trained, 0 reused" in p.stdout + p.stderr
    assert _students_md5(proj) == reused_md5

    # back to the first params after a checkout-like switch: every student comes from the DVC cache
    shutil.rmtree(proj.path / "models" / "students")
    proj.write_params(TINY)
    p = proj.run("dvc", "repro", timeout=900)
    assert f"0 trained, {n_before} reused" in p.stdout + p.stderr
    df = pd.read_csv(proj.path / "reports" / "results.csv")
    assert df.reused.all() and df.reused_from.str.startswith("DVC cache").all()
    assert _files(proj) == before
