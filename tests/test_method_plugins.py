"""Adding a method is adding one file: a dataset, a model, a score, a joint selector, a per-epoch sampler, a
static selection method, a KD loss with its own hyperparameter and a KD weight schedule, each a module
dropped into its package (no import kept by hand anywhere: every registry's package discovers its modules,
kdprune.registry.discover) that declares its options in its registration, named in params.yaml and run from
it: by the core (fast) and by the real pipeline (integration)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from tests.conftest import REPO, TINY, make_project

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
    "kdprune/selection/samplers/window.py": '''
        """Test per-epoch sampler: a window of the pool that slides by its own size every epoch."""
        import numpy as np

        from kdprune.options import Option
        from kdprune.selection.samplers.base import Sampler, register_sampler


        @register_sampler("window")
        class WindowSampler(Sampler):
            name = "window"
            fraction_option = "share"
            options = {"offset": Option(int, 0, "first position of epoch 1", low=0)}

            @classmethod
            def epoch_size(cls, n, share, **_):
                return max(1, round(share * n))

            def __init__(self, n, epochs, seed=0, share=None, offset=0):
                super().__init__(n, epochs, seed)
                self.size, self.offset = self.epoch_size(self.n, share), int(offset)

            def _draw(self, epoch):
                start = self.offset + (epoch - 1) * self.size
                return np.sort(np.arange(start, start + self.size) % self.n), None
    ''',
    "kdprune/selection/static/band.py": '''
        """Test static selection method: the examples whose score rank is nearest a quantile."""
        import numpy as np

        from kdprune.options import Option
        from kdprune.selection.static.base import kept_count, register_selector, tie_ranks


        def _fits(o, params):
            bad = [f for f in params.select.fractions if not f / 2 <= o["center"] <= 1 - f / 2]
            return f"select.band.center: {o['center']} puts the band outside the ranks at {bad}" if bad else None


        @register_selector("band", method=True, check=_fits, balance="global",
                           options={"score": Option(str, "random", "the score ranked"),
                                    "center": Option(float, 0.5, "the rank quantile kept around", low=0.0, high=1.0)},
                           reads=lambda o: (o["score"], None), keywords=lambda o, fraction: {"center": o["center"]})
        def band(ids, labels, scores, fraction, seed, center=0.5, size=None):
            ids = np.asarray(ids)
            order = np.lexsort((tie_ranks(ids, seed), np.asarray(scores, dtype=np.float64)))
            quantile = np.empty(len(ids))
            quantile[order] = np.arange(len(ids)) / max(1, len(ids) - 1)
            pick = np.lexsort((tie_ranks(ids, seed), np.abs(quantile - center)))[: kept_count(len(ids), fraction, size)]
            return np.sort(ids[pick])
    ''',
    "kdprune/distill/losses/soft_beta.py": '''
        """Test KD loss with its own hyperparameter: beta of the KL term, 1 - beta of the squared distance of
        the softened probabilities. It refuses any beta but the test's, so a run shows that params' beta reached it."""
        import torch.nn.functional as F

        from kdprune.distill.base import register_loss
        from kdprune.options import Option


        @register_loss("soft_beta", options={"beta": Option(float, 1.0, "share of the KL term", low=0.0, high=1.0)})
        def soft_beta(student, y, teacher, weight, temperature, beta=1.0):
            if beta != 0.25:
                raise ValueError(f"soft_beta: beta {beta} is not the test's 0.25 (student.soft_beta.beta)")
            ce = F.cross_entropy(student, y, reduction="none")
            log_s = F.log_softmax(student.float() / temperature, dim=1)
            log_t = F.log_softmax(teacher.float() / temperature, dim=1)
            kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(1)
            mse = ((log_s.exp() - log_t.exp()) ** 2).sum(1)
            return (1.0 - weight) * ce + weight * (beta * temperature**2 * kl + (1.0 - beta) * mse)
    ''',
    "kdprune/distill/schedules/step.py": '''
        """Test KD weight schedule: one weight up to a kept fraction, another above it (student.kd_step)."""
        from kdprune.distill.schedule import register_schedule
        from kdprune.options import Option


        @register_schedule("step", "kd_step",
                           Option(list, [0.3, 0.9, 0.2], "[fraction, weight at or below it, weight above it]",
                                  item=float, low=0.0, high=1.0,
                                  validate=lambda v: None if len(v) == 3 else "must be [fraction, weight, weight]"),
                           arms=lambda p: [(list(p), f"kdstep{p[0]:g}")])
        def step(fraction, p):
            return p[1] if fraction <= p[0] else p[2]
    ''',
}
# params naming every plugin, with options of their own (the loss's beta, the schedule's argument, the sampler's
# and the static method's options)
PLUGIN_PARAMS = {
    "data": {"dataset": "stripes"},
    "teacher": {"arch": "tiny_mlp", "pad": 0},
    "scores": {"methods": ["random", "label_score"]},
    "select": {"methods": ["random", "label_score", "by_norm", "window", "band"], "fractions": [0.5],
               "window": {"offset": 3}, "band": {"score": "label_score", "center": 0.4}},
    "student": {"arch": "tiny_mlp", "pad": 0, "loss": "soft_beta", "soft_beta": {"beta": 0.25},
                "kd_schedule": "step", "kd_step": [0.6, 0.7, 0.2]},
}

# Runs in a copy of the core with the plugin files added (cwd: the copy), from params only
CORE_RUN = '''
import json, sys
import numpy as np
import torch
from kdprune.config import ParamsError, validate

params = validate(json.loads(sys.argv[1]))
from kdprune.data import DATASETS
from kdprune.distill import KDSetting
from kdprune.models import build_model
from kdprune.scores import SCORES, ScoreContext
from kdprune.selection import (JOINT, SAMPLERS, STATIC_METHODS, JointInputs, make_sampler,
                               run_joint, select)
from kdprune.train.trainer import train
from kdprune.train.types import DeviceData, TrainConfig

out = {}
raw = DATASETS.get(params.data.dataset)()
ids = np.arange(len(raw.train_y), dtype=np.int64)
out["dataset"] = [len(ids), len(raw.classes)]
model = build_model(params.teacher.arch, 1, 4, 8)
ctx = ScoreContext(ids, raw.train_y, 4, dynamics=np.zeros((1, len(ids), 4)))
score = SCORES.get("label_score")(ctx, **params.scores.options_of("label_score"))
sel = params.select
m = next(x for x in sel.methods if x.label == "band")
spec = STATIC_METHODS.get(m.selector)
kw = spec.keywords(sel.options_of("band"), 0.5)
out["band"] = {"score": m.score, "keywords": kw, "n": len(select(m.selector, ids, raw.train_y, score, 0.5, **kw)),
               "stochastic": m.stochastic}
feats = np.random.default_rng(0).normal(size=(len(ids), 5))
kept, _ = run_joint("by_norm", ids, JointInputs(raw.train_y, 4, features=feats), 0.5,
                    options=sel.options_of("by_norm"))
out["by_norm"] = len(kept)
w = next(x for x in sel.methods if x.label == "window")
opts = sel.sampler_options(w, 0.5)
sampler = make_sampler(w.sampler, len(ids), 3, **opts)
out["window"] = {"options": opts, "epoch2": sampler.epoch_positions(1)[:2].tolist() + sampler.epoch_positions(2)[:2].tolist()}
out["kd"] = [[f, [[s.label, s.weight, s.teacher] for s in kds]] for f, kds in params.student.kd]
sp = params.student
data = DeviceData.from_numpy(raw.train_x, raw.train_y, [0.5], [0.25], torch.device("cpu"))
teacher_logits = torch.randn(len(ids), 4, generator=torch.Generator().manual_seed(0))
cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05)
kd = dict(sp.kd)[0.5][0]  # the KD setting of a student kept at 0.5, its loss's options resolved by validation
res = train(build_model(sp.arch, 1, 4, 8), data, cfg, teacher_logits=teacher_logits, kd=kd)
out["trained_steps"] = res.steps
try:  # without its options the loss gets its default beta (1.0), which the test's loss refuses
    train(build_model(sp.arch, 1, 4, 8), data, cfg, teacher_logits=teacher_logits, kd=KDSetting(
        kd.loss, kd.weight, kd.temperature, kd.teacher, kd.schedule, kd.label))
    out["default_beta"] = "accepted"
except ValueError as e:
    out["default_beta"] = str(e)
plain = params.as_dict()
for bad in ({"student": {**plain["student"], "soft_beta": {"beta": 2.0}}},
            {"student": {**plain["student"], "kd_step": [0.5, 0.5]}},
            {"select": {**plain["select"], "band": {"score": "label_score", "center": 0.1}}},
            {"select": {**plain["select"], "window": {"offset": -1}}}):
    try:
        validate({**plain, **bad})
        out.setdefault("refused", []).append(None)
    except ParamsError as e:
        out.setdefault("refused", []).append(e.errors)
print(json.dumps(out))
'''


REGISTERED = '''
import json
from kdprune.data import DATASETS
from kdprune.distill import LOSSES, SCHEDULES
from kdprune.models import MODELS
from kdprune.scores import SCORES
from kdprune.selection import JOINT, SAMPLERS, STATIC_METHODS

registries = {"stripes": DATASETS, "tiny_mlp": MODELS, "label_score": SCORES, "by_norm": JOINT, "window": SAMPLERS,
              "band": STATIC_METHODS, "soft_beta": LOSSES, "step": SCHEDULES}
print(json.dumps({name: [name in r, r.kind, len(r.names())] for name, r in registries.items()}))
'''


def core_copy(dest, discovery: bool = True):
    """The core package with every plugin file added. ``discovery`` False: each package imports only the
    modules it had before (what an ``__init__`` with hand-kept imports would), not the new files."""
    shutil.copytree(REPO / "kdprune", dest / "kdprune", ignore=shutil.ignore_patterns("__pycache__"))
    for path, text in PLUGINS.items():
        (dest / path).write_text(textwrap.dedent(text))
    if not discovery:
        kept = sorted(".".join(f.relative_to(REPO).with_suffix("").parts) for f in (REPO / "kdprune").rglob("*.py"))
        reg = dest / "kdprune" / "registry.py"
        reg.write_text(reg.read_text() + f"""

HAND_KEPT = {kept!r}


def discover(package, path):  # the modules a hand-kept list names, not every module of the package
    for name in sorted(m.name for m in pkgutil.iter_modules(path)):
        if f"{{package}}.{{name}}" in HAND_KEPT or f"{{package}}.{{name}}.__init__" in HAND_KEPT:
            importlib.import_module(f"{{package}}.{{name}}")
""")
    return dest


def run_core(dest, params: dict, code: str = CORE_RUN):
    return subprocess.run([sys.executable, "-c", code, json.dumps(params)], cwd=dest, capture_output=True,
                          text=True, timeout=300)


def plugin_params() -> dict:
    params = {k: {**TINY.get(k, {}), **v} for k, v in PLUGIN_PARAMS.items()}
    params["scores"].pop("el2n")  # TINY's el2n options: el2n is not computed here
    return params


def test_each_kind_of_method_is_one_file_that_runs_from_params(tmp_path):
    """A dataset, a model, a score, a joint selector, a per-epoch sampler, a static selection method, a KD loss
    with a hyperparameter and a KD schedule, each one new file in its package: registered by discovery, named
    in params, validated against their registrations (bad options refused, naming the key), run by the core
    from params (the loss's beta reaching it inside the student's KDSetting)."""
    proj = core_copy(tmp_path)
    reg = run_core(proj, {}, REGISTERED)
    assert reg.returncode == 0, reg.stderr[-3000:]
    assert all(found for found, _, _ in json.loads(reg.stdout.splitlines()[-1]).values()), reg.stdout
    params = plugin_params()
    params["select"]["fractions"] = [0.5, 0.7]  # the schedule's weight on both sides of its step
    p = run_core(proj, params)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.splitlines()[-1])
    assert out["dataset"] == [320, 4]
    assert out["band"] == {"score": "label_score", "keywords": {"center": 0.4}, "n": 160, "stochastic": False}
    assert out["by_norm"] == 160
    assert out["window"]["options"] == {"offset": 3, "share": 0.5}
    assert out["window"]["epoch2"] == [3, 4, 0, 1]  # epoch 1: 3..162; epoch 2: 163..322 mod 320, sorted: 0, 1, ...
    # per kept fraction, validation's KD settings: weight 0.7 up to fraction 0.6, 0.2 above it
    assert out["kd"] == [[0.5, [["kdstep0.6", 0.7, "tiny_mlp"]]], [0.7, [["kdstep0.6", 0.2, "tiny_mlp"]]]]
    assert out["trained_steps"] == 5  # 320 examples, batches of 64: one epoch
    assert out["default_beta"] == "soft_beta: beta 1.0 is not the test's 0.25 (student.soft_beta.beta)"
    keys = [errs[0].split(":")[0] if errs else None for errs in out["refused"]]
    assert keys == ["student.soft_beta", "student.kd_step", "select.band.center", "select.window"], out["refused"]


def test_without_discovery_the_new_files_are_not_registered(tmp_path):
    """The same files, with each package importing only the modules a hand-kept list names (its modules before
    the files were added): none of the eight registers, and params naming them are refused."""
    proj = core_copy(tmp_path, discovery=False)
    reg = run_core(proj, {}, REGISTERED)
    assert reg.returncode == 0, reg.stderr[-3000:]
    found = json.loads(reg.stdout.splitlines()[-1])
    assert not any(f for f, _, _ in found.values()), found
    assert all(n > 0 for _, _, n in found.values()), found  # the built-in methods still register
    p = run_core(proj, plugin_params())
    assert p.returncode != 0 and "ParamsError" in p.stderr
    for name in ("stripes", "tiny_mlp", "soft_beta", "step"):  # select.methods names only its first bad item
        assert f"{name!r} is not a known {found[name][1]}" in p.stderr, (name, p.stderr[-3000:])


@pytest.mark.integration
def test_one_file_per_method_kind_runs_from_params(tmp_path, prefect_port):
    """The eight files in a copy of the project, run by the real pipeline from params.yaml."""
    port, home = prefect_port
    params = {**TINY, **{k: {**TINY.get(k, {}), **v} for k, v in PLUGIN_PARAMS.items()}}
    proj = make_project(tmp_path / "kdp", port, params)
    proj.env["PREFECT_HOME"] = str(home)
    for path, text in PLUGINS.items():
        (proj.path / path).write_text(textwrap.dedent(text))
    proj.run("python", "-m", "flows", "pipeline", timeout=900)
    df = pd.read_csv(proj.path / "reports" / "results.csv")
    assert set(df["method"]) == {"random", "label_score", "by_norm", "window", "band"}, df["method"]
    assert (df["dataset"] == "stripes").all() and (df["student_arch"] == "tiny_mlp").all()
    assert (df["teacher_arch"] == "tiny_mlp").all()
    students = [json.loads(f.read_text()) for f in (proj.path / "models" / "students").glob("*/metrics.json")]
    kd = [s for s in students if s["kd"]]
    assert {s["loss"] for s in kd} == {"soft_beta"}, students  # trained: the loss took params' beta (0.25)
    assert {(s["kd_schedule"], s["kd_weight"]) for s in kd} == {("step", 0.7)}, kd  # at kept fraction 0.5
    assert {s["loss"] for s in students if not s["kd"]} == {"ce"}
    manifests = proj.path / "data" / "manifests"
    band = json.loads((manifests / "band-0.5.json").read_text())
    assert (band["selector"], band["score"], band["selector_options"]) == ("band", "label_score", {"center": 0.4})
    window = json.loads((manifests / "window-0.5-0.json").read_text())
    assert window["sampler"]["options"] == {"offset": 3, "share": 0.5}, window["sampler"]
