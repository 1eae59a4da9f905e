"""What a researcher sees, in a real browser: the MLflow and Prefect UIs after the tiny sweep.

Debian's Chromium (`apt-get install chromium`; `.ci/run` installs it) driven by Playwright's Python
package through ``executable_path`` (Playwright's own browser download is not reachable). The
project copy runs what `make setup` and `make run` run (`deploy --paused`, `pipeline`) on its own
Prefect server, then `kdprune ui` serves MLflow's UI and prints the link a user opens. Screenshots
go to reports/ui/ (gitignored).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from bench.project import REPO, free_port, make_project
from tests.conftest import TINY

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = REPO / "reports" / "ui"
STAGES = ("prepare", "teacher", "teachers", "scores", "select", "distill", "evaluate")

if CHROMIUM is None:
    pytest.skip("no Chromium: apt-get install chromium (.ci/run does)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extras: make setup")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project copy after `make setup` (its deployment, paused) and `make run` (the pipeline)."""
    port = free_port()
    proj = make_project(tmp_path_factory.mktemp("ui") / "kdp", port, TINY)
    proj.env["PREFECT_HOME"] = str(proj.path / ".prefect")  # a server of its own: the deployment is ours alone
    try:
        proj.run(sys.executable, "-m", "flows", "deploy", "--paused")
        proj.run(sys.executable, "-m", "flows", "pipeline")
        proj.prefect = f"http://127.0.0.1:{port}"
        yield proj
    finally:
        proj.stop_server()


@pytest.fixture(scope="module")
def mlflow_link(project):
    """`kdprune ui` on a free port: serves MLflow's UI on the project's store; the link it prints."""
    proc = subprocess.Popen([sys.executable, "-m", "flows", "ui", "--port", str(free_port())], cwd=project.path,
                            env=project.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    link = threading.Event()
    found: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if found == [] and lines[-2:-1] and "students of the latest sweep" in lines[-2]:
                found.append(line.strip())
                link.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert link.wait(360), "kdprune ui printed no link to the students:\n" + "".join(lines[-40:])
        yield found[0]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield b
        b.close()


def _page(browser):
    ctx = browser.new_context(viewport={"width": 1920, "height": 1300})
    # MLflow's assistant panel opens itself on a first visit; a returning user has closed it
    ctx.add_init_script("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')")
    return ctx.new_page()


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name))


GRID_ROWS = """() => {
  const rows = {};
  for (const r of document.querySelectorAll('.ag-row')) {
    const i = r.getAttribute('row-index');
    rows[i] = rows[i] || {};
    for (const c of r.querySelectorAll('[col-id]')) rows[i][c.getAttribute('col-id')] = c.innerText.trim();
  }
  return Object.values(rows);
}"""


def _cell(row: dict, key: str) -> str:
    hits = [v for k, v in row.items() if k == key or k.endswith(f"`{key}`") or k.endswith(f".{key}")]
    assert hits, f"no column {key!r} in the runs table; columns: {sorted(row)}"
    return hits[0]


def test_mlflow_opens_the_students_side_by_side_with_their_test_accuracy(project, mlflow_link, browser):
    results = pd.read_csv(project.path / "reports" / "results.csv")
    page = _page(browser)
    page.goto(mlflow_link)
    # opened on the runs (model training), not on GenAI's traces overview
    page.wait_for_selector(".ag-row", timeout=60_000)
    page.wait_for_function(f"document.querySelectorAll('.ag-row').length >= {len(results)}", timeout=60_000)
    assert "/runs" in page.url and "workflowType=machine_learning" in page.url, page.url
    assert page.get_by_role("heading", name="Runs").first.is_visible()
    _shot(page, "mlflow_students_table.png")
    rows = page.evaluate(GRID_ROWS)
    # a student's row (not a method's group row): its name after its colour chip
    by_name = {_cell(r, "Run Name").split("\n")[-1]: r for r in rows if "Group:" not in _cell(r, "Run Name")}
    assert set(by_name) == set(results["name"]), "the table should hold exactly the students of results.csv"
    for s in results.itertuples():
        r = by_name[s.name]
        assert float(_cell(r, "test_acc")) == pytest.approx(s.test_acc, abs=1e-6), s.name
        assert _cell(r, "method") == s.method and float(_cell(r, "fraction")) == s.fraction
        assert float(_cell(r, "kd_weight")) == s.kd_weight and int(_cell(r, "seed")) == s.seed
        # the Dataset column: the manifest that trained it, with its DVC hash as the digest
        stem = s.name.split("__")[0]
        md5 = __import__("hashlib").md5((project.path / "data" / "manifests" / f"{stem}.json").read_bytes()).hexdigest()
        assert f"{stem} ({md5[:8]})" in _cell(r, "Dataset"), (s.name, _cell(r, "Dataset"))
    # the chart view: test accuracy against kept fraction, a point per student
    page.evaluate("() => document.querySelector('input[value=CHART]').click()")
    page.wait_for_selector("text=fraction vs. test_acc", timeout=30_000)
    page.wait_for_function(f"document.querySelectorAll('.scatterlayer .point').length >= {len(results)}",
                           timeout=30_000)
    _shot(page, "mlflow_students_chart.png")
    page.context.close()


def _prefect_api(base: str, path: str, body: dict) -> list:
    req = urllib.request.Request(f"{base}/api{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_prefect_shows_the_pipeline_run_its_stages_artifacts_and_the_paused_nightly_deployment(project, browser):
    base = project.prefect
    runs = _prefect_api(base, "/flow_runs/filter", {"flows": {"name": {"any_": ["pipeline"]}}})
    assert len(runs) == 1, runs
    page = _page(browser)
    page.goto(f"{base}/runs/flow-run/{runs[0]['id']}")
    page.wait_for_selector("text=Subflow Runs", timeout=60_000)
    page.get_by_text("Subflow Runs", exact=True).click()
    page.wait_for_selector(f"text={len(STAGES)} Flow runs", timeout=60_000)
    page.wait_for_selector("text=prepare >> nth=0", timeout=30_000)
    page.wait_for_timeout(1000)
    body = page.inner_text("body")
    for stage in STAGES:  # each stage's subflow: "<flow> > <run name>", then its state
        assert re.search(rf"^{stage}\n\S+\nCompleted$", body, re.M), (stage, body[-3000:])
    _shot(page, "prefect_pipeline_subflows.png")
    page.get_by_text("Artifacts", exact=True).click()
    page.wait_for_selector("text=kdprune-report", timeout=30_000)
    page.wait_for_selector("text=kdprune-results", timeout=30_000)
    _shot(page, "prefect_pipeline_artifacts.png")
    page.goto(f"{base}/deployments")
    # the flow's name under the deployment arrives by a second request (slow under load)
    page.wait_for_function(r"/nightly\s+pipeline/.test(document.body.innerText)"
                           " && document.body.innerText.includes('At 02:00 AM every day')", timeout=60_000)
    text = page.inner_text("body")
    assert re.search(r"nightly\s+pipeline", text) and "At 02:00 AM every day" in text, text[-2000:]
    _shot(page, "prefect_deployments.png")
    deps = _prefect_api(base, "/deployments/filter", {})
    assert [(d["name"], d["paused"]) for d in deps] == [("nightly", True)]  # registered by `make setup`, paused
    page.context.close()


def test_the_teacher_is_in_the_model_registry_as_a_model_without_pickle(project):
    """One registered version per retrain: a pyfunc model from code, safetensors weights, no pickle."""
    code = (
        "import json, sys, numpy as np, mlflow, pathlib\n"
        "from mlflow.tracking import MlflowClient\n"
        "c = MlflowClient()\n"
        "vs = c.search_model_versions(\"name='kdprune-teacher-digits'\")\n"
        "m = mlflow.pyfunc.load_model('models:/kdprune-teacher-digits/latest')\n"
        "x = np.load('data/prepared/digits/test_x.npy'); y = np.load('data/prepared/digits/test_y.npy')\n"
        "acc = float((m.predict(x).argmax(1) == y).mean())\n"
        "files = [p.name for p in pathlib.Path('mlartifacts').rglob('*') if p.is_file()]\n"
        "exp = c.get_experiment_by_name('kdprune').experiment_id\n"
        "ev = c.search_runs([exp], \"tags.`kdprune.stage` = 'evaluate'\")[0].data.metrics['teacher_test_acc']\n"
        "print(json.dumps({'versions': len(vs), 'acc': acc, 'evaluate': ev, 'files': files}))\n"
    )
    out = json.loads(project.run(sys.executable, "-c", code, env={
        "MLFLOW_TRACKING_URI": f"sqlite:///{project.path / 'mlflow.db'}"}).stdout.strip().splitlines()[-1])
    assert out["versions"] == 1  # one retrain so far
    # the very teacher the evaluate stage tested (MLflow keeps metrics as float32)
    assert out["acc"] == pytest.approx(out["evaluate"], abs=1e-6)
    assert "model.safetensors" in out["files"] and "teacher_model.py" in out["files"]
    assert not (project.path / "mlruns").exists()  # in the kdprune experiment's artifacts, not MLflow's default
    assert not [f for f in out["files"] if f.endswith((".pkl", ".pickle", ".cloudpickle", ".pt", ".pth"))]
