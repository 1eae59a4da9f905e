"""`dvc plots show` draws the accuracy plot with no network: the project's .dvc/config names a page
template (.dvc/plots/offline.html) with Vega, Vega-Lite and Vega-Embed inlined, where DVC's own page
loads them from a CDN. Checked in headless Chromium with every non-file request refused."""
import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.project import REPO, clean_env, free_port

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium: apt-get install chromium (.ci/run does)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extras: make setup")

ROWS = ["method,arm,fraction,test_acc,std,seeds"] + [
    f"{m},{arm},{f},{acc + 0.01 * i},0.0,1" for i, m in enumerate(("random", "el2n"))
    for arm, acc in (("no KD", 0.90), ("KD a=0.5", 0.93)) for f in (0.1, 0.3, 0.5)]


def _render(tmp: Path, template: bool) -> dict:
    """`dvc plots show` of a small accuracy.csv in a fresh DVC repo with the project's plot templates (and,
    with ``template``, the project's page template setting); what Chromium, offline, draws of it."""
    env = clean_env(free_port())
    run = lambda *cmd: subprocess.run(cmd, cwd=tmp, env=env, check=True, capture_output=True, text=True)  # noqa: E731
    tmp.mkdir()
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    shutil.copytree(REPO / ".dvc" / "plots", tmp / ".dvc" / "plots", dirs_exist_ok=True)
    if template:
        cfg = configparser.ConfigParser()
        cfg.read(REPO / ".dvc" / "config")
        run(sys.executable, "-m", "dvc", "config", "plots.html_template", cfg["plots"]["html_template"])
    (tmp / "reports" / "plots").mkdir(parents=True)
    (tmp / "reports" / "plots" / "accuracy.csv").write_text("\n".join(ROWS) + "\n")
    (tmp / "dvc.yaml").write_text("plots:\n  - reports/plots/accuracy.csv:\n      template: accuracy_by_method\n"
                                  "      x: fraction\n      y: test_acc\n")
    run(sys.executable, "-m", "dvc", "plots", "show", "--out", "dvc_plots")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        try:
            ctx = b.new_context()
            leaving: list[str] = []

            def route(r):
                if r.request.url.startswith("file:"):
                    return r.continue_()
                leaving.append(r.request.url)
                return r.abort()

            ctx.route("**/*", route)
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((tmp / "dvc_plots" / "index.html").as_uri())
            page.wait_for_timeout(2000)
            marks = page.evaluate("() => document.querySelectorAll('.vega-embed svg .mark-line path').length")
        finally:
            b.close()
    return {"leaving": leaving, "errors": errors, "lines": marks}


def test_the_accuracy_plot_renders_with_no_network(tmp_path):
    got = _render(tmp_path / "offline", template=True)
    assert got == {"leaving": [], "errors": [], "lines": 4}, got  # a line per method in each of the 2 arm panels
    # DVC's own page does not: its scripts are on a CDN
    got = _render(tmp_path / "cdn", template=False)
    assert got["lines"] == 0 and got["leaving"] and "vegaEmbed is not defined" in got["errors"], got
