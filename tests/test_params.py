"""Bad params stop before any compute, with one message naming the key and what is allowed."""
import sys

import pytest
import yaml

from kdprune.config import ParamsError, validate
from tests.conftest import REPO, make_project

BASE = yaml.safe_load((REPO / "params.yaml").read_text())

BAD = [
    ({"select": {"fractions": [0.0]}}, "select.fractions", "(0.0, 1.0]"),
    ({"select": {"fractions": [1.5]}}, "select.fractions", "(0.0, 1.0]"),
    ({"select": {"fractions": [0.1, 0.1]}}, "select.fractions", "duplicates"),
    ({"scores": {"methods": ["el2m"]}}, "scores.methods", "valid names: aum, aum_prob, dynamic_uncertainty, el2n, el2n_proxy"),
    ({"select": {"methods": ["el2n:middle"]}}, "select.methods", "valid: aum, "),
    ({"select": {"methods": ["grand"]}}, "select.methods", "scores.methods"),
    # CCS's options, from its declaration (kdprune/selection/static/ccs.py)
    ({"select": {"ccs": {"beta": 1.0}}}, "select.ccs", "select.ccs.beta: got 1.0, must be in [0.0, 1.0)"),
    ({"select": {"ccs": {"beta": [[0.1, 0.3], [0.1, 0.2]]}}}, "select.ccs", "same kept fraction twice"),
    ({"select": {"methods": ["random", "ccs"], "fractions": [0.9], "ccs": {"beta": 0.2}},
      "scores": {"methods": ["random", "aum_prob"]}}, "select.ccs.beta", "fraction + beta must be <= 1"),
    ({"select": {"methods": ["random", "ccs"], "ccs": {"score": "aum"}}, "scores": {"methods": ["random", "aum"]}},
     "select.methods", "reads score 'aum_prob'"),
    ({"select": {"ccs": {"score": "el2m"}}}, "select.ccs", "select.ccs.score: got 'el2m', not a registered score; "
     "valid: aum, aum_prob"),
    ({"select": {"ccs": {"strata": 0}}}, "select.ccs", "select.ccs.strata: got 0, must be >= 1"),
    ({"select": {"ccs": {"stratas": 10}}}, "select.ccs", "valid options: score, beta, strata; ccs takes: score (str, "
     "default 'aum_prob'), beta (value, default [[0.1, 0.3], [0.2, 0.2], [0.5, 0.0]]), strata (int, default 50)"),
    ({"select": {"ccs_beta": 0.2}}, "select.ccs_beta", "did you mean 'select.ccs.beta'"),
    ({"student": {"budget": "flops"}}, "student.budget", "'epochs'"),
    ({"teacher": {"arch": "resnet1000"}}, "teacher.arch", "valid names:"),
    ({"student": {"arch": 3}}, "student.arch", "expected a str"),
    ({"teacher": {"epochs": -1}}, "teacher.epochs", ">= 1"),
    ({"student": {"epochs": 0}}, "student.epochs", ">= 1"),
    ({"student": {"batch_size": 0}}, "student.batch_size", ">= 1"),
    ({"student": {"epochz": 3}}, "student.epochz", "did you mean 'student.epochs'"),
    ({"studnt": {}}, "studnt", "did you mean 'student'"),
    # a schedule's argument, from its registration (kdprune/distill/schedules/), and its rule when chosen
    ({"student": {"kd_weights": [1.2]}}, "student.kd_weights", "item 1.2: must be <= 1.0"),
    ({"student": {"kd_weights": [0.5, 0.5]}}, "student.kd_weights", "has duplicates"),
    ({"student": {"kd_linear": [0.9]}}, "student.kd_linear", "two KD weights"),
    ({"student": {"kd_table": [[0.1, 0.9], [0.1, 0.5]]}}, "student.kd_table", "same fraction twice"),
    ({"student": {"kd_schedule": "table", "kd_table": None}}, "student.kd_table", "kd_schedule 'table' needs"),
    ({"student": {"kd_tabel": [[0.1, 0.9]]}}, "student.kd_tabel",
     "did you mean 'student.kd_table'? allowed keys here: arch"),
    # a KD loss's options (student.<loss>: the built-in losses take none)
    ({"student": {"kd": {"beta": 0.5}}}, "student.kd", "student.kd.beta: unknown option; valid options: none"),
    # a sampler's own rule (its registration's check)
    ({"select": {"methods": ["random", "infobatch"]}, "student": {"budget": "steps"}}, "student.budget",
     "'steps' cannot be used with select.methods 'infobatch'"),
    ({"student": {"temperature": 0}}, "student.temperature", "> 0"),
    ({"student": {"loss": "kl"}}, "student.loss", "valid names: ce, kd"),
    ({"data": {"dataset": "cifar1000"}}, "data.dataset", "valid names: cifar10, cifar100, digits, fashion_mnist"),
    ({"device": "gpu"}, "device", "'auto', 'cpu', 'cuda'"),
    ({"teacher": {"lr": "fast"}}, "teacher.lr", "expected a float"),
    ({"teacher": {"flip": "yes"}}, "teacher.flip", "expected a bool"),
    ({"scores": {"el2n": {"epoch": 99}}}, "scores.el2n.epoch", "teacher.epochs"),
    ({"scores": {"el2n": {"epochs": 3}}}, "scores.el2n", "valid options: epoch; el2n takes: epoch (int, default 5)"),
    ({"scores": {"aum": {"variant": "probs"}}}, "scores.aum", "allowed: logit, prob"),
    ({"scores": {"el2m": {"epoch": 3}}}, "scores.el2m", "did you mean 'scores.el2n'"),
    ({"scores": {"el2n_epoch": 5}}, "scores.el2n_epoch", "a score's options: aum, aum_prob"),
    ({"scores": {"methods": ["random", "el2n", "forgetting", "el2n_proxy"], "el2n_proxy": {"epoch": 9}}}, "scores.el2n_proxy.epoch",
     "1..scores.proxy_epochs (5)"),
    ({"scores": {"methods": ["random", "el2n", "forgetting", "grand"], "grand_epoch": 9}}, "scores.grand_epoch", "0..scores.proxy_epochs"),
    ({"scores": {"seeds": [0, 1]}}, "scores.seeds", "same seeds"),
    ({"select": {"fractions": 0.5}}, "select.fractions", "expected a list"),
    # a per-epoch sampler's options, from its registration (kdprune/selection/samplers/)
    ({"select": {"infobatch": {"prune_ratio": 1.0}}}, "select.infobatch", "prune_ratio: got 1.0, must be <= 0.9"),
    ({"select": {"infobatch": {"prune": 0.3}}}, "select.infobatch",
     "valid options: prune_ratio, delta; infobatch takes: prune_ratio (float, default 0.5), delta (float, default 0.875)"),
    ({"select": {"infobatch_prune_ratio": 0.3}}, "select.infobatch_prune_ratio", "did you mean "
     "'select.infobatch.prune_ratio'? allowed keys here: methods, fractions, balance, or a joint selector or per-epoch "
     "sampler or static selection method's options: cal, ccs, craig"),
    ({"select": {"rs2": {"ratio": 0.3}}}, "select.rs2", "valid options: none"),
]


def _merge(base, over):
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def test_default_params_are_valid():
    assert validate(BASE).select.fractions == (0.1, 0.3, 0.5)


@pytest.mark.parametrize("override,key,allowed", BAD, ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD)])
def test_bad_params_name_key_value_and_what_is_allowed(override, key, allowed):
    with pytest.raises(ParamsError) as e:
        validate(_merge(BASE, override))
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == 1, str(e.value)  # one message for one mistake
    assert lines[0].strip().startswith(key + ":")
    assert allowed in lines[0]


def test_stage_command_refuses_bad_params_before_writing_anything(tmp_path):
    proj = make_project(tmp_path / "p", port=1, params={"select": {"fractions": [0.0]}, "studnt": {}})
    store = (proj.path / "mlflow.db").read_bytes()  # created empty by setup (flows init)
    for command in ("prepare", "pipeline"):
        p = proj.run(sys.executable, "-m", "flows", command, check=False, timeout=120)
        assert p.returncode == 2, p.stderr
        assert "select.fractions: [0.0]" in p.stderr and "did you mean 'student'" in p.stderr
        assert "Traceback" not in p.stderr
    # nothing was written: no data, no tracking runs, no server state
    assert not (proj.path / "data").exists() and (proj.path / "mlflow.db").read_bytes() == store
    assert not (proj.path / ".prefect").exists()


def _params_dir(tmp_path, text: bytes | str):
    """A directory with the project's dvc.yaml and ``text`` as params.yaml."""
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (tmp_path / "params.yaml").write_bytes(text.encode() if isinstance(text, str) else text)
    return tmp_path


def _without(section: str, key: str | None = None) -> str:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    if key is None:
        del raw[section]
    else:
        del raw[section][key]
    return yaml.safe_dump(raw, sort_keys=False)


@pytest.mark.parametrize("text,says", [
    ("", "params.yaml is empty"),
    ("# nothing but a comment\n", "params.yaml is empty"),
    (_without("student"), "student: missing section; DVC tracks it (stages distill, evaluate, teachers)"),
    (_without("data", "dataset"), "data.dataset: missing key; DVC tracks it"),
    ((REPO / "params.yaml").read_bytes().replace(b"student:", b"student: # caf\xe9\n", 1) + b"", "is not UTF-8 text"),
    ((REPO / "params.yaml").read_text().replace("  lr: 0.05", "  lr: .nan"), None),
], ids=["empty", "comment-only", "no-student", "no-data.dataset", "latin-1", "nan"])
def test_params_that_dvc_or_kdprune_cannot_use_are_refused_naming_them(tmp_path, text, says):
    from execution.params import load_params

    with pytest.raises(ParamsError) as e:
        load_params(_params_dir(tmp_path, text))
    msg = str(e.value)
    if says is None:  # .nan: the key and "finite", not a message about quoting booleans
        assert "student.lr: got nan, expected a finite number" in msg and "true/false" not in msg, msg
    else:
        assert says in msg, msg
        assert "params.yaml" in msg and ("make profile NAME=digits" in msg or "UTF-8" in msg), msg


def test_pipeline_refuses_an_empty_or_partial_params_yaml_before_dvc_records_anything(tmp_path):
    """`make run` (flows pipeline) on an empty params.yaml, or one without the student section: exit 2
    with the section named, and no dvc.lock written (it used to record the validate stage, then fail)."""
    proj = make_project(tmp_path / "p", port=1)
    for text, says in (("", "params.yaml is empty"), (_without("student"), "student: missing section")):
        (proj.path / "params.yaml").write_text(text)
        p = proj.run(sys.executable, "-m", "flows", "pipeline", check=False, timeout=120)
        assert p.returncode == 2, p.stdout + p.stderr
        assert says in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert not (proj.path / "dvc.lock").exists()


# what validation resolves beyond a section's keys: each computed score's options, each kept fraction's KD settings
RESOLVED = {"scores": {"options"}, "student": {"kd_settings"}}


def test_validation_returns_one_typed_frozen_value_per_section_with_its_schema_keys():
    """Every section of the schema is one typed, frozen value of ``Params``, whose fields are the section's keys
    (plus what validation resolves there); the plain values stay available for records only (``as_dict``)."""
    import dataclasses

    from kdprune.config import SCHEMA
    from kdprune.selection import SelectSettings
    from kdprune.settings import Params

    p = validate(BASE)
    assert {f.name for f in dataclasses.fields(Params)} == set(SCHEMA) | {"plain"}
    for name, spec in SCHEMA.items():
        value = getattr(p, name)
        if not isinstance(spec, dict):
            assert value == p.as_dict()[name]
            continue
        if isinstance(value, SelectSettings):  # its methods parsed (Method), its options resolved per method
            assert value.labels == tuple(BASE["select"]["methods"]) and value.fractions == (0.1, 0.3, 0.5)
            continue
        fields = {f.name for f in dataclasses.fields(value)}
        assert fields == set(spec) | RESOLVED.get(name, set()), name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, next(iter(spec)), None)
    with pytest.raises(TypeError):
        p["teacher"]  # noqa: B018  (no dict look-ups: stage code reads the typed values)
    assert p.scores.options_of("el2n") == {"epoch": 5}  # resolved once, from the registration
    import pickle

    assert pickle.loads(pickle.dumps(p)) == p  # travels to Ray tasks and process pools
