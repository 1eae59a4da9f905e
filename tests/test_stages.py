"""One list of stages: kdprune/config.py's ``STAGES`` (with the registries each checks). The pipeline flow and
the command line take theirs from it; dvc.yaml, a literal file DVC reads, must name the same stages in the
same order, each running ``python -m flows <stage>``."""
from __future__ import annotations

import yaml

from bench.project import REPO
from kdprune.config import REGISTRIES, STAGE_NAMES, STAGES


def test_dvc_yaml_names_the_stages_of_the_list_in_its_order():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert tuple(dvc) == STAGES, f"dvc.yaml's stages {list(dvc)} differ from kdprune/config.py's STAGES {list(STAGES)}"
    assert {name: spec["cmd"] for name, spec in dvc.items()} == {s: f"python -m flows {s}" for s in STAGES}


def test_the_pipeline_flow_and_the_command_line_take_the_list():
    from cli.main import COMMANDS
    from cli.main import STAGES as CLI_STAGES
    from flows.pipeline import STAGES as FLOW_STAGES

    assert tuple(FLOW_STAGES) == STAGES
    assert ("validate", *CLI_STAGES) == STAGES
    assert set(STAGES) <= set(COMMANDS)  # `kdprune <stage>` for every stage (what `python -m flows <stage>` runs)


def test_every_stage_checks_names_of_known_registries():
    assert all(set(kinds) <= set(REGISTRIES) for kinds in STAGE_NAMES.values())
    assert set(STAGE_NAMES["validate"]) == set(REGISTRIES)  # DVC's first stage checks every name
