"""Selectors (random, class-balanced, CCS) and per-epoch samplers (RS2, InfoBatch) against hand cases."""
import numpy as np
import pytest

import kdprune  # noqa: F401
from kdprune.selection import SAMPLERS, SELECTORS, budget, class_quotas, make_sampler, select
from kdprune.selection.static.ccs import ccs_allocation, ccs_strata


def test_registries_hold_every_method():
    assert {"keep_high", "keep_low", "random", "class_balanced_high", "class_balanced_low", "ccs"} <= set(SELECTORS.names())
    assert {"rs2", "infobatch"} <= set(SAMPLERS.names())


# -- random ----------------------------------------------------------------------------------

def test_random_selector_is_seeded_sized_and_input_order_free():
    ids = np.arange(100, 200, dtype=np.int64)
    labels = np.zeros(100, dtype=np.int64)
    scores = np.random.default_rng(1).random(100)
    a = select("random", ids, labels, scores, 0.3, seed=5)
    assert a.dtype == np.int64 and len(a) == budget(100, 0.3) == 30
    assert np.all(np.diff(a) > 0) and set(a) <= set(ids)
    np.testing.assert_array_equal(a, select("random", ids, labels, scores, 0.3, seed=5))
    assert not np.array_equal(a, select("random", ids, labels, scores, 0.3, seed=6))
    # scores are ignored (also None) and the input order does not matter
    np.testing.assert_array_equal(a, select("random", ids, labels, -scores, 0.3, seed=5))
    np.testing.assert_array_equal(a, select("random", ids, labels, None, 0.3, seed=5))
    p = np.random.default_rng(2).permutation(100)
    np.testing.assert_array_equal(a, select("random", ids[p], labels[p], scores[p], 0.3, seed=5))
    with pytest.raises(ValueError, match="needs scores"):
        select("keep_high", ids, labels, None, 0.3)


def test_select_rejects_options_a_selector_does_not_take():
    ids = np.arange(10)
    with pytest.raises(ValueError, match="'keep_high' does not take option.*beta"):
        select("keep_high", ids, ids * 0, ids * 1.0, 0.5, beta=0.3)
    with pytest.raises(ValueError, match="takes: beta, k, cut_scores"):
        select("ccs", ids, ids * 0, ids * 1.0, 0.5, strata=10)


# -- class-balanced --------------------------------------------------------------------------

def test_class_quotas_largest_remainder_by_hand():
    # sizes 6, 3, 1 (N = 10)
    # k = 3: shares 1.8, 0.9, 0.3 -> floors 1, 0, 0; 2 leftovers to remainders .9 (class 1), .8 (class 0)
    assert class_quotas([6, 3, 1], 3).tolist() == [2, 1, 0]
    # k = 5: shares 3, 1.5, 0.5 -> floors 3, 1, 0; 1 leftover, remainder tie .5/.5 -> lower class index
    assert class_quotas([6, 3, 1], 5).tolist() == [3, 2, 0]
    # k = N: every class whole; k = 9: shares 5.4, 2.7, 0.9 -> 5, 2, 0 + leftovers to .9, .7
    assert class_quotas([6, 3, 1], 10).tolist() == [6, 3, 1]
    assert class_quotas([6, 3, 1], 9).tolist() == [5, 3, 1]
    for k in range(11):
        q = class_quotas([6, 3, 1], k)
        assert q.sum() == k and np.all(q <= [6, 3, 1])


def test_class_balanced_keeps_exact_per_class_counts_and_the_right_ids():
    # class 0: ids 0..5, class 1: ids 6..8, class 2: id 9
    ids = np.arange(10, dtype=np.int64)
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
    scores = np.array([0.5, 0.9, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 1.0])
    hi = select("class_balanced_high", ids, labels, scores, 0.3)
    # quotas [2, 1, 0]: class 0 top-2 are ids 1 and 3 (tied 0.9), class 1 top is id 7
    np.testing.assert_array_equal(hi, [1, 3, 7])
    lo = select("class_balanced_low", ids, labels, scores, 0.5)
    # quotas [3, 2, 0]: class 0 lowest 3 -> ids 2, 4, 0; class 1 lowest 2 -> ids 6, 8
    np.testing.assert_array_equal(lo, [0, 2, 4, 6, 8])
    assert np.bincount(labels[lo], minlength=3).tolist() == [3, 2, 0]
    # a tie at the cut (ids 1 and 3, both 0.9, class 0's quota 1) is broken by the seeded random order
    picks = {tuple(select("class_balanced_high", ids, labels, scores, 0.2, seed=s)) for s in range(20)}
    assert picks == {(1, 7), (3, 7)}
    p = np.random.default_rng(0).permutation(10)
    np.testing.assert_array_equal(select("class_balanced_high", ids[p], labels[p], scores[p], 0.3), [1, 3, 7])


@pytest.mark.parametrize("balance", [True, False])
def test_select_balance_makes_every_method_class_balanced_unless_a_method_says_otherwise(balance):
    from kdprune.selection import parse_method

    def selector(label):
        return parse_method(label, balance=balance).selector

    assert selector("random") == ("class_balanced_high" if balance else "keep_high")
    assert selector("el2n") == ("class_balanced_high" if balance else "keep_high")
    assert selector("aum") == ("class_balanced_low" if balance else "keep_low")
    assert selector("el2n:low") == ("class_balanced_low" if balance else "keep_low")
    assert selector("random:global") == "keep_high" and selector("el2n:global") == "keep_high"
    assert selector("random:balanced") == "class_balanced_high" and selector("forgetting:balanced") == "class_balanced_high"
    assert parse_method("random:global").balanced is False and parse_method("random").balanced is True
    with pytest.raises(ValueError, match="random takes no ':high'"):
        parse_method("random:high")


def test_class_balanced_random_is_a_per_class_uniform_draw_with_exact_quotas():
    ids, labels = np.arange(1000, dtype=np.int64), np.repeat([0, 1, 2, 3], [400, 300, 200, 100])
    scores = np.random.default_rng(3).random(1000)  # what the random score is: uniform draws
    kept = select("class_balanced_high", ids, labels, scores, 0.15, seed=0)
    assert np.bincount(labels[kept]).tolist() == class_quotas([400, 300, 200, 100], 150).tolist() == [60, 45, 30, 15]
    whole = select("keep_high", ids, labels, scores, 0.15, seed=0)
    assert np.bincount(labels[whole], minlength=4).tolist() != [60, 45, 30, 15]  # the whole-pool draw is not


# -- ties ------------------------------------------------------------------------------------

def _class_ordered(sizes):
    """ids in class order, as ImageFolder assigns them: class 0 first, then class 1, ..."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return np.arange(len(labels), dtype=np.int64), labels


@pytest.mark.parametrize("selector", ["keep_high", "keep_low"])
@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.77])
def test_tied_scores_on_class_ordered_ids_keep_every_class_within_one_of_proportional(selector, fraction):
    sizes = np.array([128, 131, 128, 131, 122, 129, 115, 117, 118, 129])
    ids, labels = _class_ordered(sizes)
    k = budget(len(ids), fraction)
    for seed in range(3):
        kept = select(selector, ids, labels, np.zeros(len(ids)), fraction, seed=seed)
        counts = np.bincount(labels[np.searchsorted(ids, kept)], minlength=len(sizes))
        assert counts.sum() == k
        assert np.all(np.abs(counts - k * sizes / sizes.sum()) < 1), counts


def test_a_tie_group_straddling_the_cut_is_split_across_its_classes():
    # forgetting-like: a few distinct high scores, then most examples tied at 0
    sizes = np.array([300, 300, 300, 100])
    ids, labels = _class_ordered(sizes)
    scores = np.zeros(len(ids))
    scores[[5, 310, 320, 990]] = [3.0, 2.0, 2.0, 1.0]  # kept first whatever the ties
    kept = select("keep_high", ids, labels, scores, 0.5, seed=0)
    assert {5, 310, 320, 990} <= set(kept)
    group = np.setdiff1d(kept, [5, 310, 320, 990])  # the 496 taken from the tied 996
    tied_sizes = np.array([299, 298, 300, 99])
    counts = np.bincount(labels[group], minlength=4)
    assert counts.sum() == 496 and np.all(np.abs(counts - 496 * tied_sizes / tied_sizes.sum()) < 1), counts


def test_ties_follow_a_seeded_random_order_never_the_ids():
    ids, labels = _class_ordered([50, 50])
    scores = np.zeros(100)
    a = select("keep_high", ids, labels, scores, 0.2, seed=0)
    assert not np.array_equal(a, np.r_[0:10, 50:60])  # not the smallest ids of each class
    np.testing.assert_array_equal(a, select("keep_high", ids, labels, scores, 0.2, seed=0))
    assert not np.array_equal(a, select("keep_high", ids, labels, scores, 0.2, seed=1))
    p = np.random.default_rng(4).permutation(100)
    np.testing.assert_array_equal(a, select("keep_high", ids[p], labels[p], scores[p], 0.2, seed=0))
    # CCS's hard cut (keeping all the cut leaves, so the complement is the cut): random too
    cut = {tuple(np.setdiff1d(ids, select("ccs", ids, labels, scores, 0.9, seed=s, beta=0.1, k=1))) for s in range(3)}
    assert len(cut) > 1


# -- CCS -------------------------------------------------------------------------------------

def test_ccs_allocation_by_hand():
    # smallest first: 12//4=3 -> min(1,3)=1; 11//3=3 -> 2; 9//2=4 -> 4; 5//1=5 -> 5
    assert ccs_allocation([1, 2, 10, 10], 12).tolist() == [1, 2, 4, 5]
    # the answer follows the strata, not their positions
    assert ccs_allocation([10, 1, 10, 2], 12).tolist() == [4, 1, 5, 2]
    # empty strata take nothing and the total is still exact: 6//4=1 -> 0; 6//3=2 -> 0; 6//2=3 -> 3; 3
    assert ccs_allocation([0, 5, 0, 5], 6).tolist() == [0, 3, 0, 3]
    # more budget than examples: every stratum whole
    assert ccs_allocation([1, 2, 3], 100).tolist() == [1, 2, 3]
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 30, size=rng.integers(1, 12))
        total = int(rng.integers(0, sizes.sum() + 1))
        got = ccs_allocation(sizes, total)
        assert got.sum() == total and np.all(got <= sizes) and np.all(got >= 0)


def test_ccs_end_to_end_on_uniform_scores():
    n = 100
    ids = np.arange(1000, 1000 + n, dtype=np.int64)
    scores = (ids - 1000).astype(float)  # uniform: the score is the rank
    labels = ids % 3
    p = np.random.default_rng(3).permutation(n)
    kept = select("ccs", ids[p], labels[p], scores[p], 0.4, seed=1, beta=0.2, k=4)
    # beta cut: the 20 lowest (hardest) are gone; the rest 20..99 splits into 4 strata of 20 -> 10 each
    assert len(kept) == 40 and kept.min() >= 1020
    rank = kept - 1000
    assert np.bincount((rank - 20) // 20, minlength=4).tolist() == [10, 10, 10, 10]
    # seeded and input-order free
    np.testing.assert_array_equal(kept, select("ccs", ids, labels, scores, 0.4, seed=1, beta=0.2, k=4))
    assert not np.array_equal(kept, select("ccs", ids, labels, scores, 0.4, seed=2, beta=0.2, k=4))
    # the cut reads its own score when given one: here the 20 highest-ranked (their cut score is lowest)
    hi = select("ccs", ids, labels, scores, 0.4, seed=1, beta=0.2, k=4, cut_scores=-scores)
    assert hi.max() < 1080 and np.bincount((hi - 1000) // 20, minlength=4).tolist() == [10, 10, 10, 10]
    # the budget must fit in what the cut leaves
    with pytest.raises(ValueError, match="beta 0.7"):
        select("ccs", ids, labels, scores, 0.5, beta=0.7)


def test_ccs_end_to_end_matches_the_hand_allocation():
    # 8 hard examples (dropped by beta = 0.25 of 32), then strata over [0, 4] with width 1:
    # sizes [1, 2, 10, 11], budget 0.375 * 32 = 12 -> allocation [1, 2, 4, 5]
    hard = -np.arange(3, 11, dtype=float)
    s0, s1 = [0.0], [1.25, 1.5]
    s2 = 2.05 + 0.1 * np.arange(10)
    s3 = np.concatenate([3.05 + 0.1 * np.arange(10), [4.0]])
    scores = np.concatenate([hard, s0, s1, s2, s3])
    n = len(scores)
    assert n == 32
    ids = np.arange(n, dtype=np.int64) * 7 + 3
    labels = np.zeros(n, dtype=np.int64)
    strata_of = np.concatenate([np.full(8, -1), np.zeros(1), np.ones(2), np.full(10, 2), np.full(11, 3)]).astype(int)
    np.testing.assert_array_equal(ccs_strata(scores[8:], 4), strata_of[8:])
    for seed in range(5):
        kept = select("ccs", ids, labels, scores, 0.375, seed=seed, beta=0.25, k=4)
        assert len(kept) == 12
        st = strata_of[np.searchsorted(ids, kept)]
        assert st.min() >= 0  # none of the hard ones
        assert np.bincount(st, minlength=4).tolist() == [1, 2, 4, 5]


def reference_ccs_counts(stratified, aum, coreset_ratio, mis_ratio, stratas=50):
    """The CCS repository's selection logic, re-implemented here from its definition
    (train.py + core/data/Coreset.py): cut the int(mis_ratio * N) lowest accumulated margins,
    then stratify what is left into ``stratas`` bins [min + i*step, min + (i+1)*step) with
    step = (max * 1.0001 - min) / stratas, allocate int(coreset_ratio * N) smallest bin first,
    each min(its size, remaining // bins left). Returns (kept positions' bin masks, per-bin budgets)."""
    n = len(aum)
    mis_num = int(mis_ratio * n)
    easy = np.argsort(aum, kind="stable")[mis_num:]
    score = stratified[easy]
    lo, hi = score.min(), score.max() * 1.0001
    step = (hi - lo) / stratas
    masks = [(score >= lo + i * step) & (score < lo + (i + 1) * step) for i in range(stratas)]
    sizes = np.array([m.sum() for m in masks])
    order = np.argsort(sizes, kind="stable")
    rest, budgets = int(coreset_ratio * n), np.zeros(stratas, dtype=int)
    for i, b in enumerate(order):
        budgets[b] = min(sizes[b], rest // (stratas - i))
        rest -= budgets[b]
    return easy, masks, budgets


@pytest.mark.parametrize("kind", ["aum", "el2n", "forgetting"])
@pytest.mark.parametrize("fraction,beta", [(0.1, 0.3), (0.2, 0.2), (0.3, 0.1), (0.5, 0.0), (0.7, 0.0)])
def test_ccs_matches_the_reference_selection_logic(kind, fraction, beta):
    rng = np.random.default_rng(7)
    n = 1295  # 0.3 * 1295 = 388.5: the reference rounds the budget down
    labels = rng.integers(0, 10, n)
    aum = rng.normal(3.0, 2.0, n)  # the code's AUM (prob margins summed): the cut always reads it
    stratified = {"aum": aum, "el2n": rng.beta(0.5, 3.0, n) * 1.4,
                  "forgetting": rng.poisson(1.5, n).astype(float)}[kind]  # integer-valued: hits the bin edges
    ids = np.arange(n, dtype=np.int64) * 3 + 11
    kept = select("ccs", ids, labels, stratified, fraction, seed=5, beta=beta, k=50, cut_scores=aum)
    easy, masks, budgets = reference_ccs_counts(stratified, aum, fraction, beta)
    assert len(kept) == int(fraction * n) == budgets.sum()
    pos = np.searchsorted(ids, kept)
    assert set(pos) <= set(easy)  # nothing from the mislabel cut
    in_easy = np.isin(easy, pos)
    assert [int((m & in_easy).sum()) for m in masks] == budgets.tolist()  # identical per-stratum counts


def test_ccs_beta_table_is_linear_between_points_and_flat_beyond():
    from kdprune.selection.static.ccs import ccs_beta_at

    table = [[0.1, 0.3], [0.2, 0.2], [0.5, 0.0]]
    assert ccs_beta_at(table, 0.1) == pytest.approx(0.3) and ccs_beta_at(table, 0.2) == pytest.approx(0.2)
    assert ccs_beta_at(table, 0.05) == pytest.approx(0.3) and ccs_beta_at(table, 1.0) == 0.0
    assert ccs_beta_at(table, 0.15) == pytest.approx(0.25) and ccs_beta_at(table, 0.35) == pytest.approx(0.1)
    assert ccs_beta_at(0.1, 0.9) == 0.1


# -- RS2 -------------------------------------------------------------------------------------

def test_rs2_covers_every_sample_once_per_pass_and_is_seeded():
    s = make_sampler("rs2", 12, epochs=10, seed=0, ratio=0.25)
    epochs = [s.epoch_positions(e) for e in range(1, 5)]
    assert all(len(e) == 3 for e in epochs)
    allpos = np.concatenate(epochs)
    assert sorted(allpos.tolist()) == list(range(12))  # one pass: every position exactly once
    assert s.samples_seen == 12
    np.testing.assert_array_equal(s.epoch_positions(4), epochs[3])  # same epoch again: same, not recounted
    assert s.samples_seen == 12 and s.loss_weights(4) is None
    with pytest.raises(ValueError, match="in order"):
        s.epoch_positions(6)
    t = make_sampler("rs2", 12, epochs=10, seed=0, ratio=0.25)
    u = make_sampler("rs2", 12, epochs=10, seed=1, ratio=0.25)
    np.testing.assert_array_equal(t.epoch_positions(1), epochs[0])
    np.testing.assert_array_equal(np.concatenate([t.epoch_positions(e) for e in range(2, 5)]),
                                  np.concatenate(epochs[1:]))
    assert not np.array_equal(np.concatenate([u.epoch_positions(e) for e in range(1, 5)]), allpos)


def test_rs2_straddling_chunks_never_repeat_within_an_epoch():
    # n = 10, chunk 3: chunks straddle the permutation ends; 10 epochs = 30 draws = 3 whole passes
    s = make_sampler("rs2", 10, epochs=10, seed=4, ratio=0.3)
    epochs = [s.epoch_positions(e) for e in range(1, 11)]
    assert all(len(np.unique(e)) == 3 for e in epochs)
    assert np.bincount(np.concatenate(epochs), minlength=10).tolist() == [3] * 10
    # the first pass: epochs 1-3 show 9 distinct positions, the straddling epoch 4 holds the 10th
    first9 = np.concatenate(epochs[:3])
    assert len(np.unique(first9)) == 9
    assert set(range(10)) - set(first9) <= set(epochs[3])


def test_rs2_state_dict_round_trip_reproduces_the_next_epochs():
    a = make_sampler("rs2", 10, epochs=20, seed=7, ratio=0.3)
    for e in range(1, 6):
        a.epoch_positions(e)
    state = a.state_dict()
    assert all(isinstance(v, (int, np.ndarray)) for v in state.values())
    b = make_sampler("rs2", 10, epochs=20, seed=7, ratio=0.3)
    b.load_state_dict(state)
    assert b.samples_seen == 15
    for e in range(6, 12):
        np.testing.assert_array_equal(a.epoch_positions(e), b.epoch_positions(e))
    with pytest.raises(ValueError, match="chunk"):
        make_sampler("rs2", 10, epochs=20, seed=7, ratio=0.5).load_state_dict(state)


# -- InfoBatch -------------------------------------------------------------------------------

LOSSES = np.array([0.1, 0.2, 0.3, 0.4, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])  # mean 4.6: ids 0..3 are below


def test_infobatch_prunes_only_below_mean_and_rescales_the_kept_ones():
    s = make_sampler("infobatch", 10, epochs=9, seed=0)  # r = 0.5, delta = 0.875 -> prune epochs <= 7.875
    full = np.arange(10)
    np.testing.assert_array_equal(s.epoch_positions(1), full)  # no loss recorded yet
    assert s.loss_weights(1) is None
    s.update(1, full[::-1], LOSSES[::-1])  # any order
    dropped_sets = set()
    for e in range(2, 8):
        pos, w = s.epoch_positions(e), s.loss_weights(e)
        dropped = np.setdiff1d(full, pos)
        assert set(dropped) <= {0, 1, 2, 3} and len(dropped) == 2  # share r of the 4 below-mean
        assert set(range(4, 10)) <= set(pos)
        np.testing.assert_array_equal(w[pos < 4], [2.0, 2.0])  # 1 / (1 - 0.5), exactly
        np.testing.assert_array_equal(w[pos >= 4], np.ones(6))
        dropped_sets.add(tuple(dropped))
        s.update(e, pos, LOSSES[pos])  # unseen ones keep their previous loss
    assert len(dropped_sets) > 1  # a fresh random draw each epoch
    for e in (8, 9):  # after floor(delta * E) = 7: full data
        np.testing.assert_array_equal(s.epoch_positions(e), full)
        assert s.loss_weights(e) is None
    assert s.samples_seen == 10 + 8 * 6 + 10 + 10


def test_infobatch_weight_is_one_over_one_minus_r_and_unseen_keep_old_loss():
    s = make_sampler("infobatch", 10, epochs=10, seed=3, prune_ratio=0.3, delta=0.5)
    s.epoch_positions(1)
    s.update(1, np.arange(10), LOSSES)
    pos, w = s.epoch_positions(2), s.loss_weights(2)
    # 4 below the mean: keep floor(0.7 * 4) = 2, drop 2
    assert len(pos) == 8 and set(np.setdiff1d(np.arange(10), pos)) <= {0, 1, 2, 3}
    assert np.all(w[pos < 4] == np.float32(1.0 / 0.7)) and np.all(w[pos >= 4] == 1.0)
    # now only position 9 is updated, to a tiny loss; the others keep theirs -> mean 3.6, ids 0..3 and 9 below
    s.update(2, [9], [0.0])
    pos3 = s.epoch_positions(3)
    assert set(np.setdiff1d(np.arange(10), pos3)) <= {0, 1, 2, 3, 9} and len(pos3) == 10 - (5 - 3)
    for e in (4, 5):
        assert s.epoch_positions(e).size < 10
    assert s.epoch_positions(6).size == 10 and s.loss_weights(6) is None  # floor(0.5 * 10) = 5 is the last pruned
    with pytest.raises(ValueError, match="NaN"):
        s.update(6, [0], [np.nan])


class ReferenceInfoBatchSchedule:
    """The control flow of the InfoBatch reference code (``infobatch/infobatch.py``: ``InfoBatch`` and
    ``IBSampler``), written out from reading it, for the epoch sizes only (no torch, no DataLoader):

    - ``InfoBatch.__init__``: ``keep_ratio = min(1.0, max(1e-1, 1.0 - prune_ratio))``, every score 3,
      ``stop_prune = num_epochs * delta``;
    - ``IBSampler.__init__`` sets ``iterations = 0`` and calls ``reset()`` once;
    - ``reset()``: if ``iterations > stop_prune`` all samples (``no_prune``), else ``prune()``;
      then ``iterations += 1``; every epoch's ``__iter__`` calls ``reset()`` again;
    - ``prune()``: well-learned = ``scores < scores.mean()``, keep ``int(keep_ratio * len(well))`` of them;
    - ``update`` writes each trained sample's loss into ``scores``.
    """

    def __init__(self, n: int, num_epochs: int, prune_ratio: float, delta: float):
        self.keep_ratio = min(1.0, max(1e-1, 1.0 - prune_ratio))
        self.scores = np.ones(n) * 3
        self.stop_prune = num_epochs * delta
        self.iterations = 0
        self.reset()  # the constructor's call

    def reset(self) -> None:
        if self.iterations > self.stop_prune:
            self.size = len(self.scores)
        else:
            well = np.flatnonzero(self.scores < self.scores.mean())
            self.size = len(self.scores) - len(well) + int(self.keep_ratio * len(well))
        self.iterations += 1

    def epoch_size(self) -> int:  # ``for batch in loader``: the sampler's ``__iter__``
        self.reset()
        return self.size


# (E, delta): the cases (E = 8 / 30 at 0.875; E = 5, delta = 0.3 never prunes), a product just
# below an integer (0.29 * 100 = 28.999999999999996), delta 1 (every epoch), tiny and long schedules
INFOBATCH_SCHEDULES = [(8, 0.875), (30, 0.875), (5, 0.3), (10, 0.5), (100, 0.29), (7, 0.3), (3, 1.0),
                       (40, 0.875), (200, 0.875), (2, 0.5), (9, 0.875)]


@pytest.mark.parametrize("epochs,delta", INFOBATCH_SCHEDULES)
@pytest.mark.parametrize("prune_ratio", [0.5, 0.3])
def test_infobatch_epoch_sizes_equal_the_reference_schedule_constructor_included(epochs, delta, prune_ratio):
    # 90 of 120 losses below the mean: at r = 0.3 the reference keeps int(0.7 * 90) = 62, not 63
    losses = np.concatenate([np.zeros(90), np.ones(30)])
    ref = ReferenceInfoBatchSchedule(120, epochs, prune_ratio, delta)
    s = make_sampler("infobatch", 120, epochs=epochs, seed=0, prune_ratio=prune_ratio, delta=delta)
    ours, theirs = [], []
    for e in range(1, epochs + 1):
        pos = s.epoch_positions(e)
        ours.append(len(pos))
        theirs.append(ref.epoch_size())
        s.update(e, pos, losses[pos])
        ref.scores[pos] = losses[pos]
    assert ours == theirs
    last = max([k for k, size in enumerate(ours, 1) if size < 120], default=0)
    assert last <= int(np.floor(delta * epochs))  # never past floor(delta * E)
    if prune_ratio == 0.3 and last:
        assert min(ours) == 30 + 62


@pytest.mark.parametrize("bad", [0.95, 1.0])
def test_infobatch_refuses_a_prune_ratio_its_code_would_clamp(bad):
    with pytest.raises(ValueError, match=r"prune_ratio must be in \[0, 0.9\].*at least a share 0.1"):
        make_sampler("infobatch", 10, epochs=5, prune_ratio=bad)
    with pytest.raises(ValueError, match=r"select.infobatch.prune_ratio: got .*must be <= 0.9"):
        SAMPLERS.get("infobatch").resolve({"prune_ratio": bad})
    assert len(make_sampler("infobatch", 10, epochs=5, prune_ratio=0.9).epoch_positions(1)) == 10


def test_infobatch_state_dict_round_trip_reproduces_the_next_epoch():
    rng = np.random.default_rng(0)
    losses = rng.exponential(size=500)
    a = make_sampler("infobatch", 500, epochs=10, seed=11)
    for e in range(1, 4):
        pos = a.epoch_positions(e)
        a.update(e, pos, losses[pos] * (1 + 0.1 * e))
    b = make_sampler("infobatch", 500, epochs=10, seed=11)
    b.load_state_dict(a.state_dict())
    assert b.samples_seen == a.samples_seen
    np.testing.assert_array_equal(a.epoch_positions(4), b.epoch_positions(4))
    np.testing.assert_array_equal(a.loss_weights(4), b.loss_weights(4))
    # and about share r of the below-mean ones were dropped
    below = np.flatnonzero(a.losses < a.losses.mean())
    dropped = np.setdiff1d(np.arange(500), a.epoch_positions(4))
    assert set(dropped) <= set(below) and len(dropped) == len(below) - len(below) // 2
    with pytest.raises(ValueError, match="does not take option.*ratio"):
        make_sampler("infobatch", 10, epochs=5, ratio=0.5)


@pytest.mark.parametrize("score", ["aum_prob", "el2n", "moderate_ds"])
def test_ccs_cuts_the_cut_scores_hard_end_not_its_keep_end(score):
    """The mislabel cut drops the hardest by the cut score's registration (``hard``): lowest AUM,
    highest EL2N, and for Moderate-DS (keeps the middle band: keep end high) the far end, its lowest."""
    from kdprune.scores import SCORES
    from kdprune.selection.methods import hard_end, parse_method

    spec = SCORES.get(score)
    assert hard_end(score) == spec.hard
    assert (score, spec.keep, spec.hard) != ("moderate_ds", "high", "high")
    ids = np.arange(100, dtype=np.int64)
    labels = ids % 2
    cut_scores = np.random.default_rng(0).permutation(100).astype(float)  # distinct: the cut is unambiguous
    strat = np.zeros(100)
    # keep all the cut leaves (fraction 0.9 of 100 after cutting 10): the complement is the cut
    kept = select("ccs", ids, labels, strat, 0.9, seed=0, beta=0.1, k=1, cut_scores=cut_scores, cut_end=hard_end(score))
    cut = np.setdiff1d(ids, kept)
    hardest = np.argsort(cut_scores)[:10] if spec.hard == "low" else np.argsort(-cut_scores)[:10]
    np.testing.assert_array_equal(np.sort(cut), np.sort(ids[hardest]))
    assert parse_method("ccs").cut_end == SCORES.get(parse_method("ccs").cut_score).hard == "low"


# -- what a sampler declares, and what the stages read from it ---------------------------------

def test_samplers_declare_options_fractions_and_epoch_size_and_the_stages_follow():
    import yaml

    from kdprune.config import validate
    from kdprune.train.plan import student_budget
    from tasks.select import plan
    from tests.conftest import REPO

    ib, rs = SAMPLERS.get("infobatch"), SAMPLERS.get("rs2")
    assert ib.options_at(1.0, {"delta": 0.5}) == {"prune_ratio": 0.5, "delta": 0.5}  # params over defaults
    assert rs.options_at(0.3, None) == {"ratio": 0.3}  # the kept fraction is RS2's per-epoch share
    assert ib.fractions([0.1, 0.5]) == [1.0] and rs.fractions([0.1, 0.5]) == [0.1, 0.5]
    assert rs.epoch_size(1000, ratio=0.3) == 300 and ib.epoch_size(1000, prune_ratio=0.5, delta=0.875) == 1000

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    base["select"].update(methods=["rs2", "infobatch"], fractions=[0.1, 0.5], infobatch={"delta": 0.5})
    jobs = plan(validate(base))
    assert [(j["method"].label, j["fraction"]) for j in jobs] == [("rs2", 0.1), ("rs2", 0.5), ("infobatch", 1.0)]
    # a step budget divides the full data's steps by what one epoch of the sampler draws
    sp = validate({"student": {"budget": "steps", "epochs": 2, "batch_size": 10}}).student
    manifest = {"sampler": {"name": "rs2", "seed": 0, "options": rs.options_at(0.3, None)}}
    assert student_budget(sp, n_total=1000, manifest=manifest, n_pool=1000) == (7, 200)  # 200 steps, 30 per epoch


def test_every_sampler_declares_exactly_the_options_its_constructor_takes():
    """make_sampler builds from the declaration (options + fraction_option): a declared option the
    constructor lacks, or a constructor option params cannot set, would break here."""
    import inspect

    for name in SAMPLERS.names():
        cls = SAMPLERS.get(name)
        takes = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "n", "epochs", "seed")]
        declared = [*cls.options, *([cls.fraction_option] if cls.fraction_option else [])]
        assert sorted(takes) == sorted(declared), name


def test_ccs_options_under_select_ccs_reach_the_selector_and_its_plan():
    """select.ccs: {score, beta, strata} (CCS's declaration) sets what the select stage stratifies, cuts
    and records; absent options take the declared defaults."""
    import yaml

    from kdprune.config import validate
    from kdprune.selection import select_settings
    from tasks.select import plan
    from tests.conftest import REPO

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    base["scores"]["methods"] = ["random", "el2n", "aum_prob"]
    base["select"].update(methods=["ccs"], ccs={"score": "el2n", "beta": [[0.1, 0.2], [0.5, 0.1]], "strata": 7})
    p = validate(base)
    m = plan(p)[0]["method"]
    assert (m.score, m.cut_score, m.cut_end) == ("el2n", "aum_prob", "low")  # stratify el2n; cut by aum_prob's hard end
    opts = p.select.selector_keywords(m, 0.3)
    assert opts["k"] == 7 and opts["beta"] == pytest.approx(0.15)  # halfway between the table's points
    del base["select"]["ccs"]
    p = validate(base)
    m = plan(p)[0]["method"]
    assert m.score == "aum_prob" and p.select.selector_keywords(m, 0.1)["k"] == 50


# -- balance as each method's code, and budgets as each reference code rounds them -----------------

def default_select() -> dict:
    """params' ``select`` section as validation fills it with nothing given: the shipped default balance."""
    from kdprune.config import validate
    return validate({}).section("select")


def run_method(label, ids, labels, scores, fraction, seed=0, sel=None, **extra):
    """One static method as the select stage runs it (tasks/select.py): its selector, balance and budget rule."""
    from kdprune.selection import method_from_params, selector_options
    m = method_from_params(label, sel or default_select())
    takes = selector_options(m.selector)
    call = {**({"balance": m.balanced} if "balance" in takes else {}),
            **({"size": m.size(len(ids), fraction)} if "size" in takes else {}), **extra}
    return m, select(m.selector, ids, labels, scores, fraction, seed=seed, **call)


def reference_moderate_ds_kept(features, labels, rate):
    """The Moderate-DS code (tmllab/Moderate-DS ``selection.py``), written out from reading it: distance of each
    feature to its class's coordinate-wise median feature (``get_distance``), then ``get_prune_idx`` prunes
    ``sorted_idx[:round(N * (0.5 - rate/2))]`` and ``sorted_idx[round(N * (0.5 + rate/2)):]``; kept: the band."""
    d = np.zeros(len(labels))
    for c in np.unique(labels):
        rows = labels == c
        d[rows] = np.linalg.norm(features[rows] - np.median(features[rows], axis=0), axis=1)
    sorted_idx = d.argsort()
    low, high = 0.5 - rate / 2, 0.5 + rate / 2
    return np.sort(sorted_idx[round(len(d) * low):round(len(d) * high)])


def _spread_classes(n, seed=3):
    """Five classes of very different spread, so a global band and per-class bands differ."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    features = rng.normal(size=(n, 8)) * np.array([0.2, 0.5, 1.0, 2.0, 4.0])[labels][:, None]
    return labels, features


@pytest.mark.parametrize("n,fraction", [(1295, 0.1), (1295, 0.3), (1000, 0.5), (101, 0.2), (90, 0.7)])
def test_moderate_ds_by_default_selects_its_codes_global_band(n, fraction):
    from kdprune.scores import SCORES
    from kdprune.scores.base import ScoreContext
    labels, features = _spread_classes(n)
    ids = np.arange(n, dtype=np.int64)
    ctx = ScoreContext(ids=ids, labels=labels, num_classes=5, embeddings=features)
    score = SCORES.get("moderate_ds")(ctx)
    m, kept = run_method("moderate_ds", ids, labels, score, fraction)
    want = reference_moderate_ds_kept(features, labels, fraction)
    assert m.balanced is False
    np.testing.assert_array_equal(kept, want)
    if (n, fraction) == (1295, 0.1):
        assert len(kept) == 129  # round(712.25) - round(582.75) = 712 - 583; round half up would keep 130


def test_ccs_by_default_selects_over_the_whole_pool_as_its_code():
    rng = np.random.default_rng(11)
    n = 1295
    labels = rng.choice(5, n, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    aum = rng.normal(3.0, 2.0, n) + labels  # classes differ in where their scores lie
    ids = np.arange(n, dtype=np.int64) * 2 + 5
    for fraction, beta in [(0.1, 0.3), (0.3, 0.1), (0.5, 0.0)]:
        m, kept = run_method("ccs", ids, labels, aum, fraction, seed=2, beta=beta, k=50, cut_scores=aum)
        easy, masks, budgets = reference_ccs_counts(aum, aum, fraction, beta)
        assert m.balanced is False and len(kept) == budgets.sum()
        in_easy = np.isin(easy, np.searchsorted(ids, kept))
        assert [int((mk & in_easy).sum()) for mk in masks] == budgets.tolist()  # the code's global strata counts


@pytest.mark.parametrize("label", ["random", "el2n", "forgetting", "aum", "el2n_proxy", "grand"])
def test_deepcore_family_selects_per_class_by_default(label):
    rng = np.random.default_rng(5)
    n = 1295
    labels = rng.choice(4, n, p=[0.5, 0.25, 0.15, 0.1])
    scores = rng.normal(size=n) + 2.0 * labels  # a global top-k would take mostly the high classes
    ids = np.arange(n, dtype=np.int64)
    for fraction in (0.1, 0.3, 0.5):
        m, kept = run_method(label, ids, labels, scores, fraction, seed=1)
        assert m.balanced is True
        np.testing.assert_array_equal(np.bincount(labels[kept], minlength=4),
                                      class_quotas(np.bincount(labels), budget(n, fraction)))


def test_balance_true_false_and_suffixes_override_auto():
    from kdprune.selection import parse_method
    for label in ("random", "el2n", "moderate_ds", "ccs"):
        assert parse_method(label, balance=True).balanced is True
        assert parse_method(label, balance=False).balanced is False
        assert parse_method(f"{label}:balanced", balance=False).balanced is True
        assert parse_method(f"{label}:global", balance=True).balanced is False
    assert parse_method("ccs:balanced").selector == "ccs"
    with pytest.raises(ValueError, match="select.balance must be auto, true or false, got 1"):
        parse_method("el2n", balance=1)


def test_params_balance_takes_auto_true_or_false_and_says_so_otherwise():
    from kdprune.config import ParamsError, validate
    assert validate({}).select.balance == "auto"
    assert validate({"select": {"balance": False}}).select.balance is False
    with pytest.raises(ParamsError, match=r"select.balance: 'yes' must be auto .*true .*false"):
        validate({"select": {"balance": "yes"}})


def test_ccs_balanced_splits_its_budget_by_class_and_stratifies_each_class():
    rng = np.random.default_rng(4)
    n = 600
    labels = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    aum = rng.normal(size=n) + labels
    ids = np.arange(n, dtype=np.int64)
    kept = select("ccs", ids, labels, aum, 0.3, seed=0, beta=0.1, k=10, cut_scores=aum, balance=True)
    np.testing.assert_array_equal(np.bincount(labels[kept], minlength=3), class_quotas(np.bincount(labels), 180))
    for c in range(3):  # each class's int(beta * n_c) lowest are cut inside the class
        rows = np.flatnonzero(labels == c)
        cut = rows[np.argsort(aum[rows])[: int(0.1 * len(rows))]]
        assert not set(cut) & set(kept)


def test_budget_rules_round_as_each_reference_code_on_its_edge_cases():
    from kdprune.budgets import BUDGET_RULES
    from kdprune.scores import SCORES
    from kdprune.selection import STATIC_METHODS
    assert STATIC_METHODS.get("ccs").budget == "floor" and SCORES.get("moderate_ds").budget == "median_band"
    assert SAMPLERS.get("rs2").budget == "round"
    # CCS: coreset_num = int(args.coreset_ratio * total_num), no tolerance
    assert BUDGET_RULES["floor"](90, 0.7) == int(0.7 * 90) == 62
    labels = np.arange(90) % 3
    assert len(select("ccs", np.arange(90), labels, np.linspace(0, 1, 90), 0.7, k=5)) == 62
    # Moderate-DS: the band [round(N * 0.45), round(N * 0.55)) with Python's round
    assert BUDGET_RULES["median_band"](1295, 0.1) == round(1295 * 0.55) - round(1295 * 0.45) == 129
    # RS2: coreset_size = round(n_train * fraction), half to even
    assert BUDGET_RULES["round"](1295, 0.3) == round(1295 * 0.3) == 388
    s = make_sampler("rs2", 1295, epochs=3, seed=0, ratio=0.3)
    assert [len(s.epoch_positions(e)) for e in (1, 2, 3)] == [388] * 3
    assert SAMPLERS.get("rs2").epoch_size(1295, ratio=0.3) == 388
    # the DeepCore-family rule stays round half up (README "Budgets": every such method keeps the same count)
    assert BUDGET_RULES["round_half_up"](1295, 0.3) == 389
    # and each rule agrees with its reference expression everywhere on a grid (at least 1)
    for n in range(1, 1400, 7):
        for f in (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
            assert BUDGET_RULES["floor"](n, f) == max(1, int(f * n))
            assert BUDGET_RULES["round"](n, f) == max(1, round(f * n))
            assert BUDGET_RULES["median_band"](n, f) == max(1, round(n * (0.5 + f / 2)) - round(n * (0.5 - f / 2)))
