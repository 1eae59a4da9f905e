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
from kdprune.config import STAGES as ALL_STAGES
from tests.conftest import TINY

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = REPO / "reports" / "ui"
STAGES = tuple(s for s in ALL_STAGES if s != "validate")  # one Prefect subflow each (validate is the pipeline flow's own check)

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
def mlflow_links(project):
    """`kdprune ui` on a free port: serves MLflow's UI on the project's store; the links it prints, by
    what they open (the first words of each description)."""
    proc = subprocess.Popen([sys.executable, "-m", "flows", "ui", "--port", str(free_port())], cwd=project.path,
                            env=project.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    served = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "MLflow UI serving" in line:
                served.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert served.wait(360), "kdprune ui did not serve:\n" + "".join(lines[-40:])
        links = {lines[i].removeprefix("[kdprune] ").strip(): lines[i + 1].strip()
                 for i in range(len(lines) - 1) if lines[i + 1].startswith("    http")}
        yield links
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _link(links: dict, start: str) -> str:
    hits = [url for what, url in links.items() if what.startswith(start)]
    assert hits, f"kdprune ui printed no link for {start!r}: {links}"
    return hits[0]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield b
        b.close()


def _page(browser, width: int = 1600):
    ctx = browser.new_context(viewport={"width": width, "height": 1000})
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


COLUMN_BOXES = """() => Array.from(document.querySelectorAll('.ag-header-cell[col-id]')).map(h => {
  const r = h.getBoundingClientRect();
  return {id: h.getAttribute('col-id'), left: r.left, right: r.right, width: r.width};
})"""

POINT_FILLS = """() => Array.from(document.querySelectorAll('.scatterlayer .point')).map(p => getComputedStyle(p).fill)"""


def _rgb(hex_color: str) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def test_mlflow_opens_the_students_side_by_side_with_their_test_accuracy(project, mlflow_links, browser):
    """The students link at 1,600 px: every student a row, the columns that tell them apart all on screen,
    accuracy in % with the cell's mean ± std over seeds, and the chart's points coloured by KD arm."""
    from kdprune import analysis as A
    from tracking.study import arm_colors

    results = A.with_arms(pd.read_csv(project.path / "reports" / "results.csv"))
    page = _page(browser)
    page.goto(_link(mlflow_links, "students of the latest sweep"))
    # opened on the runs (model training), not on GenAI's traces overview
    page.wait_for_selector(".ag-row", timeout=60_000)
    page.wait_for_function(f"document.querySelectorAll('.ag-row').length >= {len(results)}", timeout=60_000)
    assert "/runs" in page.url and "workflowType=machine_learning" in page.url, page.url
    assert page.get_by_role("heading", name="Runs").first.is_visible()
    page.wait_for_timeout(1000)
    _shot(page, "mlflow_students_table.png")
    # the columns that matter are on screen, none scrolled off to the right
    boxes = page.evaluate(COLUMN_BOXES)
    for key in ("test_acc_pct", "method", "fraction", "kd_arm", "kd_weight", "seed", "acc_over_seeds"):
        hit = [b for b in boxes if b["id"].endswith(f"`{key}`")]
        assert hit and hit[0]["left"] >= 0 and hit[0]["right"] <= 1600, (key, hit, [b["id"] for b in boxes])
    rows = page.evaluate(GRID_ROWS)
    by_name = {_cell(r, "Run Name").split("\n")[-1]: r for r in rows}
    assert set(by_name) == set(results["name"]), "the table should hold exactly the students of results.csv"
    cells = results.groupby(["method", "fraction", "arm"])["test_acc"].agg(["mean", "std", "count"])
    for s in results.itertuples():
        r = by_name[s.name]
        assert float(_cell(r, "test_acc_pct")) == pytest.approx(round(100 * s.test_acc, 2), abs=1e-9), s.name
        assert _cell(r, "method") == s.method and float(_cell(r, "fraction")) == s.fraction
        assert float(_cell(r, "kd_weight")) == s.kd_weight and int(_cell(r, "seed")) == s.seed
        assert _cell(r, "kd_arm") == s.arm
        c = cells.loc[(s.method, s.fraction, s.arm)]
        std = 0.0 if c["count"] < 2 else 100 * c["std"]
        assert _cell(r, "acc_over_seeds").startswith(f"{100 * c['mean']:.2f} ± {std:.2f} ("), (s.name, _cell(r, "acc_over_seeds"))
    # the chart view: test accuracy against kept fraction, a point per student, coloured by KD arm
    page.evaluate("() => document.querySelector('input[value=CHART]').click()")
    page.wait_for_selector("text=fraction vs. test_acc_pct", timeout=30_000)
    page.wait_for_function(f"document.querySelectorAll('.scatterlayer .point').length >= {len(results)}",
                           timeout=30_000)
    page.wait_for_timeout(1000)
    _shot(page, "mlflow_students_chart.png")
    fills = page.evaluate(POINT_FILLS)
    colors = arm_colors(A.arms_in_order(results))
    assert sorted(fills) == sorted(_rgb(colors[a]) for a in results["arm"]), (fills, colors)
    assert len(set(fills)) == len(colors) >= 2  # the arms told apart
    page.context.close()


def test_mlflow_answers_does_kd_help_in_one_click_with_mean_and_std_over_seeds(project, mlflow_links, browser):
    """The first link kdprune ui prints opens the study's figure (accuracy vs kept fraction, a line per KD
    arm, error bars: std over seeds) on the pipeline's run; its table of mean ± std is beside it."""
    from tracking.study import summary_table

    page = _page(browser)
    page.goto(_link(mlflow_links, "does KD help?"))
    page.wait_for_selector("text=summary/accuracy_vs_fraction.png", timeout=60_000)
    # the figure, drawn (MLflow's image viewer loads it as a blob: the logo is the only other image)
    page.wait_for_function("Array.from(document.images).some(i => i.complete && i.naturalWidth > 400)",
                           timeout=60_000)
    _shot(page, "mlflow_kd_summary.png")
    page.get_by_text("accuracy_mean_std.csv", exact=True).click()
    page.wait_for_selector("text=test_acc_std_pct", timeout=30_000)
    body = page.inner_text("body")
    table, _ = summary_table(pd.read_csv(project.path / "reports" / "results.csv"))
    for r in table.itertuples():
        assert f"{r.test_acc_mean_pct:g}" in body, (r, body[-2000:])
    page.context.close()


def test_the_registry_link_opens_the_teachers_versions_with_their_test_accuracy(project, mlflow_links, browser):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{project.path / 'mlflow.db'}")
    ev = c.search_runs([c.get_experiment_by_name("kdprune").experiment_id], "tags.`kdprune.stage` = 'evaluate'")
    acc = ev[0].data.metrics["teacher_test_acc"]  # what the evaluate stage measured
    page = _page(browser)
    page.goto(_link(mlflow_links, "the teacher in the Model Registry"))
    page.wait_for_selector("text=kdprune-teacher-digits", timeout=60_000)
    page.wait_for_selector("text=Version 1", timeout=60_000)
    page.wait_for_timeout(1000)
    body = page.inner_text("body")
    assert "Flexible, governed deployments" not in body  # not the list page's pop-up
    assert "Judges" not in body and "Playground" not in body  # the model-training side, not GenAI's
    assert re.search(rf"test_acc\s*:\s*{acc:.4f}", body), body[:2000]
    _shot(page, "mlflow_teacher_registry.png")
    page.get_by_text("Version 1", exact=True).click()
    page.wait_for_selector("text=Description", timeout=30_000)
    page.wait_for_function("document.body.innerText.includes('test accuracy')", timeout=30_000)
    assert f"test accuracy {100 * acc:.2f}%" in page.inner_text("body")
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
