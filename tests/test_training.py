"""Trainer behaviour: resume equals an uninterrupted run (with and without a sampler), budgets."""
import io

import numpy as np
import pytest
import torch

import kdprune  # noqa: F401
from kdprune.data import DATASETS, stratified_split
from kdprune.models import build_model
from kdprune.selection import make_sampler
from kdprune.train import DeviceData, TrainConfig, seeded, train


@pytest.fixture(scope="module")
def data():
    raw = DATASETS.get("digits")()
    keep, val = stratified_split(raw.train_y, 0.1, 0)
    x01 = raw.train_x[keep] / 255.0
    mean, std = x01.mean(axis=(0, 2, 3)), x01.std(axis=(0, 2, 3))
    dev = torch.device("cpu")
    return (DeviceData.from_numpy(raw.train_x[keep][:400], raw.train_y[keep][:400], mean, std, dev),
            DeviceData.from_numpy(raw.train_x[val], raw.train_y[val], mean, std, dev))


class MemoryCheckpoint:
    """Round-trips through torch.save / torch.load(weights_only=True), as the file store does."""

    def __init__(self):
        self.blob = None

    def load(self):
        return None if self.blob is None else torch.load(io.BytesIO(self.blob), weights_only=True)

    def save(self, state):
        buf = io.BytesIO()
        torch.save(state, buf)
        self.blob = buf.getvalue()


class Crash(Exception):
    pass


def _run(data, sampler_name=None, crash_after=None, ckpt=None, **cfg_kw):
    train_d, val_d = data
    cfg = TrainConfig(epochs=5, batch_size=64, lr=0.05, pad=1, record_dynamics=sampler_name is None, **cfg_kw)
    sampler = None
    if sampler_name:
        opts = {"ratio": 0.4} if sampler_name == "rs2" else {}
        sampler = make_sampler(sampler_name, len(train_d), cfg.epochs, seed=3, **opts)
    with seeded(0):
        model = build_model("small_cnn", 1, 10, 8)

    def on_epoch(epoch, m):
        if epoch == crash_after:
            raise Crash()

    res = train(model, train_d, cfg, val=val_d, checkpoint=ckpt, sampler=sampler, on_epoch=on_epoch)
    return model, res


@pytest.mark.parametrize("sampler_name", [None, "rs2", "infobatch"])
def test_resumed_training_equals_uninterrupted(data, sampler_name):
    ref_model, ref = _run(data, sampler_name)
    ckpt = MemoryCheckpoint()
    with pytest.raises(Crash):
        _run(data, sampler_name, crash_after=2, ckpt=ckpt)
    model, res = _run(data, sampler_name, ckpt=ckpt)
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(res.history) == strip(ref.history)
    assert (res.steps, res.samples_seen, res.best_epoch) == (ref.steps, ref.samples_seen, ref.best_epoch)
    if sampler_name is None:
        np.testing.assert_array_equal(res.dynamics, ref.dynamics)


def test_checkpoint_from_other_settings_is_refused(data):
    ckpt = MemoryCheckpoint()
    with pytest.raises(Crash):
        _run(data, crash_after=1, ckpt=ckpt)
    with pytest.raises(ValueError, match="other settings"):
        _run(data, ckpt=ckpt, weight_decay=0.0)


def test_max_steps_stops_exactly_and_rs2_sees_its_share(data):
    train_d, _ = data
    _, res = _run(data, max_steps=13)
    assert res.steps == 13
    _, res = _run(data, "rs2")
    assert res.samples_seen == 5 * 160  # 40% of 400 each epoch
    assert res.steps == 5 * 3  # ceil(160 / 64) steps per epoch


def test_student_budget_modes():
    from kdprune.config import validate
    from kdprune.train.plan import student_budget

    sp = validate({"student": {"epochs": 10, "batch_size": 50, "budget": "epochs"}}).student
    assert student_budget(sp, 1000, {}, 100) == (10, None)
    sp = validate({"student": {"epochs": 10, "batch_size": 50, "budget": "steps"}}).student
    # full data: 10 epochs x 20 steps = 200 steps; a 100-example subset has 2 steps/epoch -> 100 epochs
    assert student_budget(sp, 1000, {}, 100) == (100, 200)
    rs2 = {"sampler": {"name": "rs2", "options": {"ratio": 0.1}}}
    assert student_budget(sp, 1000, rs2, 1000) == (100, 200)


COMPILE_PROBE = """
from kdprune.reproducibility import apply
apply("native", 2)  # torch.compile on CPU needs the machine's kernels (config refuses it under portable)
import torch, pytest
from kdprune.models import build_model
from kdprune.train import DeviceData, TrainConfig, seeded, train
{body}
"""


def test_torch_compile_trains_like_eager():
    """``compile: true`` runs the same training through torch.compile (inductor; needs a C++ compiler on CPU),
    in a process with native kernels (this one is pinned portable, under which params refuse compile on CPU)."""
    import inspect
    import os
    import shutil
    import subprocess
    import sys
    import textwrap

    from bench.project import REPO
    from kdprune.reproducibility import PORTABLE_ENV

    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    body = textwrap.dedent(inspect.getsource(_compile_vs_eager)).split("\n", 1)[1]
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    out = subprocess.run([sys.executable, "-c", COMPILE_PROBE.format(body=textwrap.dedent(body))], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]


def test_params_refuse_compile_on_cpu_under_portable():
    from kdprune.config import ParamsError, validate

    with pytest.raises(ParamsError, match="student.compile: true trains on the CPU"):
        validate({"device": "cpu", "student": {"compile": True}})
    validate({"device": "cpu", "student": {"compile": True}, "reproducibility": {"cpu": "native"}})


def _compile_vs_eager():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (64,), generator=g)
    data = DeviceData.from_numpy(x.numpy(), y.numpy(), [0.5], [0.25], torch.device("cpu"))
    runs = []
    for compile_ in (False, True):
        with seeded(0):
            model = build_model("small_cnn", 1, 10, 8)
        runs.append(train(model, data, TrainConfig(epochs=2, batch_size=32, lr=0.05, pad=1, compile=compile_)))
    for a, b in zip(runs[0].history, runs[1].history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    for k, v in runs[0].best_state.items():
        torch.testing.assert_close(v.float(), runs[1].best_state[k].float(), rtol=1e-3, atol=1e-4)


def test_channels_last_on_cpu_trains_like_contiguous_in_nhwc():
    """``channels_last: true`` trains in NHWC on CPU (the Fashion study's speed-up): the weights are kept
    NHWC and the run matches the contiguous one up to rounding; null keeps CPU runs contiguous."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (96,), generator=g)
    data = DeviceData.from_numpy(x.numpy(), y.numpy(), [0.5], [0.25], torch.device("cpu"))
    runs, models = [], []
    for cl in (None, True):
        with seeded(0):
            model = build_model("pool_cnn", 1, 10, 28)
        runs.append(train(model, data, TrainConfig(epochs=2, batch_size=32, lr=0.05, pad=0, channels_last=cl)))
        models.append(model)
    conv = [m for m in models[1].modules() if isinstance(m, torch.nn.Conv2d)][1].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    conv0 = [m for m in models[0].modules() if isinstance(m, torch.nn.Conv2d)][1].weight
    assert conv0.is_contiguous()
    for a, b in zip(runs[0].history, runs[1].history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    for k, v in runs[0].best_state.items():
        torch.testing.assert_close(v.float(), runs[1].best_state[k].float(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("with_val", [True, False])
def test_best_model_is_selected_on_the_metric_it_names(data, with_val):
    """The result says which history metric chose the model (val accuracy, or train accuracy when
    there is no validation split) and holds that metric's best value, at the epoch whose weights it keeps.
    The validation labels are shifted by one class, so its accuracy falls as the model learns and the
    two metrics pick different epochs."""
    train_d, val_d = data
    wrong = DeviceData(val_d.x, (val_d.y + 1) % 10, val_d.mean, val_d.std)
    with seeded(0):
        model = build_model("small_cnn", 1, 10, 8)
    weights = {}

    def on_epoch(epoch, m):
        weights[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    res = train(model, train_d, TrainConfig(epochs=4, batch_size=64, lr=0.2), val=wrong if with_val else None,
                on_epoch=on_epoch)
    metric = "val_acc" if with_val else "train_acc"
    assert res.selected_on == metric and metric in res.history[0]
    scores = [h[metric] for h in res.history]
    assert res.best_score == max(scores)
    assert res.best_epoch == len(scores) - scores[::-1].index(max(scores))  # the last epoch reaching it
    assert res.best_epoch == (1 if with_val else 4)  # the metrics disagree: the test can tell them apart
    for k, v in weights[res.best_epoch].items():
        assert torch.equal(res.best_state[k], v), k
