"""Adding a method is adding one file: a dataset, a model, a score, a joint selector and a KD loss, each a
module dropped into its package (no import kept by hand anywhere: every registry's package discovers its
modules, kdprune.registry.discover), named in params.yaml and run by the real pipeline."""
from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest

from tests.conftest import TINY, make_project

PLUGINS = {
    "kdprune/data/stripes.py": '''
        """Test dataset: 8x8 grey images of one bright row per class (4 classes) over seeded noise."""
        import numpy as np

        from kdprune.data.base import RawDataset, register_dataset


        @register_dataset("stripes")
        def load_stripes(root=None) -> RawDataset:
            rng = np.random.default_rng(0)

            def split(n):
                y = np.arange(n, dtype=np.int64) % 4
                x = rng.integers(0, 64, size=(n, 1, 8, 8)).astype(np.uint8)
                x[np.arange(n), 0, 2 * y, :] = 255
                return x, y

            (tx, ty), (sx, sy) = split(320), split(80)
            return RawDataset(train_x=tx, train_y=ty, test_x=sx, test_y=sy, classes=list("abcd"), source="test")
    ''',
    "kdprune/models/tiny_mlp.py": '''
        """Test architecture: a one-hidden-layer MLP."""
        import torch.nn as nn

        from kdprune.models.base import register_model


        class TinyMLP(nn.Module):
            def __init__(self, in_channels, num_classes, image_size):
                super().__init__()
                self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, 16), nn.ReLU())
                self.head = nn.Linear(16, num_classes)

            def features(self, x):
                return self.body(x)

            def forward(self, x):
                return self.head(self.features(x))


        @register_model("tiny_mlp")
        def tiny_mlp(in_channels: int, num_classes: int, image_size: int) -> TinyMLP:
            return TinyMLP(in_channels, num_classes, image_size)
    ''',
    "kdprune/scores/label_score.py": '''
        """Test score: the label."""
        import numpy as np

        from kdprune.scores.base import ScoreContext, register_score


        @register_score("label_score", keep="high", hard="high", variant="the label (test)", needs=("dynamics",))
        def label_score(ctx: ScoreContext) -> np.ndarray:
            """The label."""
            return ctx.labels.astype(np.float64)
    ''',
    "kdprune/selection/joint/by_norm.py": '''
        """Test joint selector: the largest feature norms."""
        import numpy as np

        from kdprune.selection.joint.base import Picked, register_joint


        @register_joint("by_norm", needs=("features",), seeded=False, balance=False, variant="largest norm (test)",
                        cost="one teacher forward")
        def by_norm(inputs, k, rng):
            """The k examples whose features have the largest norm."""
            norms = np.linalg.norm(np.asarray(inputs.features, dtype=np.float64), axis=1)
            return Picked(np.argsort(-norms, kind="stable")[:k].astype(np.int64))
    ''',
    "kdprune/distill/soft_mse.py": '''
        """Test KD loss: cross-entropy plus the squared distance of the softened probabilities."""
        import torch.nn.functional as F

        from kdprune.distill.base import register_loss


        @register_loss("soft_mse")
        def soft_mse(student, y, teacher, weight, temperature):
            ce = F.cross_entropy(student, y, reduction="none")
            p_s = F.softmax(student.float() / temperature, dim=1)
            p_t = F.softmax(teacher.float() / temperature, dim=1)
            return (1.0 - weight) * ce + weight * ((p_s - p_t) ** 2).sum(1)
    ''',
}


@pytest.mark.integration
def test_one_file_per_method_kind_runs_from_params(tmp_path, prefect_port):
    port, home = prefect_port
    params = {**TINY, "data": {"dataset": "stripes"},
              "teacher": {**TINY["teacher"], "arch": "tiny_mlp", "pad": 0},
              "scores": {**TINY["scores"], "methods": ["random", "label_score"]},
              "select": {**TINY["select"], "methods": ["random", "label_score", "by_norm"], "fractions": [0.5]},
              "student": {**TINY["student"], "arch": "tiny_mlp", "pad": 0, "loss": "soft_mse"}}
    proj = make_project(tmp_path / "kdp", port, params)
    proj.env["PREFECT_HOME"] = str(home)
    for path, text in PLUGINS.items():
        (proj.path / path).write_text(textwrap.dedent(text))
    proj.run("python", "-m", "flows", "pipeline", timeout=900)
    df = pd.read_csv(proj.path / "reports" / "results.csv")
    assert set(df["method"]) == {"random", "label_score", "by_norm"}, df["method"]
    assert (df["dataset"] == "stripes").all() and (df["student_arch"] == "tiny_mlp").all()
    assert (df["teacher_arch"] == "tiny_mlp").all()
    students = [json.loads(f.read_text()) for f in (proj.path / "models" / "students").glob("*/metrics.json")]
    assert {s["loss"] for s in students if s["kd"]} == {"soft_mse"}, students
    assert {s["loss"] for s in students if not s["kd"]} == {"ce"}
