"""Run by tests/test_reproducibility.py in a fresh interpreter: a small teacher (with its training
dynamics), the EL2N score from them and a KD student on a random half, under ``reproducibility.cpu``
= argv[1]; prints one sha256 per result. The pin is applied first, as an entrypoint does it."""
import hashlib
import json
import sys

from kdprune.reproducibility import apply, arithmetic, check

mode = sys.argv[1]
apply(mode, 2)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kdprune.data import DATASETS, stratified_split  # noqa: E402
from kdprune.distill import KDSetting  # noqa: E402
from kdprune.models import build_model  # noqa: E402
from kdprune.scores import SCORES, ScoreContext  # noqa: E402
from kdprune.train import DeviceData, TrainConfig, seeded, train  # noqa: E402

compute = check(mode, 2)
raw = DATASETS.get("digits")(root=None)
keep, _ = stratified_split(raw.train_y, 0.5, 0)
x, y = raw.train_x[keep], raw.train_y[keep]
data = DeviceData.from_numpy(x, y, [0.3], [0.3], torch.device("cpu"))


def weights(model) -> str:
    h = hashlib.sha256()
    for v in model.state_dict().values():
        h.update(v.detach().numpy().tobytes())
    return h.hexdigest()


cfg = dict(epochs=3, batch_size=32, lr=0.05, pad=1, order_seed=0, aug_seed=0)
with seeded(0):
    teacher = build_model("small_cnn", 1, 10, 8)
res = train(teacher, data, TrainConfig(**cfg, record_dynamics=True))
ctx = ScoreContext(ids=np.arange(len(y), dtype=np.int64), labels=y.astype(np.int64), num_classes=10,
                   dynamics=res.dynamics)
el2n = SCORES.get("el2n")(ctx, epoch=2)
subset = torch.from_numpy(np.random.default_rng(0).permutation(len(y))[: len(y) // 2])
with seeded(1):
    student = build_model("small_cnn", 1, 10, 8)
train(student, data, TrainConfig(**cfg), subset=subset, teacher=teacher,
      kd=KDSetting("kd", 0.5, 4.0, "small_cnn", "constant", "kd0.5"))
print(json.dumps({"arithmetic": arithmetic(), "teacher": weights(teacher), "el2n": hashlib.sha256(el2n.tobytes()).hexdigest(),
                  "student": weights(student), "compute": compute}))
