"""-S overrides and params.yaml read as DVC reads them; messages that name where a bad value came from."""
from __future__ import annotations

import sys

import pytest

from bench.project import REPO, free_port, make_project
from kdprune.config import ParamsError, validate
from execution.params import parse_override, parse_params_text, sweep_params


@pytest.mark.parametrize("value", ["1e-3", "1E-3", "5e2", "+1e-3", "1.0e5", "0.05", ".5e1", "3", "1_000"])
def test_numbers_read_as_dvc_reads_them(value, tmp_path):
    from ruamel.yaml import YAML

    dvc = YAML(typ="safe").load(f"lr: {value}")["lr"]  # DVC's parser (YAML 1.2)
    assert isinstance(dvc, float) or value in (".5e1", "3", "1_000")
    assert parse_override(f"teacher.lr={value}") == (["teacher", "lr"], dvc)
    assert parse_params_text(tmp_path / "params.yaml", f"lr: {value}\n") == {"lr": dvc}


def test_sweep_accepts_an_exponent_float_from_S():
    raw = sweep_params(REPO, None, ["teacher.lr=1e-3"])
    assert raw["teacher"]["lr"] == 0.001


def test_a_bad_value_from_S_is_named_as_the_S_it_came_from():
    with pytest.raises(ParamsError) as e:
        sweep_params(REPO, None, ["student.epochs=3", "teacher.lr=abc"])
    msg = str(e.value)
    assert not msg.startswith("invalid params.yaml"), msg
    assert "-S teacher.lr=abc: teacher.lr: got 'abc', expected a float" in msg
    with pytest.raises(ParamsError, match=r"-S 'teacher\.lr' is not KEY=VALUE"):
        sweep_params(REPO, None, ["teacher.lr"])
    with pytest.raises(ParamsError) as e:
        sweep_params(REPO, "digits", ["teacher.lrr=0.1"])
    assert "-S teacher.lrr=0.1: teacher.lrr: unknown key; did you mean 'teacher.lr'?" in str(e.value)


@pytest.mark.parametrize("section, given, meant", [
    ("select", "randm", "random"), ("select", "el2m:high", "el2n:high"), ("select", "infobach", "infobatch"),
    ("scores", "forgeting", "forgetting"),
])
def test_a_misspelt_method_gets_did_you_mean(section, given, meant):
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params[section]["methods"] = [given]
    with pytest.raises(ParamsError) as e:
        validate(params)
    assert f"did you mean '{meant}'?" in str(e.value), str(e.value)


def test_a_failed_dvc_exp_run_S_says_params_yaml_was_rewritten_and_how_to_undo(tmp_path):
    proj = make_project(tmp_path / "kdp", free_port())
    ok = proj.run("dvc", "exp", "run", "-S", "teacher.lr=1e-3", "validate", check=False)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    proj.run("git", "checkout", "params.yaml")
    bad = proj.run("dvc", "exp", "run", "-S", "teacher.lr=abc", "validate", check=False)
    assert bad.returncode != 0
    for p in (bad, proj.run(sys.executable, "-m", "flows", "validate", check=False)):  # and every run after it
        assert p.returncode != 0
        assert "teacher.lr in params.yaml differ from the last commit" in p.stderr, p.stderr[-3000:]
        assert "`git checkout params.yaml`" in p.stderr
    proj.run("git", "checkout", "params.yaml")
    assert "params.yaml is valid" in proj.run(sys.executable, "-m", "flows", "validate").stdout
