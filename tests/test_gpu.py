"""The CUDA path of the trainer (bf16 autocast, channels_last, device-resident data). Skipped without a GPU."""
import numpy as np
import pytest
import torch

import kdprune  # noqa: F401
from kdprune.data import DATASETS, stratified_split
from kdprune.device import resolve_device
from kdprune.distill import KDSetting
from kdprune.models import build_model
from kdprune.train import DeviceData, TrainConfig, evaluate, seeded, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_auto_device_is_cuda_and_teacher_plus_kd_student_train_on_it():
    dev = resolve_device("auto")
    assert dev.type == "cuda"
    raw = DATASETS.get("digits")()
    keep, val = stratified_split(raw.train_y, 0.1, 0)
    x01 = raw.train_x[keep] / 255.0
    mean, std = x01.mean(axis=(0, 2, 3)), x01.std(axis=(0, 2, 3))
    tr = DeviceData.from_numpy(raw.train_x[keep], raw.train_y[keep], mean, std, dev)
    va = DeviceData.from_numpy(raw.train_x[val], raw.train_y[val], mean, std, dev)
    te = DeviceData.from_numpy(raw.test_x, raw.test_y, mean, std, dev)
    with seeded(0):
        teacher = build_model("small_cnn", 1, 10, 8)
    res = train(teacher, tr, TrainConfig(epochs=15, batch_size=64, lr=0.05, pad=1, record_dynamics=True), val=va)
    assert res.dynamics.shape == (15, len(tr), 10) and res.dynamics.dtype == np.float16
    assert np.isfinite(res.dynamics.astype(np.float32)).all()
    teacher.load_state_dict(res.best_state)
    assert evaluate(teacher, te)["acc"] > 0.9
    subset = torch.arange(0, len(tr), 3, device=dev)
    with seeded(1):
        student = build_model("small_cnn", 1, 10, 8)
    r = train(student, tr, TrainConfig(epochs=20, batch_size=32, lr=0.05, pad=1), subset=subset, val=va,
              teacher=teacher, kd=KDSetting("kd", 0.5, 4.0, "small_cnn", "constant", "kd0.5"))
    student.load_state_dict(r.best_state)
    assert next(student.parameters()).is_cuda
    assert evaluate(student, te)["acc"] > 0.8
