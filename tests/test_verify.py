"""kdprune/agreement.py: when a re-run's cell agrees with the committed one (bytes, or seed noise)."""
from kdprune import agreement as G

METRICS = {"students": 4, "teacher_test_acc": {"small_cnn": 0.98},
           "test_acc": {"random": {"0.1": {"kd": 0.90, "no_kd": 0.88}}}, "kd_weight": {"random": {"0.1": 0.5}}}


def _rerun(**cells):
    out = {"teacher_test_acc": {"small_cnn": cells.get("teacher", 0.98)},
           "test_acc": {"random": {"0.1": {"kd": cells.get("kd", 0.90), "no_kd": cells.get("nokd", 0.88)}}}}
    return G.metric_cells(out)


def _spread(std, seeds):
    return G.spreads([{"method": "random", "fraction": "0.1", "arm": a, "std": std, "seeds": seeds}
                      for a in ("KD a=0.5", "no KD")])


def test_cells_are_named_and_equal_bytes_are_identical():
    c = G.metric_cells(METRICS)
    assert set(c) == {"teacher_test_acc/small_cnn", "test_acc/random/0.1/kd", "test_acc/random/0.1/no_kd"}
    rows = G.compare(c, _rerun(), {}, {}, bytes_expected=True, n_test=360)
    assert all(r.ok and r.verdict == "identical" for r in rows)


def test_where_bytes_are_expected_any_difference_fails():
    rows = G.compare(G.metric_cells(METRICS), _rerun(kd=0.9001), _spread(0.02, 3), _spread(0.02, 3), True, 360)
    bad = [r for r in rows if not r.ok]
    assert [r.name for r in bad] == ["test_acc/random/0.1/kd"] and bad[0].allowed == 0.0


def test_seed_noise_decides_with_several_seeds():
    # 3 seeds, per-seed std 0.01: allowed = 3 * 0.01 * sqrt(2/3) = 0.0245
    rows = {r.name: r for r in G.compare(G.metric_cells(METRICS), _rerun(kd=0.92, nokd=0.85),
                                         _spread(0.01, 3), _spread(0.01, 3), False, 360)}
    assert abs(rows["test_acc/random/0.1/kd"].allowed - 0.0244949) < 1e-6
    assert rows["test_acc/random/0.1/kd"].ok and rows["test_acc/random/0.1/kd"].verdict == "within noise"
    assert not rows["test_acc/random/0.1/no_kd"].ok  # 3 points off: outside
    assert G.seeds_needed(list(rows.values()), _spread(0.01, 3)) is None


def test_one_seed_falls_back_to_test_set_noise_and_asks_for_seeds():
    rows = G.compare(G.metric_cells(METRICS), _rerun(kd=0.91, nokd=0.70), _spread(0, 1), _spread(0, 1), False, 360)
    by = {r.name: r for r in rows}
    assert by["test_acc/random/0.1/kd"].ok and "1 seed" in by["test_acc/random/0.1/kd"].verdict
    assert not by["test_acc/random/0.1/no_kd"].ok
    assert G.seeds_needed(rows, _spread(0, 1)) == G.MIN_SEEDS
    md = G.markdown(rows, "noise", [], G.MIN_SEEDS)
    assert "at least 3 seeds" in md and "no_kd" in md


def test_a_missing_cell_fails_and_changed_claims_are_named():
    rerun = _rerun()
    del rerun["test_acc/random/0.1/no_kd"]
    rows = G.compare(G.metric_cells(METRICS), rerun, {}, {}, False, 360)
    assert [r.name for r in rows if not r.ok] == ["test_acc/random/0.1/no_kd"]
    assert G.changed_claims({"1": {"verdict": "holds"}, "2": {"verdict": "holds"}},
                            {"1": {"verdict": "holds"}, "2": {"verdict": "does not hold"}}) == \
        ["claim 2: holds -> does not hold"]
