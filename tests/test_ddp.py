"""The data-parallel teacher (teacher.workers > 1): the shards and the merge of the workers' dynamics
(kdprune/train/distributed.py), and a tiny 2-worker DDP teacher on CPU (gloo) under Ray Train
(execution/ddp.py) that records every id exactly once per epoch and, killed after an epoch, resumes
to the uninterrupted run's result; the same over a small image folder streamed from files, each
worker decoding only its shard of every batch."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from kdprune.config import ParamsError, validate
from kdprune.train.distributed import DynamicsMergeError, check_shards, merge_epoch, shard_sizes

EPOCHS = 3


def test_every_batch_is_split_between_the_workers_exactly_once():
    from kdprune.train import DeviceData, TrainConfig
    from kdprune.train.batches import BatchSource

    n, bs, world = 103, 10, 3
    data = DeviceData.from_numpy(np.zeros((n, 1, 4, 4), np.uint8), np.zeros(n, np.int64), [0.0], [1.0],
                                 torch.device("cpu"))
    ep = BatchSource(data, TrainConfig(epochs=2, batch_size=bs, lr=0.1, order_seed=5)).epoch(2)
    whole = list(ep.batches())
    shards = [list(ep.batches(shard=(r, world))) for r in range(world)]
    for b, batch in enumerate(whole):
        parts = [s[b].local for s in shards]
        assert [len(p) for p in parts] == shard_sizes(len(batch.local), world)
        assert sorted(torch.cat(parts).tolist()) == sorted(batch.local.tolist())  # the same rows, once each
        assert all(s[b].index == batch.index and s[b].start == batch.start for s in shards)


def test_a_batch_that_leaves_a_worker_without_rows_is_refused():
    check_shards(100, 10, 2)
    check_shards(101, 10, 1)
    with pytest.raises(ValueError, match="teacher.workers: 2 .* batch of 1 rows"):
        check_shards(101, 10, 2)
    with pytest.raises(ValueError, match="teacher.workers: 4"):
        check_shards(100, 2, 4)


def _parts(n: int, world: int, rng, stats: bool):
    order = rng.permutation(n)
    parts = []
    for r in range(world):
        pos = order[r::world]
        rows = np.stack([pos * 10.0, pos * 10.0 + 1], axis=1).astype(np.float16)
        parts.append((pos, {"logit": rows, "correct": (pos % 2).astype(np.bool_)} if stats else rows))
    return parts


@pytest.mark.parametrize("stats", [False, True])
def test_merge_puts_each_workers_rows_at_their_positions(stats):
    n = 37
    merged = merge_epoch(_parts(n, 3, np.random.default_rng(0), stats), n, epoch=1)
    rows = merged["logit"] if stats else merged
    assert rows.shape == (n, 2) and rows.dtype == np.float16
    np.testing.assert_array_equal(rows[:, 0], np.arange(n) * 10.0)
    np.testing.assert_array_equal(rows[:, 1], np.arange(n) * 10.0 + 1)
    if stats:
        np.testing.assert_array_equal(merged["correct"], np.arange(n) % 2 == 1)


def test_merge_refuses_a_missing_a_repeated_or_an_unknown_position():
    n = 20
    parts = _parts(n, 2, np.random.default_rng(1), False)
    (p0, r0), (p1, r1) = parts
    with pytest.raises(DynamicsMergeError, match=r"epoch 4: .* 1 of 20 positions were recorded by no worker"):
        merge_epoch([(p0[1:], r0[1:]), (p1, r1)], n, epoch=4)
    with pytest.raises(DynamicsMergeError, match=r"1 more than once"):
        merge_epoch([(p0, r0), (np.r_[p1, p0[:1]], np.r_[r1, r0[:1]])], n, epoch=2)
    with pytest.raises(DynamicsMergeError, match="outside"):
        merge_epoch([(p0, r0), (np.r_[p1[1:], 20], r1)], n, epoch=1)
    with pytest.raises(DynamicsMergeError, match="sent 10 positions but"):
        merge_epoch([(p0, r0), (p1, r1[:3])], n, epoch=1)


def test_params_refuse_more_cpu_workers_than_threads_and_a_single_gpu():
    assert validate({"teacher": {"workers": 2}, "device": "cpu"}, stage="teacher").teacher.workers == 2
    assert validate({}, stage="teacher").teacher.workers == 1
    with pytest.raises(ParamsError, match=r"teacher.workers: 3 CPU workers share reproducibility.threads \(2\)"):
        validate({"teacher": {"workers": 3}, "device": "cpu"}, stage="teacher")
    with pytest.raises(ParamsError, match="device: 'cuda:1' names one GPU"):
        validate({"teacher": {"workers": 2}, "device": "cuda:1"}, stage="teacher")
    with pytest.raises(ParamsError, match="teacher.workers: 0 must be >= 1"):
        validate({"teacher": {"workers": 0}}, stage="teacher")


# --- a tiny DDP teacher on Ray Train -------------------------------------------------------------------


def _digits():
    """Digits as the prepare stage splits it (meta, splits), in memory."""
    from kdprune.data import DATASETS, PreparedSplit, stratified_split

    raw = DATASETS.get("digits")(root=None)
    keep, held = stratified_split(raw.train_y, 0.1, 0)
    ids = np.arange(len(raw.train_y), dtype=np.int64)
    split = {"train": PreparedSplit(raw.train_x[keep], raw.train_y[keep], ids[keep]),
             "val": PreparedSplit(raw.train_x[held], raw.train_y[held], ids[held])}
    x01 = split["train"].x.astype(np.float64) / 255.0
    meta = {"dataset": "digits", "sha256": "test", "shape": list(raw.train_x.shape[1:]),
            "num_classes": len(raw.classes), "mean": x01.mean(axis=(0, 2, 3)).tolist(),
            "std": np.maximum(x01.std(axis=(0, 2, 3)), 1e-6).tolist()}
    return meta, split


def _params() -> dict:
    p = validate({"device": "cpu", "runner": {"kind": "ray"},
                  "teacher": {"epochs": EPOCHS, "batch_size": 32, "workers": 2}}, stage="teacher")
    return p


@pytest.fixture(scope="module")
def ray_instance():
    from execution.ddp import ray_connection

    with ray_connection(_params()) as ray:  # one instance for the module's runs (each fit would start its own)
        yield ray


def _fit(root: Path, params: dict, data, record=True):
    from execution import ddp
    from kdprune.train import train_config

    tp = params.teacher
    cfg = train_config(tp, order_seed=tp.seed, aug_seed=tp.seed, record_dynamics=record)
    seen: list[int] = []
    root.mkdir(parents=True, exist_ok=True)  # the checkpoint goes to the project (else to the temp directory)
    out = ddp.fit(root, params, tp.arch, cfg, *data, lambda e, m: seen.append(e), logging.getLogger("test"))
    return out, seen


def _snapshot(out: dict) -> dict:
    dyn = out["dynamics"]
    dyn = {k: np.asarray(v).tobytes() for k, v in dyn.items()} if isinstance(dyn, dict) else np.asarray(dyn).tobytes()
    return {"weights": {k: v.numpy().tobytes() for k, v in out["best_state"].items()},
            "dynamics": dyn, "val": out["val"], "best_epoch": out["best_epoch"],
            "history": [{k: v for k, v in m.items() if k != "seconds"} for m in out["history"]]}


@pytest.fixture(scope="module")
def reference(ray_instance, tmp_path_factory):
    """An uninterrupted 2-worker run on the module's Ray instance: (result, epochs reported)."""
    return _fit(tmp_path_factory.mktemp("ddp") / "a", _params(), _digits())


@pytest.mark.integration
def test_ddp_teacher_records_every_id_once_per_epoch_and_resumes_after_a_kill(tmp_path, monkeypatch, reference):
    data = _digits()
    meta, splits = data
    n, y = len(splits["train"]), splits["train"].y
    params = _params()

    ref, seen = reference
    assert seen == list(range(1, EPOCHS + 1)) and ref["resumed_from"] is None
    dyn = ref["dynamics"]
    assert dyn.shape == (EPOCHS, n, meta["num_classes"]) and dyn.dtype == np.float16
    # each epoch: the two workers recorded n rows between them and every position has one: each id once
    assert len(ref["shares"]) == EPOCHS and all(sum(s) == n and len(s) == 2 and min(s) > 0 for s in ref["shares"])
    assert np.isfinite(dyn.astype(np.float32)).all()
    # and at its id's position: the accuracy the rows give is the one the workers measured on their batches
    for epoch, m in enumerate(ref["history"]):
        acc = float((dyn[epoch].astype(np.float32).argmax(1) == y).mean())
        assert abs(acc - m["train_acc"]) <= 2 / n, (epoch, acc, m["train_acc"])
    assert ref["steps"] == EPOCHS * -(-n // 32)  # the global batch: one process's number of steps
    assert ref["history"][-1]["train_acc"] > 0.5 and ref["val"]["acc"] > 0.5

    # rank 0 killed (SIGKILL) after epoch 1's checkpoint: Ray Train starts a new worker group, which resumes
    monkeypatch.setenv("KDPRUNE_FAULT", "teacher:1:kill")
    root = tmp_path / "b"
    resumed, seen = _fit(root, params, data)
    assert (root / ".kdprune" / "faults" / "teacher-1-kill").exists()  # the kill happened
    assert resumed["resumed_from"] == 1 and seen == [1, 2, 3]
    assert [sum(s) for s in resumed["shares"]] == [n] * (EPOCHS - 1)  # the epochs the new group trained
    assert _snapshot(resumed) == _snapshot(ref)


@pytest.mark.integration
def test_the_same_params_train_the_same_teacher_on_a_ray_cluster(tmp_path, reference, ray_instance):
    """runner.address naming a cluster of two nodes (one CPU each): a worker on each node, the code
    shipped by the driver, the same bytes as on the run's own Ray instance."""
    from ray.cluster_utils import Cluster

    ray_instance.shutdown()  # the module's own instance: this test joins a cluster instead
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        params = validate({**_params().as_dict(), "runner": {"kind": "ray", "address": cluster.address}}, stage="teacher")
        out, seen = _fit(tmp_path / "c", params, _digits())
    finally:
        ray_instance.shutdown()
        cluster.shutdown()
    assert seen == list(range(1, EPOCHS + 1))
    assert _snapshot(out) == _snapshot(reference[0])


@pytest.mark.parametrize("record", ["logits", "stats"])
def test_one_worker_group_records_what_one_process_records(tmp_path, record):
    """train_distributed in a group of one (gloo, this process) records the recorder's payload, logits
    or per-example statistics, at every position, as the single-process trainer does."""
    import torch.distributed as dist

    from artifacts.models import device_data
    from kdprune.models import build_model
    from kdprune.train import TrainConfig, seeded, train
    from kdprune.train.distributed import train_distributed

    meta, splits = _digits()
    data = device_data(meta, splits["train"], torch.device("cpu"))
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, pad=1, record_dynamics=record)
    models = []
    for _ in range(2):
        with seeded(0):
            models.append(build_model("small_cnn", 1, 10, 8))
    single = train(models[0], data, cfg)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        res, shares = train_distributed(models[1], data, cfg, 0, 1)
    finally:
        dist.destroy_process_group()
    assert shares == [[len(data)]] * 2
    one, ddp = single.dynamics, res.dynamics
    if record == "logits":
        assert ddp.shape == one.shape and np.isfinite(ddp.astype(np.float32)).all()
        np.testing.assert_allclose(ddp.astype(np.float32), one.astype(np.float32), atol=0.05)
    else:
        assert set(ddp) == set(one) and all(ddp[k].shape == (2, len(data)) for k in ddp)
        for k in ddp:
            np.testing.assert_allclose(ddp[k].astype(np.float64), one[k].astype(np.float64), atol=0.05, equal_nan=True)


# --- a data-parallel teacher over a streamed image folder ----------------------------------------------

LOG = logging.getLogger("test_ddp")


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory) -> Path:
    from kdprune.data.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("synthetic_png")
    write_synthetic(out, classes=4, images=160, test_images=16, size=8, fmt="png", seed=3, workers=1)
    return out


def _folder_params(folder: Path, loader: str, **data) -> dict:
    return validate({"device": "cpu", "runner": {"kind": "ray"},
                     "data": {"dataset": "imagefolder", "root": str(folder), "loader": loader, "image_size": 8,
                              "resize": 8, "workers": 1, **data},
                     "teacher": {"epochs": EPOCHS, "batch_size": 32, "workers": 2, "pad": 0, "flip": False},
                     "student": {"pad": 0}},
                    stage="teacher")


def _prepared(root: Path, params: dict):
    from artifacts.stages import load_prepared
    from tasks.prepare import write_prepared

    write_prepared(root, params, LOG)
    return load_prepared(root, params.data.dataset)


def test_a_streamed_shard_decodes_only_its_rows_with_the_crops_of_one_process(png_folder, tmp_path):
    """Epoch.batches(shard=...) over a streamed split: each rank's pass reads only its rows of every
    batch, and each image is the one the unsharded pass gives it (random-resized crop and flip from
    (seed, epoch, sample id))."""
    from artifacts.models import device_data
    from kdprune.train import TrainConfig
    from kdprune.train.batches import BatchSource

    params = _folder_params(png_folder, "stream", random_crop=True, workers=0, resize=10)
    meta, splits = _prepared(tmp_path, params)
    data = device_data(meta, splits["train"], torch.device("cpu"), params)
    reads: list[int] = []
    read = data.dataset.read
    data.dataset.read = lambda row: (reads.append(row), read(row))[1]  # workers 0: decoded in this process
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.1, flip=True, order_seed=4, aug_seed=5)
    ep = BatchSource(data, cfg).epoch(2)
    whole = list(ep.batches())
    assert sorted(reads) == list(range(len(data)))  # one process reads every row once
    world = 3
    for r in range(world):
        reads.clear()
        mine = list(ep.batches(shard=(r, world)))
        assert sorted(reads) == sorted(torch.cat([b.rows for b in mine]).tolist())  # its rows only
        for b, batch in zip(mine, whole):
            assert torch.equal(b.rows, batch.rows[r::world]) and torch.equal(b.x, batch.x[r::world])
    with pytest.raises(ValueError, match="shard must be"):
        data.train_batches(torch.arange(4), 1, 0, False, 2, shard=(2, 2))


@pytest.mark.integration
def test_streamed_ddp_teacher_records_every_id_once_resumes_and_equals_in_memory(png_folder, tmp_path, monkeypatch,
                                                                              ray_instance):
    """Two workers over a streamed PNG folder (each decoding its shard with one DataLoader worker):
    every id's statistics once per epoch; killed after epoch 1 and resumed: the uninterrupted result;
    and, without random augmentation, the bytes the same 2-worker teacher gives on the same images
    decoded into memory (same pixels, mean/std, permutation and shards)."""
    out = {}
    for loader in ("stream", "memory"):
        params = _folder_params(png_folder, loader, random_crop=False)
        data = _prepared(tmp_path / f"{loader}-data", params)
        assert data[0].get("loader", "memory") == loader
        out[loader] = (params, data, _fit(tmp_path / loader, params, data, record="stats")[0])
    params, (meta, splits), ref = out["stream"]
    n = len(splits["train"])
    dyn = ref["dynamics"]
    assert sorted(dyn) == STATS_NAMES and all(v.shape == (EPOCHS, n) for v in dyn.values())
    # rank 0 wrote the merged epochs into files beside its checkpoint (this node: the result names them)
    work = tmp_path / "stream" / ".kdprune" / "checkpoints" / "teacher"
    assert all(isinstance(v, np.memmap) and Path(v.filename).parent.parent == work for v in dyn.values())
    assert len(ref["shares"]) == EPOCHS and all(sum(s) == n and len(s) == 2 and min(s) > 0 for s in ref["shares"])
    assert not np.isnan(dyn["target_logprob"]).any() and set(np.unique(dyn["correct"])) <= {0, 1}
    for epoch, m in enumerate(ref["history"]):  # each id's row is its own: the accuracy the workers measured
        assert abs(float(dyn["correct"][epoch].mean()) - m["train_acc"]) <= 1e-9
    assert _snapshot(ref) == _snapshot(out["memory"][2])

    monkeypatch.setenv("KDPRUNE_FAULT", "teacher:1:kill")
    root = tmp_path / "resumed"
    resumed, seen = _fit(root, params, (meta, splits), record="stats")
    assert (root / ".kdprune" / "faults" / "teacher-1-kill").exists()
    assert resumed["resumed_from"] == 1 and seen == [1, 2, 3]
    assert [sum(s) for s in resumed["shares"]] == [n] * (EPOCHS - 1)
    assert _snapshot(resumed) == _snapshot(ref)


STATS_NAMES = sorted(__import__("kdprune.train.metrics", fromlist=["STATS"]).STATS.names())
