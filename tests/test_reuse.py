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


def _manifest(method: str, fraction: float, ids: list[int], seed=None) -> dict:
    return {"method": method, "fraction": fraction, "seed": seed, "ids": ids, "ids_sha256": f"sha-{method}-{fraction}"}


def test_plan_gives_each_student_one_kd_setting_and_a_key_of_its_own_inputs():
    """Pure planning (kdprune/train/plan.py): one typed KD setting per student (None without KD), and a
    training key that a KD-weight change leaves alone for every student it does not add, while a
    setting, the teacher, the code or the compute changes it."""
    from kdprune.config import validate
    from kdprune.train.plan import group_students, student_variants, training_inputs, training_key

    params = validate({"student": {"kd_weights": [0.5]}})
    manifests = {"el2n-0.1.json": _manifest("el2n", 0.1, [1, 2, 3]),
                 "random-0.1-0.json": _manifest("random", 0.1, [4, 5, 6], seed=0)}

    def keys(p, teacher="t", **facts):
        students = student_variants(manifests, p.student, p.teacher.arch)
        f = {"n_total": 100, "dataset_sha256": "d", "code_sha256": "c", "compute": {"threads": 1}, **facts}
        return students, {s.name: training_key(training_inputs(s, manifests[s.manifest], p.student,
                                                                teacher_sha256=None if s.kd is None else teacher, **f))
                          for s in students}

    students, before = keys(params)
    assert [s.name for s in students] == ["el2n-0.1__nokd__s0", "el2n-0.1__kd0.5-T4__s0",
                                          "random-0.1-0__nokd__s0", "random-0.1-0__kd0.5-T4__s0"]
    nokd, kd = students[0], students[1]
    assert nokd.kd is None and nokd.loss == "ce" and nokd.kd_setting == "nokd"
    assert (kd.kd.weight, kd.kd.temperature, kd.kd.teacher, kd.kd.loss, kd.kd_setting) == (0.5, 4.0, "small_cnn", "kd", "kd0.5-T4")
    assert len(group_students(students, before)) == 4

    _, more = keys(validate({"student": {"kd_weights": [0.5, 0.9]}}))
    assert {n: k for n, k in more.items() if n in before} == before and len(more) == 6
    _, lr = keys(validate({"student": {"kd_weights": [0.5], "lr": 0.1}}))
    assert not set(lr.values()) & set(before.values())
    for facts in ({"code_sha256": "c2"}, {"compute": {"threads": 2}}, {"dataset_sha256": "d2"}):
        _, other = keys(params, **facts)
        assert not set(other.values()) & set(before.values()), facts
    # the teacher and the KD params enter the KD students' keys only
    _, teacher = keys(params, teacher="t2")
    _, temp = keys(validate({"student": {"kd_weights": [0.5], "temperature": 2.0}}))
    for other in (teacher, temp):
        assert [n for n in before if other.get(n) == before[n]] == ["el2n-0.1__nokd__s0", "random-0.1-0__nokd__s0"]
