"""The sweep: KD weight schedules, extra teachers, cached teacher logits, profiles and overrides,
and the sweep flow end to end on the tiny profile."""
import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from kdprune.config import ParamsError, validate
from kdprune.data import stratified_subsample
from kdprune.distill import SCHEDULES, KDSetting
from kdprune.models import build_model
from kdprune.train import DeviceData, TrainConfig, predict_logits, seeded, train
from execution.params import parse_params_text, sweep_params, write_params


def test_schedules_give_the_weight_of_each_fraction():
    assert SCHEDULES.get("constant").fn(0.1, 0.7) == 0.7
    assert SCHEDULES.get("linear").fn(0.25, [0.9, 0.1]) == pytest.approx(0.9 - 0.8 * 0.25)
    pts = [[0.1, 0.9], [0.5, 0.5], [1.0, 0.2]]
    table = SCHEDULES.get("table").fn
    assert table(0.05, pts) == 0.9 and table(1.0, pts) == 0.2 and table(0.3, pts) == pytest.approx(0.7)
    assert table(0.75, pts) == pytest.approx(0.35)


def test_validation_resolves_each_kept_fractions_kd_settings():
    """Params validation gives, per kept fraction the select stage makes, the KD settings of its students: one
    per schedule arm and teacher allowed there, each with the schedule's weight at that fraction."""
    kd = dict(validate({"student": {"kd_weights": [0.3, 0.9], "temperature": 2.0}}).student.kd)
    assert sorted(kd) == [0.1, 0.3, 0.5]  # select.fractions' default
    assert [s.label for s in kd[0.5]] == ["kd0.3", "kd0.9"]
    assert kd[0.5][1] == KDSetting("kd", 0.9, 2.0, "small_cnn", "constant", "kd0.9") == kd[0.1][1]
    lin = dict(validate({"student": {"kd_schedule": "linear", "kd_linear": [1.0, 0.0]},
                         "select": {"fractions": [0.2, 0.5]}}).student.kd)
    assert [len(v) for v in lin.values()] == [1, 1] and lin[0.2][0].label == lin[0.5][0].label == "kdlin1-0"
    assert lin[0.2][0].weight == pytest.approx(0.8) and lin[0.5][0].weight == pytest.approx(0.5)
    # extra teachers up to student.teachers_max_fraction; a full-data sampler (infobatch) keeps 1.0
    extra = dict(validate({"student": {"teachers": ["resnet20"], "teachers_max_fraction": 0.3},
                           "select": {"methods": ["random", "infobatch"], "fractions": [0.1, 0.5]}}).student.kd)
    assert {f: [s.teacher for s in v] for f, v in extra.items()} == {
        0.1: ["small_cnn", "resnet20"], 0.5: ["small_cnn"], 1.0: ["small_cnn"]}
    # a stage that does not check the KD registries has none resolved, and says so
    with pytest.raises(RuntimeError, match="KD settings were not resolved"):
        validate({}, stage="select").student.kd


def _manifest(fname: str) -> tuple[str, dict]:
    stem = fname.removesuffix(".json").split("-")
    return fname, {"method": stem[0], "fraction": float(stem[1]), "seed": int(stem[2]) if len(stem) > 2 else None,
                   "ids": [1, 2], "ids_sha256": "x"}


def test_plan_gives_each_student_the_kd_setting_of_its_manifests_fraction():
    from kdprune.train.plan import kd_weights, student_variants

    p = validate({"student": {"kd_schedule": "linear", "kd_linear": [1.0, 0.0], "teachers": ["resnet20"],
                              "teachers_max_fraction": 0.1}})
    students = student_variants(dict(map(_manifest, ["el2n-0.5.json", "random-0.1-0.json"])), p.student,
                                p.teacher.arch)
    got = {s.name: None if s.kd is None else (round(s.kd.weight, 9), s.kd.teacher) for s in students}
    assert got == ({"el2n-0.5__nokd__s0": None, "el2n-0.5__kdlin1-0-T4__s0": (0.5, "small_cnn"),
                                 "random-0.1-0__nokd__s0": None, "random-0.1-0__kdlin1-0-T4__s0": (0.9, "small_cnn"),
                                 "random-0.1-0__kdlin1-0-T4__t-resnet20__s0": (0.9, "resnet20")})
    assert kd_weights(p.student) == pytest.approx([0.9, 0.7, 0.5])  # the sweep's weights, by kept fraction
    # a manifest of other params (a fraction select.fractions no longer has): named, with the fix
    with pytest.raises(ValueError, match=r"manifest el2n-0\.7\.json: kept fraction 0\.7 .*0\.1, 0\.3, 0\.5.*"
                                         r"dvc repro select"):
        student_variants(dict([_manifest("el2n-0.7.json")]), p.student, p.teacher.arch)


def test_submission_order_is_longest_first():
    from kdprune.train.plan import Student, submission_order

    kd = KDSetting("kd", 0.5, 4.0, "small_cnn", "constant", "kd0.5")
    students = [Student("a", "m", 0, 0.1, None), Student("b", "m", 0, 0.5, kd), Student("c", "m", 0, 0.5, None)]
    live = validate({"student": {"cached_logits": False}}).student
    assert submission_order(live, students, [10, 50, 50]) == [1, 2, 0]  # a live teacher costs 1.5x
    steps = validate({"student": {"budget": "steps", "cached_logits": False}}).student
    assert submission_order(steps, students, [10, 50, 50]) == [1, 0, 2]  # equal steps: only the teacher counts


@pytest.mark.parametrize("student, needle", [
    ({"kd_schedule": "table"}, "student.kd_table: missing"),
    ({"kd_schedule": "table", "kd_table": [[0.1, 1.5]]}, "student.kd_table"),
    ({"kd_schedule": "cosine"}, "not a known KD weight schedule"),
    ({"kd_linear": [0.9]}, "student.kd_linear"),
    ({"teachers": ["small_cnn"]}, "already the teacher"),
    ({"teachers": ["resnet9000"]}, "student.teachers"),
    ({"teachers_max_fraction": 0.0}, "student.teachers_max_fraction"),
])
def test_bad_sweep_params_are_refused_by_name(student, needle):
    with pytest.raises(ParamsError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        validate({"student": student})


def test_stratified_subsample_is_exact_proportional_and_seeded():
    y = np.repeat(np.arange(3), [500, 300, 200])
    a = stratified_subsample(y, 101, seed=0)
    assert len(a) == 101 and len(set(a)) == 101 and (np.diff(a) > 0).all()
    counts = np.bincount(y[a], minlength=3)
    assert np.abs(counts - np.array([50.5, 30.3, 20.2])).max() < 1
    assert (stratified_subsample(y, 101, seed=0) == a).all() and not (stratified_subsample(y, 101, seed=1) == a).all()


def _toy(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return DeviceData.from_numpy(x.numpy(), y.numpy(), [0.5], [0.25], torch.device("cpu"))


def test_cached_teacher_logits_train_like_the_live_teacher():
    data = _toy()
    with seeded(1):
        teacher = build_model("small_cnn", 1, 10, 8)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05)
    kd = KDSetting("kd", 0.7, 4.0, "small_cnn", "constant", "kd0.7")
    runs = []
    for cached in (False, True):
        with seeded(0):
            student = build_model("small_cnn", 1, 10, 8)
        logits = predict_logits(teacher, data) if cached else None
        res = train(student, data, cfg, teacher=None if cached else teacher, teacher_logits=logits, kd=kd)
        runs.append(res)
    for a, b in zip(runs[0].history, runs[1].history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    for k in runs[0].best_state:
        torch.testing.assert_close(runs[0].best_state[k].float(), runs[1].best_state[k].float(), rtol=1e-3, atol=1e-4)
    # and the teacher matters: a different teacher's logits give a different run
    with seeded(0):
        student = build_model("small_cnn", 1, 10, 8)
    other = train(student, data, cfg, teacher_logits=torch.randn(len(data), 10), kd=kd)
    assert other.history[0]["train_loss"] != pytest.approx(runs[0].history[0]["train_loss"], rel=1e-3)


def test_cached_logits_are_refused_with_augmentation():
    data = _toy()
    with seeded(0):
        student = build_model("small_cnn", 1, 10, 8)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, pad=1)
    with pytest.raises(ValueError, match="augmentation off"):
        train(student, data, cfg, teacher_logits=torch.zeros(len(data), 10),
              kd=KDSetting("kd", 0.5, 4.0, "small_cnn", "constant", "kd0.5"))


def test_profile_plus_overrides_is_validated_before_params_yaml_is_written(tmp_path):
    from bench.project import REPO

    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.yaml").write_text((REPO / "profiles" / "fashion_mnist.yaml").read_text())
    (tmp_path / "params.yaml").write_text("device: cpu\n")
    raw = sweep_params(tmp_path, "p", ["student.kd_weights=[0.2, 0.8]", "select.fractions=[0.5]"])
    assert raw["student"]["kd_weights"] == [0.2, 0.8] and raw["data"]["dataset"] == "fashion_mnist"
    assert write_params(tmp_path, raw, "test", "p", ["x"])
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["select"]["fractions"] == [0.5]
    assert not write_params(tmp_path, raw, "test", "p", ["x"])  # unchanged: not rewritten
    before = (tmp_path / "params.yaml").read_text()
    with pytest.raises(ParamsError, match="student.kd_weights"):
        sweep_params(tmp_path, "p", ["student.kd_weights=[2.0]"])
    with pytest.raises(ParamsError, match="no profile 'nope'.*available: p"):
        sweep_params(tmp_path, "nope", [])
    with pytest.raises(ParamsError, match="not KEY=VALUE"):
        sweep_params(tmp_path, "p", ["student.kd_weights"])
    assert (tmp_path / "params.yaml").read_text() == before


def test_a_profile_dvc_cannot_read_as_validated_is_refused_before_anything_is_written(tmp_path):
    """PyYAML reads `[random, random:global]` and a bare `yes`; DVC's parser (ruamel, YAML 1.2) fails on the
    first and reads the second as a string, so `dvc repro` would die (or track other values) after validation
    said yes. Every profile in the repo reads the same under both."""
    from bench.project import REPO

    (tmp_path / "profiles").mkdir()
    text = (REPO / "profiles" / "fashion_mnist.yaml").read_text()
    assert "'random:global'" in text
    (tmp_path / "profiles" / "colon.yaml").write_text(text.replace("'random:global'", "random:global"))
    (tmp_path / "profiles" / "yes.yaml").write_text(text.replace("flip: false", "flip: no", 1))
    (tmp_path / "params.yaml").write_text("device: cpu\n")
    with pytest.raises(ParamsError, match=r"colon.yaml: DVC's YAML parser cannot read it \(line \d+, column \d+\).*"
                                          r"must be quoted, e.g. \['random', 'random:global'\]"):
        sweep_params(tmp_path, "colon", [])
    with pytest.raises(ParamsError, match=r"yes.yaml reads differently under DVC's YAML parser .* at teacher.flip: "
                                          r"False here, 'no' for DVC"):
        sweep_params(tmp_path, "yes", [])
    assert (tmp_path / "params.yaml").read_text() == "device: cpu\n"
    for profile in sorted((REPO / "profiles").glob("*.yaml")):
        parse_params_text(profile, profile.read_text())


def test_default_profile_is_params_yaml():
    from bench.project import REPO

    assert (REPO / "profiles" / "digits.yaml").read_text() == (REPO / "params.yaml").read_text()


@pytest.mark.integration
def test_sweep_flow_on_the_tiny_profile(tmp_path, prefect_port):
    from tests.conftest import TINY, make_project
    from tests.test_integration import _mlflow_runs

    port, home = prefect_port
    proj = make_project(tmp_path / "sweep", port, {**TINY, "teacher": {**TINY["teacher"], "pad": 0}})
    proj.env["PREFECT_HOME"] = str(home)
    sets = ["select.fractions=[0.2,1.0]", "scores.seeds=[0,1]", "student.seeds=[0,1]", "student.pad=0",
            "student.kd_weights=[0.5,0.9]", "student.teachers=[small_cnn_narrow]", "student.teachers_max_fraction=0.2"]
    p = proj.run(sys.executable, "-m", "flows", "sweep", *[a for s in sets for a in ("-S", s)], timeout=900)
    assert "sweep finished" in p.stdout and "params.yaml written from params.yaml -S select.fractions" in p.stderr
    params = yaml.safe_load((proj.path / "params.yaml").read_text())
    assert params["student"]["teachers"] == ["small_cnn_narrow"] and params["select"]["fractions"] == [0.2, 1.0]
    df = pd.read_csv(proj.path / "reports" / "results.csv")
    # 3 methods x 2 fractions x 2 seeds x (no KD + 2 weights) + the narrow teacher at 0.2 (3 x 2 x 2 weights)
    assert len(df) == 3 * 2 * 2 * 3 + 3 * 2 * 2
    assert set(df.teacher_arch) == {"small_cnn", "small_cnn_narrow"}
    assert (df[df.teacher_arch == "small_cnn_narrow"].fraction == 0.2).all()
    assert (df[df.kd].teacher_logits == "cached").all()
    # every method at fraction 1.0 trains on the same ids: trained once, recorded under each method
    full = df[df.fraction == 1.0]
    assert full.same_training_as.notna().sum() == 2 * len(full) // 3
    for (kd, w, seed), g in full.groupby(["kd", "kd_weight", "seed"]):
        assert g.test_acc.nunique() == 1 and set(g.method) == {"random", "el2n", "forgetting"}
    report = (proj.path / "reports" / "report.md").read_text()
    assert "## The paper's claims on this run" in report and "| small_cnn_narrow |" in report
    verdicts = {line[0]: line.split("**")[1] for line in report.split("## The paper's claims")[1].splitlines()
                if line[:2] in ("1.", "2.", "3.", "4.", "5.")}
    assert set(verdicts) == set("12345") and verdicts["5"] == "NOT TESTED"  # no 0.5 fraction in this sweep
    assert all(v in ("HOLDS", "PARTLY HOLDS", "DOES NOT HOLD") for k, v in verdicts.items() if k != "5")
    for f in ("accuracy_vs_fraction.png", "kd_weight_heatmap.png", "teacher_size.png"):
        assert (proj.path / "reports" / f).read_bytes()[:4] == b"\x89PNG"
    # one MLflow run for the sweep, one top-level run per student tagged with it, comparable by the sweep's axes
    client, runs = _mlflow_runs(proj)
    sweep_runs = [r for r in runs if r.data.tags.get("kdprune.sweep") == "true"]
    assert len(sweep_runs) == 1
    children = [r for r in runs if r.data.tags.get("kdprune.sweep_run_id") == sweep_runs[0].info.run_id]
    assert len(children) == len(df) and all(r.data.tags.get("kdprune.role") == "student" for r in children)
    for r in children:
        assert {"method", "fraction", "kd_weight", "teacher_arch", "seed"} <= set(r.data.params)
        assert "test_acc" in r.data.metrics
    top = next(r for r in runs if r.data.tags.get("kdprune.stage") == "pipeline")
    assert top.data.tags["kdprune.label"] == "sweep params.yaml"
    # the same sweep through DVC: nothing is stale
    assert "Data and pipelines are up to date" in proj.run("dvc", "status").stdout
    assert "Running stage" not in proj.run("dvc", "repro").stdout
    teachers = json.loads((proj.path / "models" / "teachers" / "index.json").read_text())
    assert [t["arch"] for t in teachers] == ["small_cnn_narrow"] and teachers[0]["n_params"] > 0
