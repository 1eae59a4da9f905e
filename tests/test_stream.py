"""The streaming data path: datasets read from image files while training (kdprune/data/stream.py,
kdprune/train/stream.py, the prepare stage's index), the imagenet layouts, and the image-folder writers."""
from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from kdprune.config import ParamsError, validate
from kdprune.data import DATASETS, DatasetFormatError, DatasetUnavailable
from kdprune.data.stream import FILE_DATASETS, Key, StreamDataset, StreamSpec, encode_paths, file_sizes
from kdprune.data.synthetic import export_folder, write_synthetic
from kdprune.distill import KDSetting
from kdprune.models import build_model
from kdprune.train import TrainConfig, predict_logits, seeded, train
from artifacts.files import IntegrityError
from artifacts.models import device_data
import artifacts.stages as stages
from artifacts.stages import load_prepared, prepared_dir
from tasks.prepare import write_prepared

LOG = logging.getLogger("test_stream")


@pytest.fixture(scope="module")
def digits_png(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits_png")
    export_folder(DATASETS.get("digits")(), out, "png", workers=1)
    return out


@pytest.fixture(scope="module")
def synthetic_jpg(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic(out, classes=4, images=64, test_images=16, size=24, fmt="jpg", seed=3, workers=1)
    return out


def _params(folder: Path, loader: str, **data) -> dict:
    return validate({"data": {"dataset": "imagefolder", "root": str(folder), "loader": loader, "workers": 0, **data},
                     "teacher": {"pad": 0}, "student": {"pad": 0}})


def _prepare(root: Path, params: dict):
    write_prepared(root, params, LOG)
    return load_prepared(root, params.data.dataset)


def _fit(meta, splits, params, cfg: TrainConfig, **kw):
    c, h, _ = meta["shape"]
    with seeded(0):
        model = build_model("small_cnn", c, meta["num_classes"], h)
    data = device_data(meta, splits["train"], "cpu", params)
    return model, train(model, data, cfg, val=device_data(meta, splits["val"], "cpu", params), **kw)


def test_stream_trains_exactly_as_memory_without_augmentation(digits_png, tmp_path):
    """Same PNG folder, in memory and streamed (2 workers): the same ids, splits, mean/std, batches,
    so the same losses, dynamics and predictions, bit for bit."""
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, record_dynamics=True)
    out = {}
    for loader in ("memory", "stream"):
        p = _params(digits_png, loader, image_size=8, resize=8, random_crop=False, workers=2)
        meta, splits = _prepare(tmp_path / loader, p)
        assert meta.get("loader", "memory") == loader
        model, res = _fit(meta, splits, p, cfg)
        logits = predict_logits(model, device_data(meta, splits["test"], "cpu", p), batch_size=100)
        out[loader] = (meta, splits, res, logits)
    (mm, ms, rm, lm), (sm, ss, rs, ls) = out["memory"], out["stream"]
    assert sm["sizes"] == mm["sizes"] and sm["mean"] == mm["mean"] and sm["std"] == mm["std"]
    for s in ("train", "val", "test"):
        assert np.array_equal(ms[s].ids, ss[s].ids) and np.array_equal(ms[s].y, ss[s].y)
    assert ss["train"].x is None and ss["train"].files is not None
    assert [h["train_loss"] for h in rm.history] == [h["train_loss"] for h in rs.history]
    assert np.array_equal(rm.dynamics, rs.dynamics, equal_nan=True)
    assert torch.equal(lm, ls)


def _dataset(folder: Path, rows=None, **spec) -> StreamDataset:
    listing = FILE_DATASETS.get("imagefolder")(root=str(folder))
    files = listing.train_files
    ids = np.arange(len(files), dtype=np.int64)
    rows = np.arange(len(files)) if rows is None else np.asarray(rows)
    return StreamDataset(folder, encode_paths([files[r] for r in rows]), file_sizes(folder, [files[r] for r in rows]),
                         ids[rows], StreamSpec(**{"image_size": 16, "resize": 20, "mode": "RGB", **spec}))


def test_crops_are_a_pure_function_of_seed_epoch_and_sample_id(synthetic_jpg):
    full = _dataset(synthetic_jpg)
    subset_rows = [5, 17, 40]
    sub = _dataset(synthetic_jpg, subset_rows)
    for k, r in enumerate(subset_rows):  # a subset run sees the full run's crop for the same sample
        a, _ = full[Key(r, True, seed=7, epoch=3, flip=True)]
        b, _ = sub[Key(k, True, seed=7, epoch=3, flip=True)]
        assert a.shape == (3, 16, 16) and torch.equal(a, b)
    crops = [full[Key(5, True, seed=7, epoch=e, flip=True)][0] for e in range(1, 7)]
    assert any(not torch.equal(crops[0], c) for c in crops[1:])  # a new crop each epoch
    assert not torch.equal(full[Key(5, True, seed=7, epoch=1)][0], full[Key(5, True, seed=8, epoch=1)][0])
    ev = full[Key(5)][0]  # evaluation: resize to 20, centre crop 16: deterministic
    assert ev.shape == (3, 16, 16) and torch.equal(ev, full[Key(5)][0])


class _Store:
    def __init__(self):
        self.state = None

    def load(self):
        return self.state

    def save(self, state):
        self.state = {k: (v.copy() if isinstance(v, dict) else v) for k, v in state.items()}


def test_streamed_resume_and_workers_give_the_uninterrupted_result(synthetic_jpg, tmp_path):
    """Random-resized crops and flips on, a kill after epoch 1 and a resume (with another number of
    workers) ends where one uninterrupted run ends."""
    p = _params(synthetic_jpg, "stream", image_size=16, resize=20, workers=0)
    meta, splits = _prepare(tmp_path, p)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, flip=True, aug_seed=1, order_seed=2, record_dynamics=True)
    _, whole = _fit(meta, splits, p, cfg)

    store = _Store()

    def die(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(meta, splits, p, cfg, checkpoint=store, on_epoch=die)
    assert store.state["epoch"] == 1
    p2 = dataclasses.replace(p, data=dataclasses.replace(p.data, workers=2))
    _, resumed = _fit(meta, splits, p2, cfg, checkpoint=store)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    assert np.array_equal(resumed.dynamics, whole.dynamics, equal_nan=True)
    for k in whole.best_state:
        assert torch.equal(whole.best_state[k], resumed.best_state[k])


def test_cached_teacher_logits_refused_with_random_crops(synthetic_jpg, tmp_path):
    p = _params(synthetic_jpg, "stream", image_size=16, resize=20)
    meta, splits = _prepare(tmp_path, p)
    data = device_data(meta, splits["train"], "cpu", p)
    with seeded(0):
        model = build_model("small_cnn", 3, 4, 16)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05)
    with pytest.raises(ValueError, match="random crops"):
        train(model, data, cfg, teacher_logits=torch.zeros(len(data), 4),
              kd=KDSetting("kd", 0.5, 1.0, "small_cnn", "constant", "kd0.5"))
    with pytest.raises(ValueError, match="pad"):
        train(model, data, TrainConfig(epochs=1, batch_size=16, lr=0.05, pad=2))


def test_prepared_index_and_files_are_checked(synthetic_jpg, tmp_path):
    p = _params(synthetic_jpg, "stream", image_size=16, resize=20)
    meta, splits = _prepare(tmp_path, p)
    assert meta["loader"] == "stream" and meta["shape"] == [3, 16, 16] and meta["stream"]["resize"] == 20
    assert sum(meta["sizes"].values()) == 80 and len(set(splits["train"].ids) & set(splits["val"].ids)) == 0
    # a file changed since prepare: reading it is an error naming it
    f = synthetic_jpg / splits["test"].files[0].decode()
    original = f.read_bytes()
    try:
        f.write_bytes(original + b"\0")
        data = device_data(meta, splits["test"], "cpu", p)
        with pytest.raises(DatasetFormatError, match=f.name):
            data.dataset[Key(0)]
    finally:
        f.write_bytes(original)
    # the index itself edited: load_prepared refuses it
    d = prepared_dir(tmp_path, "imagefolder")
    stages._load_prepared_cached.cache_clear()  # a fresh process would read it anew
    np.save(d / "train_y.npy", np.zeros_like(splits["train"].y))
    with pytest.raises(IntegrityError, match="train_y.npy"):
        load_prepared(tmp_path, "imagefolder")


def test_auto_streams_above_the_memory_budget(digits_png, tmp_path):
    small = _params(digits_png, "auto", image_size=8, resize=8, memory_budget_gb=1.0)
    assert _prepare(tmp_path / "a", small)[0].get("loader", "memory") == "memory"
    tiny = _params(digits_png, "auto", image_size=8, resize=8, memory_budget_gb=1e-6)
    assert _prepare(tmp_path / "b", tiny)[0]["loader"] == "stream"


def test_loader_params_are_validated():
    def errors(p):
        with pytest.raises(ParamsError) as e:
            validate(p)
        return str(e.value)

    assert "streamable datasets: imagefolder, imagenet" in errors({"data": {"loader": "stream"}})
    assert "has no in-memory form" in errors({"data": {"dataset": "imagenet", "loader": "memory"},
                                              "teacher": {"pad": 0}, "student": {"pad": 0}})
    assert "teacher.pad: 1 with a streamed dataset" in errors({"data": {"dataset": "imagenet"}, "student": {"pad": 0}})
    msg = errors({"data": {"loader": "disk", "crop_scale": [0.9, 0.1]}})
    assert "data.loader: 'disk' must be one of memory, stream, auto" in msg and "data.crop_scale" in msg
    assert "data.resize: 100 is smaller than data.image_size 200" in errors({"data": {"resize": 100, "image_size": 200}})


def _jpeg(path: Path, seed: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (20 + seed % 7, 24, 3), dtype=np.uint8)).save(path, "JPEG")


WNIDS = ["n01440764", "n01443537", "n01484850"]


def _imagenet_train(root: Path) -> None:
    for c, w in enumerate(WNIDS):
        for i in range(3):
            _jpeg(root / "train" / w / f"{w}_{i}.JPEG", 10 * c + i)


def _flat_val(root: Path, labels: list[int]) -> list[str]:
    names = [f"ILSVRC2012_val_{i + 1:08d}" for i in range(len(labels))]
    for i, n in enumerate(names):
        _jpeg(root / "val" / f"{n}.JPEG", 100 + i)
    return names


def test_imagenet_class_folder_val(tmp_path):
    _imagenet_train(tmp_path)
    for c, w in enumerate(WNIDS):
        _jpeg(tmp_path / "val" / w / f"ILSVRC2012_val_{c:08d}.JPEG", c)
    ls = FILE_DATASETS.get("imagenet")(root=str(tmp_path))
    assert ls.classes == WNIDS and ls.mode == "RGB" and len(ls.train_files) == 9
    assert ls.train_files[0] == "train/n01440764/n01440764_0.JPEG"
    assert ls.test_y.tolist() == [0, 1, 2] and ls.test_files[2].startswith("val/n01484850/")


def test_imagenet_flat_val_with_kaggle_solution_csv(tmp_path):
    root = tmp_path / "kaggle"
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    _imagenet_train(data)
    names = _flat_val(data, [2, 0, 1, 2])
    with open(root / "LOC_val_solution.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "PredictionString"])
        for n, c in zip(names, [2, 0, 1, 2]):
            w.writerow([n, f"{WNIDS[c]} 1 2 3 4 {WNIDS[c]} 5 6 7 8"])
    ls = FILE_DATASETS.get("imagenet")(root=str(root))
    assert ls.test_y.tolist() == [2, 0, 1, 2]
    assert ls.train_files[0].startswith("ILSVRC/Data/CLS-LOC/train/") and (root / ls.test_files[0]).is_file()


def test_imagenet_flat_val_with_ground_truth_and_devkit(tmp_path):
    from scipy.io import savemat

    _imagenet_train(tmp_path)
    _flat_val(tmp_path, [1, 1, 0])
    devkit = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    # the devkit numbers classes its own way (ILSVRC2012_ID); labels map through WNIDs to sorted order
    ilsvrc_id = {WNIDS[0]: 3, WNIDS[1]: 1, WNIDS[2]: 2}
    synsets = np.zeros((4,), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    for k, w in enumerate(WNIDS):
        synsets[k] = (ilsvrc_id[w], w, 0)
    synsets[3] = (1001, "n00001740", 5)  # an inner node of the hierarchy: not a class
    savemat(devkit / "meta.mat", {"synsets": synsets})
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n1\n3\n")
    ls = FILE_DATASETS.get("imagenet")(root=str(tmp_path))
    assert ls.test_y.tolist() == [1, 1, 0]


def test_imagenet_errors_name_the_layout(tmp_path):
    with pytest.raises(DatasetUnavailable, match="no train/ folder"):
        FILE_DATASETS.get("imagenet")(root=str(tmp_path))
    _imagenet_train(tmp_path)
    _flat_val(tmp_path, [0, 1])
    with pytest.raises(DatasetUnavailable, match="LOC_val_solution.csv.*ILSVRC2012_validation_ground_truth.txt"):
        FILE_DATASETS.get("imagenet")(root=str(tmp_path))
    with pytest.raises(DatasetFormatError, match="data.loader: stream"):
        DATASETS.get("imagenet")(root=str(tmp_path))


def test_synthetic_folder_is_deterministic_and_class_dependent(tmp_path):
    a = write_synthetic(tmp_path / "a", classes=20, images=40, test_images=20, size=16, fmt="png", seed=1, workers=1,
                        chunk=7)
    write_synthetic(tmp_path / "b", classes=20, images=40, test_images=20, size=16, fmt="png", seed=1, workers=2,
                    chunk=5)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 60 and a["test"] == 20
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    ls = FILE_DATASETS.get("imagefolder")(root=str(tmp_path / "a"))
    assert len(ls.classes) == 20 and np.bincount(ls.train_y).tolist() == [2] * 20
    from PIL import Image

    mean = {c: np.asarray(Image.open(tmp_path / "a" / "train" / f"c{c:04d}" / f"{c:08d}.png")).mean((0, 1))
            for c in (0, 5)}
    assert np.abs(mean[0] - mean[5]).max() > 20  # class hues differ
