"""Adding a score is one file: a module with a registration (one option) dropped into kdprune/scores is
computed by the real pipeline (`dvc repro scores`) with its option set from params.yaml under the score's
name, and a misspelt option is refused, naming the valid ones, before anything is computed."""
import json
import textwrap

import numpy as np
import pytest

from tests.conftest import TINY, make_project

PLUGIN = textwrap.dedent('''
    """Test score: the label plus an offset (one option)."""
    import numpy as np

    from kdprune.options import Option
    from kdprune.scores.base import ScoreContext, register_score


    @register_score("label_offset", keep="high", hard="high", variant="label + offset (test)", needs=("dynamics",),
                    options={"offset": Option(float, 0.0, "added to every label")})
    def label_offset(ctx: ScoreContext, offset: float = 0.0) -> np.ndarray:
        """The label plus ``offset``."""
        return ctx.labels + offset
''')


@pytest.mark.integration
def test_a_score_added_as_one_module_runs_with_its_option_from_params(tmp_path, prefect_port):
    port, home = prefect_port
    methods = [*TINY["scores"]["methods"], "label_offset"]
    proj = make_project(tmp_path / "kdp", port, {**TINY, "scores": {**TINY["scores"], "methods": methods,
                                                                     "label_offset": {"ofset": 7.5}}})
    proj.env["PREFECT_HOME"] = str(home)
    (proj.path / "kdprune" / "scores" / "label_offset.py").write_text(PLUGIN)

    bad = proj.run("dvc", "repro", "scores", check=False)
    assert bad.returncode != 0
    out = bad.stdout + bad.stderr
    assert "scores.label_offset" in out and "label_offset.ofset: unknown option; valid options: offset" in out, out
    assert "offset (float, default 0.0)" in out
    assert not (proj.path / "data" / "prepared").exists()  # refused before any compute

    proj.write_params({**TINY, "scores": {**TINY["scores"], "methods": methods, "label_offset": {"offset": 7.5}}})
    proj.run("dvc", "repro", "scores")
    sdir = proj.path / "data" / "scores"
    info = json.loads((sdir / "label_offset.json").read_text())
    assert info["options"] == {"offset": 7.5} and info["keep"] == "high"
    values = np.load(sdir / "label_offset.npy")
    labels = np.load(proj.path / "data" / "prepared" / "digits" / "train_y.npy")
    np.testing.assert_array_equal(np.load(sdir / "ids.npy"), np.load(proj.path / "data/prepared/digits/train_ids.npy"))
    np.testing.assert_array_equal(values, labels + 7.5)  # the option's value reached the function
