"""Stage 0, ``validate``: check all of params.yaml before DVC touches any stage's outputs.

``dvc repro`` deletes a stage's outputs before it runs the stage's command, so a command that
refuses bad params is too late to protect them. This stage runs first (every other stage depends
on its output): it validates every key and, only if all are valid, writes ``data/params-ok``,
whose content never changes -- so a param change re-runs this check and then only the stages that
read that param. The output is ``persist``-ent (DVC does not delete it before the check), so a bad
value stops ``dvc repro`` here with every output, this one included, still in place.
"""
from __future__ import annotations

from pathlib import Path

from artifacts.files import atomic_write_text
from execution.params import load_params

MARKER = Path("data") / "params-ok"  # git-tracked (cache: false): a fresh clone has it, so validate is up to date
MARKER_TEXT = "params.yaml passed validation (kdprune/config.py); written by the validate stage\n"


def validate_stage(root: str | Path = ".") -> dict:
    load_params(root)  # raises ParamsError naming every bad key; nothing is written then
    atomic_write_text(Path(root) / MARKER, MARKER_TEXT)
    return {"work_s": 0.0}
