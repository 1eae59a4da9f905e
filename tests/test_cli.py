"""The command line (`kdprune` = `python -m flows`), progress lines, `kdprune data` and skipped bench rows."""
from __future__ import annotations

import io
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from bench.project import REPO


def test_the_console_script_is_the_flows_command_line_and_every_subcommand_has_help(capsys):
    from cli.main import COMMANDS, parser

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"kdprune": "cli.main:main"}
    ap = parser("kdprune")
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    for cmd in ("run", "sweep", "profile", "deploy", "serve", "ui", "bench", "data", "stores", *COMMANDS):
        assert re.search(rf"^\s+{re.escape(cmd)}\b", top, re.M) or f"({cmd})" in top, cmd
        with pytest.raises(SystemExit) as e:
            ap.parse_args([cmd, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: kdprune {cmd}"), out[:200]
    # the old spellings keep working
    a = ap.parse_args(["pipeline", "--force"])
    assert (a.command, a.force) == ("pipeline", True)
    a = ap.parse_args(["run"])
    assert a.command == "pipeline"
    a = ap.parse_args(["sweep", "--profile", "digits", "-S", "student.seeds=[0,1]", "-S", "x=1"])
    assert (a.profile, a.overrides) == ("digits", ["student.seeds=[0,1]", "x=1"])
    a = ap.parse_args(["serve", "--cron", "0 3 * * *"])
    assert (a.command, a.serve, a.cron) == ("serve", True, "0 3 * * *")
    a = ap.parse_args(["deploy", "--paused"])
    assert (a.serve, a.paused) == (False, True)
    with pytest.raises(SystemExit):
        ap.parse_args(["pipeline", "--cron", "x"])  # an option of another command is refused


def test_the_help_reads_as_a_users_and_names_what_to_run(capsys):
    from cli.main import NEXT_STEP, parser

    ap = parser("kdprune")
    with pytest.raises(SystemExit):
        ap.parse_args(["--help"])
    top = capsys.readouterr().out
    assert "make run" in top and "make ui" in top and "kdprune sweep --profile" in top
    for docstring_only in ("``", "KDPRUNE_", "PREFECT_", "MLFLOW_", "tasks/", "python -m flows"):
        assert docstring_only not in top, docstring_only
    helps = {}
    for cmd in ("sweep", "deploy", "serve"):
        with pytest.raises(SystemExit):
            ap.parse_args([cmd, "--help"])
        helps[cmd] = re.search(r"--profile PROFILE\s+(.*?)\n  -", capsys.readouterr().out, re.S).group(1)
    assert len(set(helps.values())) == 3, helps  # one text per command
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["--version"])
    assert e.value.code == 0 and re.fullmatch(r"kdprune \S+\n", capsys.readouterr().out)
    # the end-of-run hint names what works without the virtualenv active
    assert "`make ui`" in NEXT_STEP and "kdprune ui" not in NEXT_STEP


def test_progress_draws_on_a_terminal_and_stays_quiet_in_logs_and_ci(monkeypatch):
    from telemetry.progress import enabled, note, progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("KDPRUNE_PROGRESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    log = io.StringIO()  # a log file or pipe
    with progress("distill", 2, "student", stream=log) as bar:
        bar.update(2)
    assert log.getvalue() == "" and not enabled(log)
    tty = Tty()
    with progress("distill", 3, "student", stream=tty) as bar:
        bar.update(1)
        note("el2n-0.2__nokd__s0 epoch 4/8")
        bar.update(1)
    out = tty.getvalue()
    assert re.search(r"distill: 1/3 students \[00:0\d<00:\d\d\], el2n-0.2__nokd__s0 epoch 4/8", out), out  # elapsed<ETA
    monkeypatch.setenv("CI", "true")
    assert not enabled(Tty())
    monkeypatch.setenv("KDPRUNE_PROGRESS", "1")
    assert enabled(io.StringIO())


def _profile(tmp_path: Path, name: str, data: dict) -> Path:
    prof = yaml.safe_load((REPO / "profiles" / "fashion_mnist.yaml").read_text())
    prof["data"].update(data)
    (tmp_path / "profiles").mkdir(exist_ok=True)
    path = tmp_path / "profiles" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path


def test_bench_memory_row_is_skipped_with_the_command_that_gets_the_data(tmp_path, capsys):
    from bench.pipeline_bench import teacher_peak_rss
    from cli.tools import print_bench_table

    empty = tmp_path / "nothing-here"
    empty.mkdir()
    rows = teacher_peak_rss(tmp_path, _profile(tmp_path, "fashion_mnist", {"root": str(empty)}), epochs=2)
    assert len(rows) == 1 and rows[0]["name"] == "fashion_teacher_peak_rss_mb" and rows[0]["value"] is None
    assert "make data NAME=fashion_mnist" in rows[0]["skipped"]
    (tmp_path / "bench.json").write_text(__import__("json").dumps(rows))
    capsys.readouterr()
    print_bench_table(tmp_path / "bench.json")
    line = capsys.readouterr().out
    assert re.match(r"fashion_teacher_peak_rss_mb +skipped MiB +fashion_mnist is not on this machine; get it with "
                    r"`make data NAME=fashion_mnist`", line), line


def test_data_prints_exact_instructions_when_it_cannot_fetch(tmp_path, monkeypatch, capsys):
    from cli import tools

    monkeypatch.setenv("KDPRUNE_ROOT", str(tmp_path))
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    # data.root set: no package to install; the loader's own instructions, naming the directory
    _profile(tmp_path, "fm_here", {"root": str(empty)})
    assert tools.data(SimpleNamespace(name="fm_here")) == 1
    err = capsys.readouterr().err
    assert str(empty) in err and "FashionMNIST(" in err
    # data.root null (the Debian package's directory) and apt-get unusable here: the exact command to run
    _profile(tmp_path, "fm_deb", {"root": None})
    monkeypatch.setattr(tools, "missing_data", lambda dataset, root: "not found")
    monkeypatch.setattr(tools, "_apt_usable", lambda: "installing a Debian package needs root (run it with sudo)")
    assert tools.data(SimpleNamespace(name="fm_deb")) == 1
    assert "sudo apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err
    # an unknown profile: the available ones
    assert tools.data(SimpleNamespace(name="nope")) == 2
    assert "fm_deb, fm_here" in capsys.readouterr().err


def test_the_ui_link_follows_the_experiment_kind_and_the_students_view():
    from tracking.tracker import STUDENTS_VIEW, students_view_state, ui_url

    view = {f"mlflow.sharedViewState.{STUDENTS_VIEW}": "{}"}
    training = {"mlflow.experimentKind": "custom_model_development", **view}
    assert ui_url("http://h:5000/", "7", training) == \
        "http://h:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=students"
    assert ui_url("http://h:5000", "7", training, view=None) == \
        "http://h:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert ui_url("http://h:5000", "7", view) == "http://h:5000/#/experiments/7"  # no kind: MLflow's own landing
    state = students_view_state("abc")
    assert state["searchFilter"] == "tags.`kdprune.sweep_run_id` = 'abc'" and state["runsHiddenMode"] == "SHOW_ALL"
    assert {"metrics.`test_acc_pct`", "tags.`acc_over_seeds`", "params.`method`", "params.`fraction`",
            "tags.`kd_arm`", "params.`kd_weight`", "params.`seed`"} <= set(state["selectedColumns"])
    assert state["groupBy"] is None  # group rows would average different students' fractions and KD weights
    chart = state["compareRunCharts"][0]
    assert (chart["type"], chart["xaxis"], chart["yaxis"]) == (
        "SCATTER", {"key": "fraction", "type": "PARAM"}, {"key": "test_acc_pct", "type": "METRIC"})
