"""Core definitions checked against independent hand computations."""
import math

import numpy as np
import pytest
import torch

import kdprune  # noqa: F401
from kdprune.data import DATASETS, stratified_split
from kdprune.distill import LOSSES, KDSetting
from kdprune.registry import UnknownNameError
from kdprune.scores import SCORES, ScoreContext
from kdprune.selection import budget, select
from kdprune.train import augment_batch, epoch_augmentation


def _kd(weight: float, temperature: float) -> KDSetting:
    return KDSetting("kd", weight, temperature, "small_cnn", "constant", f"kd{weight:g}")


def test_kd_loss_equals_hinton_formula_by_hand():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    t = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, -2.0]])
    y = torch.tensor([0, 2])
    a, T = 0.7, 2.0

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    ce = sum(-math.log(softmax(row)[k]) for row, k in zip(s.tolist(), y.tolist())) / 2
    kl = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        ps, pt = softmax([x / T for x in srow]), softmax([x / T for x in trow])
        kl += sum(q * math.log(q / p) for p, q in zip(ps, pt))
    kl /= 2  # batchmean
    want = (1 - a) * ce + a * T * T * kl
    per_example = LOSSES.get("kd").fn(s, y, t, a, T)
    assert per_example.shape == (2,)
    assert per_example.mean().item() == pytest.approx(want, rel=1e-6)  # batch mean = batchmean KL
    # weight 0 is plain cross-entropy; no KD (a KD setting of None) trains on the registered baseline, which
    # ignores the teacher entirely
    assert LOSSES.get("kd").fn(s, y, t, 0.0, T).mean().item() == pytest.approx(ce, rel=1e-6)
    assert LOSSES.of(None).name == "ce" and not LOSSES.of(None).teacher and LOSSES.of(_kd(a, T)).name == "kd"
    assert LOSSES.of(None).fn(s, y, None, 0.0, 1.0).mean().item() == pytest.approx(ce, rel=1e-6)


def test_kd_loss_is_zero_kl_when_teacher_equals_student():
    s = torch.randn(4, 5)
    y = torch.tensor([0, 1, 2, 3])
    assert LOSSES.get("kd").fn(s, y, s.clone(), 1.0, 3.0).mean().item() == pytest.approx(0.0, abs=1e-6)


def _ctx(dyn, labels):
    labels = np.asarray(labels, dtype=np.int64)
    return ScoreContext(ids=np.arange(len(labels), dtype=np.int64), labels=labels,
                        num_classes=dyn.shape[2], dynamics=np.asarray(dyn, dtype=np.float32))


def test_el2n_equals_hand_computed_values():
    # two epochs, two examples, two classes
    dyn = np.array([[[0.0, 0.0], [2.0, 0.0]], [[math.log(3.0), 0.0], [0.0, 0.0]]])
    ctx = _ctx(dyn, [0, 1])
    # epoch 1: example 0 p=(.5,.5), label 0 -> ||(-.5, .5)|| = sqrt(.5)
    #          example 1 p=(e^2/(e^2+1), 1/(e^2+1)), label 1 -> sqrt(2) * e^2/(e^2+1)
    e2 = math.exp(2.0)
    want1 = [math.sqrt(0.5), math.sqrt(2.0) * e2 / (e2 + 1)]
    np.testing.assert_allclose(SCORES.get("el2n")(ctx, epoch=1), want1, rtol=1e-6)
    # epoch 2: example 0 p=(3/4, 1/4) -> sqrt(2) / 4
    np.testing.assert_allclose(SCORES.get("el2n")(ctx, epoch=2)[0], math.sqrt(2.0) / 4, rtol=1e-6)
    with pytest.raises(ValueError, match="epoch"):
        SCORES.get("el2n")(ctx, epoch=3)


def test_forgetting_counts_correct_to_incorrect_transitions():
    # correctness per epoch for 4 examples (label 0): logit of class 0 high -> correct
    seq = np.array([
        [1, 0, 1, 0, 1],  # forgotten twice
        [0, 1, 1, 1, 1],  # learned once, never forgotten
        [0, 0, 0, 0, 0],  # never learned -> E = 5
        [1, 1, 0, 0, 1],  # forgotten once
    ])
    dyn = np.zeros((5, 4, 2))
    dyn[:, :, 0] = np.where(seq.T == 1, 1.0, -1.0)
    np.testing.assert_array_equal(SCORES.get("forgetting")(_ctx(dyn, [0, 0, 0, 0])), [2, 0, 5, 1])


def test_random_score_is_seeded_and_unknown_names_list_valid_ones():
    ctx = _ctx(np.zeros((1, 6, 2)), [0] * 6)
    a = SCORES.get("random")(ScoreContext(ctx.ids, ctx.labels, 2, seed=3))
    b = SCORES.get("random")(ScoreContext(ctx.ids, ctx.labels, 2, seed=3))
    c = SCORES.get("random")(ScoreContext(ctx.ids, ctx.labels, 2, seed=4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(UnknownNameError, match="valid names: .*el2n.*forgetting.*random"):
        SCORES.get("el2m")


def test_selection_keeps_the_right_ids_with_ties_broken_by_id():
    ids = np.array([10, 11, 12, 13, 14, 15, 16, 17, 18, 19], dtype=np.int64)
    labels = np.zeros(10, dtype=np.int64)
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3, 0.2, 0.8, 0.0, 0.7, 0.4])
    np.testing.assert_array_equal(select("keep_high", ids, labels, scores, 0.3), [11, 13, 16])
    np.testing.assert_array_equal(select("keep_low", ids, labels, scores, 0.2), [10, 17])
    # a tie at the cut: ids 11 and 13 both score 0.9; keeping one takes the smaller id
    np.testing.assert_array_equal(select("keep_high", ids, labels, scores, 0.1), [11])
    # input order does not matter
    p = np.random.default_rng(0).permutation(10)
    np.testing.assert_array_equal(select("keep_high", ids[p], labels[p], scores[p], 0.3), [11, 13, 16])
    assert budget(10, 1.0) == 10 and budget(10, 0.01) == 1 and budget(10, 0.25) == 3
    with pytest.raises(ValueError):
        budget(10, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        select("keep_high", ids, labels, np.full(10, np.nan), 0.5)


def test_stratified_split_is_deterministic_and_per_class():
    y = np.repeat(np.arange(3), 20)
    keep, held = stratified_split(y, 0.25, seed=1)
    keep2, held2 = stratified_split(y, 0.25, seed=1)
    np.testing.assert_array_equal(held, held2)
    assert np.bincount(y[held]).tolist() == [5, 5, 5]
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == 60


def test_digits_loader_is_canonical():
    raw = DATASETS.get("digits")()
    assert raw.train_x.dtype == np.uint8 and raw.train_x.shape[1:] == (1, 8, 8)
    assert len(raw.train_y) + len(raw.test_y) == 1797
    assert raw.train_x.max() == 255 and sorted(set(raw.train_y.tolist())) == list(range(10))


def test_augmentation_shifts_pixels_and_subsets_see_the_full_runs_augmentation():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 1.0
    out = augment_batch(x, torch.tensor([1]), torch.tensor([-1]), None, pad=1)
    assert out[0, 0, 2, 0] == 1.0 and out.sum() == 1.0  # moved down one row, left one column
    out = augment_batch(x, torch.tensor([0]), torch.tensor([0]), torch.tensor([True]), pad=1)
    assert out[0, 0, 1, 2] == 1.0  # flipped horizontally
    full = epoch_augmentation(100, epoch=3, seed=7, pad=2, flip=True, device=torch.device("cpu"))
    again = epoch_augmentation(100, epoch=3, seed=7, pad=2, flip=True, device=torch.device("cpu"))
    other = epoch_augmentation(100, epoch=4, seed=7, pad=2, flip=True, device=torch.device("cpu"))
    assert torch.equal(full.dx, again.dx) and torch.equal(full.flip, again.flip)
    assert not torch.equal(full.dx, other.dx)
    assert int(full.dx.abs().max()) <= 2
