"""Dynamics as per-example statistics (issue 27 item 2): every dynamics-based score computed from the
statistics the teacher records equals the same score from its full logits on the same run (digits, and
a 100-class synthetic case), within float32 rounding, with identical selections at 0.1/0.3/0.5; the
statistics file is epochs x N x (bytes of the statistics), whatever the classes; a score that needs the
full logits is refused with statistics, naming it."""
import numpy as np
import pytest
import torch

import kdprune  # noqa: F401
from artifacts.stages import dynamics_kind, read_dynamics, read_dynamics_stats, write_dynamics
from kdprune.config import ParamsError, validate
from kdprune.data import DATASETS, PreparedSplit, stratified_split
from kdprune.models import build_model
from kdprune.scores import SCORES, ScoreContext, register_score
from kdprune.selection import parse_method, select, selector_options
from kdprune.train import DeviceData, TrainConfig, seeded, train
from kdprune.train.metrics import (AUTO_LOGITS_MAX_BYTES, STATS, Dynamics, dynamics_format, example_stats,
                                   stats_bytes)
from tests.test_training import Crash, MemoryCheckpoint  # the trainer tests' in-memory checkpoint store

EPOCHS = 6
FRACTIONS = (0.1, 0.3, 0.5)
EPS32 = float(np.finfo(np.float32).eps)
# every registered score that reads the teacher's dynamics, with the options it is checked at
CASES = [("aum", {"variant": "logit"}), ("aum", {"variant": "prob"}), ("aum_prob", {}), ("el2n", {"epoch": 3}),
         ("el2n", {"epoch": EPOCHS}), ("forgetting", {"never_learned": "epochs"}),
         ("forgetting", {"never_learned": "zero"}), ("dynamic_uncertainty", {"window": 3}),
         ("dynamic_uncertainty", {"window": 10, "ddof": 1}), ("entropy", {}), ("least_confidence", {}), ("margin", {})]


def _digits():
    raw = DATASETS.get("digits")()
    keep, _ = stratified_split(raw.train_y, 0.1, 0)
    x, y = raw.train_x[keep][:600], raw.train_y[keep][:600]
    return x, y, 10


def _synthetic(n=1000, classes=100, seed=0):
    """100 classes of 8x8 grey images: a class prototype plus noise (learnable, not separable in 6 epochs)."""
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 256, size=(classes, 1, 8, 8))
    y = np.arange(n) % classes
    x = np.clip(protos[y] + rng.normal(0, 60, size=(n, 1, 8, 8)), 0, 255).astype(np.uint8)
    return x, y.astype(np.int64), classes


def _run(x, y, classes, record):
    x01 = x / 255.0
    data = DeviceData.from_numpy(x, y, x01.mean(axis=(0, 2, 3)), x01.std(axis=(0, 2, 3)), torch.device("cpu"))
    with seeded(0):
        model = build_model("small_cnn", 1, classes, 8)
    cfg = TrainConfig(epochs=EPOCHS, batch_size=64, lr=0.05, pad=1, record_dynamics=record)
    return train(model, data, cfg).dynamics


@pytest.fixture(scope="module", params=["digits", "synthetic100"])
def run(request):
    """One teacher run recording the logits and the same run recording the statistics."""
    x, y, classes = _digits() if request.param == "digits" else _synthetic()
    logits = _run(x, y, classes, "logits")
    stats = _run(x, y, classes, "stats")
    return {"name": request.param, "labels": y, "classes": classes, "logits": logits, "stats": stats}


def _contexts(run):
    labels, n = run["labels"], len(run["labels"])
    common = {"ids": np.arange(n, dtype=np.int64), "labels": labels, "num_classes": run["classes"]}
    # the logits as the scores stage reads them (float16 on disk -> float32), the statistics as recorded
    return (ScoreContext(**common, dynamics=run["logits"].astype(np.float32)),
            ScoreContext(**common, stats=run["stats"]))


def _selection(score, labels, values, fraction):
    m = parse_method(score)
    takes = selector_options(m.selector)
    call = {**({"balance": m.balanced} if "balance" in takes else {}),
            **({"size": m.size(len(labels), fraction)} if "size" in takes else {})}
    return select(m.selector, np.arange(len(labels)), labels, values, fraction, seed=0, **call)


def test_recorded_statistics_are_those_of_the_recorded_logits(run):
    """Recording does not change training: the statistics run's arrays are the statistics of the
    logits run's logits (same function, per batch on the device vs per epoch here)."""
    labels = torch.from_numpy(run["labels"])
    for e in range(EPOCHS):
        want = example_stats(torch.from_numpy(run["logits"][e]), labels)
        for name in STATS.names():
            np.testing.assert_array_equal(run["stats"][name][e], want[name].numpy(), err_msg=f"{name} epoch {e + 1}")


@pytest.mark.parametrize("score, options", CASES, ids=[f"{s}-{'-'.join(map(str, o.values()))}" for s, o in CASES])
def test_score_from_statistics_equals_score_from_logits(run, score, options):
    from_logits_ctx, from_stats_ctx = _contexts(run)
    spec = SCORES.get(score)
    opts = spec.fn_options(spec.resolve(options))
    a, b = spec(from_logits_ctx, **opts), spec(from_stats_ctx, **opts)
    diff = float(np.abs(a - b).max())
    # float32 rounding of the stored statistics: a few eps32 of the values' scale, times the epochs
    # a score sums or averages over
    bound = 8 * EPS32 * EPOCHS * max(1.0, float(np.abs(a).max()))
    print(f"{run['name']} {score} {options}: max |logits - stats| = {diff:.3g} (bound {bound:.3g})")
    assert diff <= bound, f"{score} {options}: max abs difference {diff} > {bound}"
    for f in FRACTIONS:
        np.testing.assert_array_equal(_selection(score, run["labels"], a, f), _selection(score, run["labels"], b, f),
                                      err_msg=f"{score} {options} selection at {f}")


def test_statistics_file_size_does_not_depend_on_the_classes(tmp_path):
    """epochs x N x (bytes of the statistics) on disk at 10 and at 100 classes; the logits grow with them."""
    n, epochs = 500, 3
    sizes = {}
    for classes in (10, 100):
        x, y, _ = _synthetic(n, classes, seed=1)
        stats = _run(x, y, classes, "stats")
        d = tmp_path / str(classes)
        write_dynamics(d / "dynamics", np.arange(n), {k: v[:epochs] for k, v in stats.items()})
        files = sorted((d / "dynamics" / "stats").glob("*.npy"))
        assert [f.stem for f in files] == STATS.names()
        data = sum(np.load(f, mmap_mode="r").nbytes for f in files)
        assert data == epochs * n * stats_bytes()
        sizes[classes] = sum(f.stat().st_size for f in files)
        assert dynamics_kind(d) == "stats"
    assert sizes[10] == sizes[100]
    assert stats_bytes() == 21  # int8 correct + five float32 statistics


def test_scores_stage_reads_only_the_declared_statistics_memory_mapped(tmp_path):
    n = 40
    ids = np.arange(100, 100 + n, dtype=np.int64)
    train_split = PreparedSplit(np.zeros((n, 1, 2, 2), np.uint8), np.zeros(n, np.int64), ids)
    arrays = {s.name: np.zeros((3, n), s.dtype) for s in map(STATS.get, STATS.names())}
    write_dynamics(tmp_path / "dynamics", ids, arrays)
    got = read_dynamics_stats(tmp_path, train_split, ["correct", "l2_error"])
    assert sorted(got) == ["correct", "l2_error"]
    assert all(isinstance(v, np.memmap) for v in got.values())
    with pytest.raises(Exception, match="statistics, not the full logits"):
        read_dynamics(tmp_path, train_split)
    other = PreparedSplit(train_split.x, train_split.y, ids + 1)
    with pytest.raises(Exception, match="does not match the prepared train split"):
        read_dynamics_stats(tmp_path, other, ["correct"])


def test_auto_records_logits_below_the_threshold_and_statistics_above():
    assert dynamics_format("auto", 30, 1437, 10) == "logits"  # the digits default
    assert dynamics_format("auto", 200, 50_000, 100) == "stats"  # CIFAR-100 (50,000) at 200 epochs: 2 GB of logits
    assert 200 * 45_000 * 10 * 2 < AUTO_LOGITS_MAX_BYTES  # CIFAR-10 at 200 epochs keeps its logits
    assert dynamics_format("stats", 1, 10, 10) == "stats" and dynamics_format("logits", 999, 10**6, 1000) == "logits"
    with pytest.raises(ValueError, match="teacher.dynamics: got 'full', allowed: auto, logits, stats"):
        dynamics_format("full", 1, 1, 1)


def test_params_validate_the_option_and_refuse_a_logits_score_with_stats():
    with pytest.raises(ParamsError, match="teacher.dynamics"):
        validate({"teacher": {"dynamics": "full"}})
    assert validate({}).teacher.dynamics == "auto"
    ok = validate({"teacher": {"dynamics": "stats"}, "scores": {"methods": ["aum", "el2n", "forgetting"]},
                   "select": {"methods": ["aum", "el2n"]}})
    assert ok.teacher.dynamics == "stats"

    @register_score("logits_only_test", keep="high", hard="high", variant="max logit (test)", needs=("dynamics",))
    def logits_only(ctx):
        """Largest logit of the last epoch (a score that needs the full logits)."""
        return ctx.dynamics[-1].max(axis=1)

    try:
        with pytest.raises(ParamsError, match="teacher.dynamics: 'stats' .* 'logits_only_test' need the full logits"):
            validate({"teacher": {"dynamics": "stats"}, "scores": {"methods": ["logits_only_test"]},
                      "select": {"methods": ["random"]}})
        validate({"teacher": {"dynamics": "auto"}, "scores": {"methods": ["logits_only_test", "random"]},
                  "select": {"methods": ["random"]}})
        ctx = ScoreContext(ids=np.arange(3), labels=np.zeros(3, np.int64), num_classes=2,
                           stats={"correct": np.ones((2, 3), np.int8)})
        with pytest.raises(ValueError, match="'logits_only_test' needs the teacher's full logits"):
            SCORES.get("logits_only_test")(ctx)
        with pytest.raises(ValueError, match=r"'aum' reads the dynamics statistics \['target_logprob', 'other_logprob'\]"):
            SCORES.get("aum")(ctx)
        assert SCORES.get("forgetting")(ctx).tolist() == [0.0, 0.0, 0.0]
    finally:
        SCORES._items.pop("logits_only_test")


def test_every_dynamics_score_declares_statistics_that_exist():
    for name in SCORES.names():
        spec = SCORES.get(name)
        if "dynamics" in spec.needs:
            assert spec.stats, f"{name} reads the dynamics but declares no statistics"
            assert set(spec.stats) <= set(STATS.names())
            assert name in {c[0] for c in CASES}, f"{name} is not checked against its logits here"
    with pytest.raises(ValueError, match="unknown dynamics statistics \\['nope'\\]"):
        register_score("bad_stats_test", keep="high", hard="high", variant="x", needs=("dynamics",), stats=("nope",))


def test_workers_record_their_share_and_merge_by_position():
    """A data-parallel run: each worker records its ids' rows of an epoch (Dynamics.epoch_rows); the merge
    by position (distributed.merge_epoch) stored in one recorder equals one recorder of all, and an id
    recorded twice (or never) is refused."""
    from kdprune.train.distributed import DynamicsMergeError, merge_epoch

    rng = np.random.default_rng(0)
    n, c, epochs = 50, 7, 3
    logits = torch.from_numpy(rng.normal(size=(epochs, n, c)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, c, n))
    for kind in ("stats", "logits"):
        whole = Dynamics(kind, epochs, n, c, torch.device("cpu"))
        merged = Dynamics(kind, epochs, n, c, torch.device("cpu"))
        for e in range(1, epochs + 1):
            workers = [Dynamics(kind, 1, n, c, torch.device("cpu")) for _ in range(2)]  # one epoch each
            mine = [[], []]
            perm = torch.from_numpy(rng.permutation(n))
            for pos in perm.split(8):
                whole.record(e, pos, logits[e - 1, pos], labels[pos])
                w = int(pos[0]) % 2  # batches dealt to workers
                workers[w].record(1, pos, logits[e - 1, pos], labels[pos])
                mine[w].append(pos)
            whole.end_epoch(e)
            parts = [(torch.cat(m).numpy(), w.epoch_rows(torch.cat(m).numpy())) for w, m in zip(workers, mine)]
            merged.write_epoch(e, merge_epoch(parts, n, e))
            with pytest.raises(DynamicsMergeError, match="1 more than once"):
                merge_epoch(parts + [(parts[0][0][:1], _take(parts[0][1], 1))], n, e)  # one id again
            with pytest.raises(DynamicsMergeError, match="recorded by no worker"):
                merge_epoch(parts[:1], n, e)
        if kind == "logits":
            np.testing.assert_array_equal(merged.result(), whole.result())
        else:
            for k in STATS.names():
                np.testing.assert_array_equal(merged.result()[k], whole.result()[k])


def _take(rows, k):
    return {n: v[:k] for n, v in rows.items()} if isinstance(rows, dict) else rows[:k]


def test_resumed_run_records_the_same_statistics():
    """A run killed after epoch 3 and resumed from its checkpoint records the statistics an uninterrupted
    run does (the checkpoint keeps the host arrays of the finished epochs)."""
    x, y, classes = _synthetic(300, 20, seed=2)
    x01 = x / 255.0
    data = DeviceData.from_numpy(x, y, x01.mean(axis=(0, 2, 3)), x01.std(axis=(0, 2, 3)), torch.device("cpu"))
    cfg = TrainConfig(epochs=5, batch_size=64, lr=0.05, pad=1, record_dynamics="stats")

    def run(ckpt=None, crash_after=None):
        def on_epoch(e, _m):
            if e == crash_after:
                raise Crash
        with seeded(0):
            model = build_model("small_cnn", 1, classes, 8)
        return train(model, data, cfg, checkpoint=ckpt, on_epoch=on_epoch).dynamics

    whole = run()
    store = MemoryCheckpoint()
    with pytest.raises(Crash):
        run(store, crash_after=3)
    resumed = run(store)
    assert sorted(resumed) == STATS.names()
    for k in STATS.names():
        np.testing.assert_array_equal(resumed[k], whole[k], err_msg=k)
    assert not np.isnan(whole["l2_error"]).any() and set(np.unique(whole["correct"])) <= {0, 1}


@pytest.mark.parametrize("record", ["stats", "logits"])
def test_dynamics_go_to_files_as_training_goes_and_resume_continues_them(tmp_path, record):
    """With ``dynamics_dir`` the recorder writes each epoch into preallocated .npy files (the checkpoint
    keeps only their digests, not the arrays); a run killed after epoch 2 resumes into the same files;
    the result equals the in-memory run's and write_dynamics gives the same bytes; a file changed behind
    the checkpoint's back is refused."""

    x, y, classes = _synthetic(200, 20, seed=4)
    x01 = x / 255.0
    data = DeviceData.from_numpy(x, y, x01.mean(axis=(0, 2, 3)), x01.std(axis=(0, 2, 3)), torch.device("cpu"))
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.05, pad=1, record_dynamics=record)

    def run(ckpt=None, crash_after=None, directory=None):
        def on_epoch(e, _m):
            if e == crash_after:
                raise Crash
        with seeded(0):
            model = build_model("small_cnn", 1, classes, 8)
        return train(model, data, cfg, checkpoint=ckpt, on_epoch=on_epoch, dynamics_dir=directory).dynamics

    memory = run()
    store, work = MemoryCheckpoint(), tmp_path / "work"
    with pytest.raises(Crash):
        run(store, crash_after=2, directory=work)
    saved = store.load()["dynamics"]
    assert set(saved) == {"files"} and [e for e, _ in saved["files"]] == [1, 2]  # digests, not arrays
    before = {f.name: f.read_bytes() for f in work.iterdir()}
    resumed = run(store, directory=work)
    assert {f.name for f in work.iterdir()} == set(before)  # the same files, continued
    named = resumed if isinstance(resumed, dict) else {"logits": resumed}
    assert all(isinstance(v, np.memmap) for v in named.values())
    for d, dyn in (("mem", memory), ("file", resumed)):
        write_dynamics(tmp_path / d, np.arange(len(y)), dyn)
    files = sorted(p.relative_to(tmp_path / "mem") for p in (tmp_path / "mem").rglob("*.npy"))
    assert files == sorted(p.relative_to(tmp_path / "file") for p in (tmp_path / "file").rglob("*.npy"))
    for f in files:
        assert (tmp_path / "mem" / f).read_bytes() == (tmp_path / "file" / f).read_bytes(), f

    # a file that no longer holds the epochs the checkpoint recorded: refused, not trained on
    store2 = MemoryCheckpoint()
    with pytest.raises(Crash):
        run(store2, crash_after=2, directory=tmp_path / "w2")
    victim = sorted((tmp_path / "w2").iterdir())[0]
    raw = bytearray(victim.read_bytes())
    raw[np.load(victim, mmap_mode="r").offset] ^= 0xFF  # the first byte of epoch 1's rows
    victim.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="do not hold the epoch"):
        run(store2, directory=tmp_path / "w2")
