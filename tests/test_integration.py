"""The real entrypoints on the tiny profile: dvc repro, dvc exp run, the pipeline flow, the deployment.

Tests in this module share one project copy and run in order.
"""
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from kdprune.config import STAGES

pytestmark = pytest.mark.integration

METHODS = {"random", "el2n", "forgetting"}
FRACTIONS = {0.2, 0.5}


WORK_STAGES = tuple(s for s in STAGES if s != "validate")  # the stages that compute (validate checks params)


def _mlflow_runs(proj):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{proj.path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdprune")
    assert exp is not None, "no kdprune experiment in the project's MLflow store"
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def test_dvc_repro_runs_every_stage_and_writes_results(tiny_project):
    p = tiny_project.run("dvc", "repro")
    for stage in WORK_STAGES:
        assert f"Running stage '{stage}'" in p.stdout
    assert "| method | kept fraction | no KD | KD a=0.5 |" in p.stdout  # the report is printed
    df = pd.read_csv(tiny_project.path / "reports" / "results.csv")
    assert len(df) == len(METHODS) * len(FRACTIONS) * 2
    assert {(m, f, kd) for m, f, kd in zip(df.method, df.fraction, df.kd)} == {
        (m, f, kd) for m in METHODS for f in FRACTIONS for kd in (True, False)}
    assert df[df.kd].temperature.eq(4.0).all() and df[~df.kd].temperature.isna().all()  # no T without KD
    for col in ("dataset", "kd_weight", "seed", "teacher_arch", "student_arch", "test_acc", "val_acc",
                "n_train", "steps", "wall_s"):
        assert df[col].notna().all(), col
    assert df.test_acc.between(0, 1).all() and df.test_acc.mean() > 0.5  # well above chance (0.1)
    n_train = json.loads((tiny_project.path / "data/prepared/digits/meta.json").read_text())["sizes"]["train"]
    assert set(df.n_train) == {round(0.2 * n_train), round(0.5 * n_train)}
    assert (df[df.kd].kd_weight == 0.5).all() and (df[~df.kd].kd_weight == 0.0).all()
    assert (tiny_project.path / "reports" / "accuracy_vs_fraction.png").read_bytes()[:4] == b"\x89PNG"


def test_second_repro_reruns_nothing(tiny_project):
    p = tiny_project.run("dvc", "repro")
    assert "Running stage" not in p.stdout
    assert "Data and pipelines are up to date" in tiny_project.run("dvc", "status").stdout


def test_verify_reruns_in_a_scratch_copy_and_names_an_edited_cell(tiny_project):
    """`kdprune verify`: the pipeline re-run from nothing agrees with this run bit for bit (portable
    setting); with one student's accuracy edited by hand it fails and names that cell."""
    p = tiny_project.run(sys.executable, "-m", "flows", "verify", "--keep", timeout=1200)
    assert "every cell agrees" in p.stdout and "Reproduction check (bytes" in p.stdout
    report = json.loads((tiny_project.path / "reports" / "verify.json").read_text())
    assert report["regime"] == "bytes" and report["outside"] == [] and len(report["cells"]) >= 9
    scratch = Path(report["rerun"])
    metrics = tiny_project.path / "reports" / "metrics.json"
    original = metrics.read_text()
    try:
        edited = json.loads(original)
        edited["test_acc"]["random"]["0.2"]["no_kd"] += 0.01
        metrics.write_text(json.dumps(edited))
        p = tiny_project.run(sys.executable, "-m", "flows", "verify", "--from", str(scratch), check=False)
        assert p.returncode == 1, p.stdout + p.stderr
        assert "FAILED: test_acc/random/0.2/no_kd outside" in p.stdout
        assert "| test_acc/random/0.2/no_kd |" in p.stdout and "DIFFERS (bytes expected)" in p.stdout
    finally:
        metrics.write_text(original)
        shutil.rmtree(scratch, ignore_errors=True)


def test_mlflow_holds_stage_and_student_runs_with_params_metrics_and_hashes(tiny_project):
    client, runs = _mlflow_runs(tiny_project)
    stages = {r.data.tags.get("kdprune.stage") for r in runs}
    assert set(WORK_STAGES) - {"teachers"} <= stages
    teacher = next(r for r in runs if r.data.tags.get("kdprune.stage") == "teacher")  # what explains its bytes
    assert teacher.data.tags["kdprune.reproducibility"] == "portable" and teacher.data.tags["kdprune.threads"] == "2"
    assert teacher.data.tags["kdprune.cpu_capability"] and teacher.data.tags["kdprune.torch_build"].startswith("2.")
    students = [r for r in runs if r.data.tags.get("kdprune.role") == "student"]
    assert len(students) == len(METHODS) * len(FRACTIONS) * 2
    distill = next(r for r in runs if r.data.tags.get("kdprune.stage") == "distill" and r.info.run_name == "distill")
    for r in students:
        # top-level runs tagged with their sweep (MLflow's table and charts show nested runs only when expanded)
        assert r.data.tags["kdprune.sweep_run_id"] == distill.info.run_id and "mlflow.parentRunId" not in r.data.tags
        assert [d.dataset.name for d in r.inputs.dataset_inputs] == [r.info.run_name.split("__")[0]]
        assert r.data.params["method"] in METHODS and float(r.data.params["fraction"]) in FRACTIONS
        assert {"kd", "kd_weight", "seed", "teacher_arch", "student_arch"} <= set(r.data.params)
        assert len(r.data.tags["dvc.manifest_md5"]) == 32 and len(r.data.tags["dataset_sha256"]) == 64
        assert r.data.tags["git_commit"] != "unknown"
        assert "test_acc" in r.data.metrics and "val_acc" in r.data.metrics
        assert len(client.get_metric_history(r.info.run_id, "val_acc")) == 8  # one point per epoch
        assert r.info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(students[0].info.run_id)}
    assert {"manifest", "model"} <= arts


def test_manifests_identical_across_two_runs_with_the_same_seed(tiny_project):
    mdir = tiny_project.path / "data" / "manifests"
    before = {f.name: f.read_bytes() for f in mdir.glob("*.json")}
    assert set(before) == {f"{m}-{f:g}.json" for m in ("el2n", "forgetting") for f in FRACTIONS} | {
        f"random-{f:g}-0.json" for f in FRACTIONS}  # random's manifests carry their seed
    tiny_project.run("dvc", "repro", "--force", "--single-item", "select")
    after = {f.name: f.read_bytes() for f in mdir.glob("*.json")}
    assert before == after
    m = json.loads(before["el2n-0.2.json"])
    assert m["ids"] == sorted(m["ids"]) and len(m["ids"]) == m["n"] == sum(m["class_counts"])
    assert m["method"] == "el2n" and m["fraction"] == 0.2 and len(m["dataset_sha256"]) == 64
    assert m["balanced"] is True and m["selector"] == "class_balanced_high"  # select.balance: auto by default (random: per class, as DeepCore)
    assert m["ties"] == {"order": "seeded random", "seed": 0}


def test_exp_run_on_a_student_param_reruns_only_distill_and_evaluate(tiny_project):
    tiny_project.run("git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    tiny_project.run("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "lock")
    p = tiny_project.run("dvc", "exp", "run", "-S", "student.kd_weights=[0.9]")
    ran = {s for s in WORK_STAGES
           if f"Running stage '{s}'" in p.stdout}
    assert ran == {"distill", "evaluate"}, p.stdout[-3000:]
    df = pd.read_csv(tiny_project.path / "reports" / "results.csv")
    assert set(df[df.kd].kd_weight) == {0.9}


def test_pipeline_flow_runs_stale_stages_and_leaves_dvc_status_clean(tiny_project):
    from tests.conftest import TINY

    tiny_project.write_params({**TINY, "select": {"fractions": [0.3]}})
    p = tiny_project.run(sys.executable, "-m", "flows", "pipeline")
    assert "stages run: validate, select, distill, evaluate" in p.stdout, p.stdout[-3000:]
    assert "Data and pipelines are up to date" in tiny_project.run("dvc", "status").stdout
    assert "Running stage" not in tiny_project.run("dvc", "repro").stdout
    client, runs = _mlflow_runs(tiny_project)
    parent = [r for r in runs if r.data.tags.get("kdprune.stage") == "pipeline"]
    assert len(parent) == 1
    children = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id}
    assert children == {"select", "distill", "evaluate"}
    assert set(pd.read_csv(tiny_project.path / "reports" / "results.csv").fraction) == {0.3}


def test_deployment_with_cron_schedule_exists_on_the_local_server(tiny_project):
    tiny_project.run(sys.executable, "-m", "flows", "deploy", "--cron", "30 3 * * *")
    tiny_project.run(sys.executable, "-m", "flows", "deploy", "--profile", "digits", "-S", "student.seeds=[0,1]",
                     "-S", "scores.seeds=[0,1]", "--cron", "0 4 * * 6")
    probe = (
        "import asyncio, json, tasks\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType\n"
        "async def main():\n"
        "    async with get_client() as c:\n"
        "        d = await c.read_deployment_by_name('pipeline/nightly')\n"
        "        sw = await c.read_deployment_by_name('sweep/digits')\n"
        "        done = await c.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(\n"
        "            type=FlowRunFilterStateType(any_=['COMPLETED']))), limit=200)\n"
        "        print(json.dumps({'crons': [s.schedule.cron for s in d.schedules],\n"
        "                          'active': [s.active for s in d.schedules],\n"
        "                          'sweep': [sw.parameters, [x.schedule.cron for x in sw.schedules]],\n"
        "                          'completed': sorted({r.name for r in done}),\n"
        "                          'n_completed': len(done)}))\n"
        "asyncio.run(main())\n"
    )
    out = json.loads(tiny_project.run(sys.executable, "-c", probe).stdout.strip().splitlines()[-1])
    assert out["crons"] == ["30 3 * * *"] and out["active"] == [True]
    params, crons = out["sweep"]
    assert params["profile"] == "digits" and params["overrides"] == ["student.seeds=[0,1]", "scores.seeds=[0,1]"]
    assert crons == ["0 4 * * 6"]
    assert out["n_completed"] >= 7  # the stage flows of dvc repro and the pipeline flow completed


def test_a_killed_local_prefect_server_is_restarted_by_the_next_stage(tiny_project):
    import os
    import signal
    import time

    pid_file = Path(tiny_project.env["PREFECT_HOME"]) / "kdprune-server.pid"
    pid = int(pid_file.read_text())
    os.killpg(pid, signal.SIGKILL)  # leaves its pid file behind
    for _ in range(50):
        try:
            os.kill(pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    p = tiny_project.run(sys.executable, "-m", "flows", "evaluate")
    assert "starting a local Prefect server" in p.stdout
    assert int(pid_file.read_text()) != pid


ALL_SCORES = ["random", "el2n", "el2n_proxy", "grand", "grand_last_layer", "forgetting", "aum", "aum_prob", "entropy",
              "least_confidence", "margin", "dynamic_uncertainty", "prototypes", "prototypes_supervised",
              "moderate_ds", "memorization"]
ALL_METHODS = ALL_SCORES + ["el2n:balanced", "aum:high", "ccs", "rs2", "infobatch"]


def test_every_score_and_selection_scheme_runs_through_the_stages(tmp_path, prefect_port):
    from tests.conftest import make_project

    port, home = prefect_port
    proj = make_project(tmp_path / "all", port, {
        # per-example statistics (the default digits run keeps the logits): every score through the stages from them
        "teacher": {"epochs": 4, "batch_size": 64, "dynamics": "stats"},
        "scores": {"methods": ALL_SCORES, "seeds": [0], "el2n": {"epoch": 2}, "proxy_seeds": [0, 1], "proxy_epochs": 2,
                   "el2n_proxy": {"epoch": 2}, "grand_epoch": 1, "memorization_models": 3, "memorization_epochs": 2},
        "select": {"methods": ALL_METHODS, "fractions": [0.3]},
        "student": {"epochs": 3, "batch_size": 64, "seeds": [0], "kd_weights": [0.5]},
    })
    proj.env["PREFECT_HOME"] = str(home)
    proj.run("dvc", "repro")
    dyn = proj.path / "models" / "teacher" / "dynamics"
    assert not (dyn / "logits.npy").exists() and sorted(p.stem for p in (dyn / "stats").glob("*.npy")) == [
        "correct", "entropy", "l2_error", "other_logprob", "target_logprob", "top2_logprob"]
    sdir = proj.path / "data" / "scores"
    costs = json.loads((proj.path / ".kdprune" / "runs" / "scores.json").read_text())["costs"]
    for s in ALL_SCORES:
        stem = f"{s}-0" if s == "random" else s
        info = json.loads((sdir / f"{stem}.json").read_text())
        assert info["definition"] and info["variant"]
        assert not {"seconds", "peak_mem_mb", "total_s"} & set(info)  # run-to-run figures stay out of DVC outs
        assert costs[stem]["seconds"] >= 0 and costs[stem]["peak_mem_mb"] >= 0  # ... and go to the run record
        if s in ("el2n_proxy", "grand", "grand_last_layer", "memorization"):
            assert costs[stem]["proxy_train_s"] > 0 and info["proxy_training"]["runs"] >= 2
    # EL2N's recipe: proxies on the teacher's 4-epoch schedule, stopped after 2, read at epoch 2, eval mode, clean
    assert json.loads((sdir / "el2n_proxy.json").read_text())["proxy_training"] == {
        "runs": 2, "epochs": 2, "schedule_epochs": 4, "read_at_epoch": 2, "pass": "eval mode, clean inputs"}
    assert not list((proj.path / ".kdprune" / "proxies").glob("*"))  # proxy files removed after the stage
    df = pd.read_csv(proj.path / "reports" / "results.csv")
    assert set(df.method) == set(ALL_METHODS) and len(df) == 2 * len(ALL_METHODS)
    n_train = json.loads((proj.path / "data/prepared/digits/meta.json").read_text())["sizes"]["train"]
    rs2 = df[df.method == "rs2"].iloc[0]
    from kdprune.selection import SAMPLERS, budget

    per_epoch = SAMPLERS.get("rs2").epoch_size(n_train, ratio=0.3)  # round(0.3 * n), as RS2's code
    assert rs2.n_train == n_train and rs2.samples_seen == 3 * per_epoch  # a fresh 30% per epoch
    ib = df[df.method == "infobatch"].iloc[0]
    assert ib.fraction == 1.0 and ib.samples_seen < 3 * n_train  # some low-loss examples were skipped
    static = df[~df.method.isin(["rs2", "infobatch", "ccs"])]
    assert (static.n_train == budget(n_train, 0.3)).all()
    assert (df[df.method == "ccs"].n_train == int(0.3 * n_train)).all()  # CCS rounds down, as its code
    m = json.loads((proj.path / "data/manifests/rs2-0.3-0.json").read_text())
    assert m["sampler"] == {"name": "rs2", "seed": 0, "options": {"ratio": 0.3}}
    ccs = json.loads((proj.path / "data/manifests/ccs-0.3-0.json").read_text())
    assert ccs["selector"] == "ccs" and ccs["score"] == "aum_prob"
    opts = ccs["selector_options"]  # beta from the default table at kept fraction 0.3: 0.2 - 0.1 * 0.2 / 0.3
    assert opts["beta"] == pytest.approx(0.2 - 0.2 / 3) and opts["k"] == 50 and opts["cut_score"] == "aum_prob"
    assert len(opts["cut_score_sha256"]) == 64 and ccs["n"] == int(0.3 * n_train)  # the reference's rounding
    report = (proj.path / "reports" / "report.md").read_text()
    assert "- `el2n_proxy`: score el2n_proxy:" in report and "read_at_epoch 2" in report  # which recipe made it
    assert "| method | selection (s) | peak MiB | acc 0.3 KD / no KD |" in report
    assert "| grand |" in report
    client, runs = _mlflow_runs(proj)
    scores_run = next(r for r in runs if r.info.run_name == "scores")
    assert {"grand.seconds", "grand.peak_mem_mb", "memorization.total_s"} <= set(scores_run.data.metrics)


def _workspace(proj) -> dict[str, bytes]:
    """Every file of the project a user owns (not git's or DVC's own bookkeeping, not the servers' stores)."""
    skip = (".git/", ".dvc/tmp/", ".dvc/cache/", ".prefect/", "mlartifacts/")
    out = {}
    for f in sorted(proj.path.rglob("*")):
        rel = f.relative_to(proj.path).as_posix()
        if f.is_file() and not rel.startswith(skip) and not rel.startswith("mlflow.db"):
            out[rel] = f.read_bytes()
    return out


def test_a_bad_param_is_refused_before_dvc_touches_any_output(tiny_project):
    assert "Data and pipelines are up to date" in tiny_project.run("dvc", "status").stdout
    good = (tiny_project.path / "params.yaml").read_text()
    before = _workspace(tiny_project)
    assert "data/prepared/digits/train_x.npy" in before and "models/teacher/model.safetensors" in before
    try:
        tiny_project.write_params({"select": {"fractions": [1.5]}}, base=tiny_project.path / "params.yaml")
        bad = (tiny_project.path / "params.yaml").read_text()
        p = tiny_project.run("dvc", "repro", check=False)
        assert p.returncode != 0
        assert "select.fractions: [1.5] item 1.5 must be in (0.0, 1.0]" in p.stderr + p.stdout
        assert "Running stage 'prepare'" not in p.stdout
        after = _workspace(tiny_project)
        assert after.pop("params.yaml") == bad.encode()
        before.pop("params.yaml")
        assert after == before  # every output (and every other file) exactly as it was
    finally:
        (tiny_project.path / "params.yaml").write_text(good)
    assert "Data and pipelines are up to date" in tiny_project.run("dvc", "status").stdout


def test_dvc_exp_show_metrics_diff_and_plots_diff_compare_results(tiny_project, tmp_path):
    git = ("git", "-c", "user.email=t@t", "-c", "user.name=t")
    tiny_project.run(*git, "add", "-A")
    tiny_project.run(*git, "commit", "-qm", "baseline", check=False)  # nothing to commit is fine
    # the workspace's metrics are the ones in git: metrics.json and the plot data are git-tracked (cache: false)
    assert tiny_project.run("git", "status", "--porcelain").stdout.strip() == ""
    metrics = json.loads((tiny_project.path / "reports" / "metrics.json").read_text())
    df = pd.read_csv(tiny_project.path / "reports" / "results.csv")
    random3 = df[(df.method == "random") & (df.fraction == 0.3) & ~df.kd].test_acc.mean()
    assert metrics["test_acc"]["random"]["0.3"]["no_kd"] == pytest.approx(random3, abs=1e-6)

    exps = json.loads(tiny_project.run("dvc", "exp", "show", "--json").stdout)
    flat = json.dumps(exps)
    assert "test_acc" in flat and "kd_weights" in flat  # metrics next to the params

    tiny_project.write_params({"student": {"kd_weights": [0.9]}}, base=tiny_project.path / "params.yaml")
    tiny_project.run(sys.executable, "-m", "flows", "pipeline")
    tiny_project.run(*git, "commit", "-qam", "kd 0.9")
    diff = json.loads(tiny_project.run("dvc", "metrics", "diff", "HEAD~1", "HEAD", "--all", "--json").stdout)
    changed = diff["reports/metrics.json"]
    # keys by the arm's kind: the KD arm's accuracy on both sides, its weight beside it
    assert changed["kd_weight.random.0.3"]["old"] == 0.5 and changed["kd_weight.random.0.3"]["new"] == 0.9
    kd = changed["test_acc.random.0.3.kd"]
    assert kd["old"] is not None and kd["new"] is not None
    assert not any(v["old"] is None or v["new"] is None for v in changed.values()), changed

    def plots(*revs):
        out = json.loads(tiny_project.run("dvc", "plots", "diff", *revs, "--json").stdout)
        data = out["data"]
        acc = data["reports/plots/accuracy.csv"][0]
        assert acc["revisions"] == list(revs)
        rows = acc["content"]["data"]["values"]
        assert {r["rev"] for r in rows} == set(revs)
        assert {r["method"] for r in rows} == {"random", "el2n", "forgetting"}
        images = {r for k, v in data.items() if k.endswith(".png") for r in (x["revisions"][0] for x in v)}
        assert images == set(revs), data.keys()  # the figures of both, side by side
        return rows

    rows = plots("HEAD~1", "HEAD")
    assert {r["arm"] for r in rows if r["rev"] == "HEAD"} == {"no KD", "KD a=0.9"}
    assert {r["arm"] for r in rows if r["rev"] == "HEAD~1"} == {"no KD", "KD a=0.5"}
    assert {float(r["fraction"]) for r in rows} == {0.3}
    tiny_project.run("dvc", "plots", "diff", "HEAD~1", "HEAD", "-o", str(tmp_path / "plots"))  # the HTML page
    assert "vegaEmbed" in (tmp_path / "plots" / "index.html").read_text()
    # two experiments: the `dvc exp run` of an earlier test and the workspace
    exp = tiny_project.run("dvc", "exp", "list", "--all-commits", "--name-only").stdout.split()[0]
    rows = plots(exp, "HEAD")
    assert {r["arm"] for r in rows if r["rev"] == exp} == {"no KD", "KD a=0.9"}
    assert {float(r["fraction"]) for r in rows if r["rev"] == exp} == {0.2, 0.5}  # that experiment's fractions
