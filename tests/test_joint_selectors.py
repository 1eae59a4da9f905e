"""Joint selectors against independent computations on small cases with known answers."""
import copy
import itertools

import numpy as np
import pytest
import torch

import kdprune  # noqa: F401
from kdprune.config import ParamsError, validate
from kdprune.selection import JOINT, JointInputs, budget, class_quotas, parse_method, run_joint
from kdprune.selection.joint.gradmatch import omp
from kdprune.selection.joint.inputs import last_layer_gradients, softmax

ALL = ["cal", "craig", "deepfool", "facility_location", "glister", "gradmatch", "graph_cut", "herding", "kcenter"]


def pick(name, inputs, k, rng=None, **opts):
    spec = JOINT.get(name)
    opts = {key: v for key, v in spec.resolve(opts).items() if key != "balance"}
    return spec.fn(inputs, k, rng or np.random.default_rng(0), **opts)


def feats(x):
    x = np.asarray(x, dtype=np.float32)
    return JointInputs(labels=np.zeros(len(x), dtype=np.int64), num_classes=1, features=x.reshape(len(x), -1))


def test_every_selector_is_registered_with_definition_variant_and_cost():
    assert set(JOINT.names()) == set(ALL)
    for name in ALL:
        spec = JOINT.get(name)
        assert spec.definition and spec.variant and spec.cost and "balance" in spec.options
        assert parse_method(name).joint == name and parse_method(name).stochastic == spec.seeded
    assert {n for n in ALL if JOINT.get(n).seeded} == {"kcenter", "gradmatch"}
    assert {n for n in ALL if JOINT.get(n).weighted} == {"craig", "gradmatch"}


# -- herding: hand-worked ---------------------------------------------------------------------

def test_herding_hand_worked():
    # mu = 3.25. t=1: argmin |3.25 - x| -> 2 (pos 2); t=2: |6.5 - 2 - x| = |4.5 - x| -> 1 (pos 1);
    # t=3: |9.75 - 3 - x| = |6.75 - x| -> 10 (pos 3); then 0.
    out = pick("herding", feats([[0], [1], [2], [10]]), 4).positions
    np.testing.assert_array_equal(out, [2, 1, 3, 0])


# -- k-center greedy: hand-worked ---------------------------------------------------------------

class FirstIs:
    def __init__(self, i):
        self.i = i

    def integers(self, n):
        return self.i


def test_kcenter_hand_worked_and_against_a_plain_loop():
    # from 0: farthest is 10; then min distances 3 -> 3, 4 -> 4: pick 4, then 3
    np.testing.assert_array_equal(pick("kcenter", feats([[0], [3], [4], [10]]), 4, FirstIs(0)).positions, [0, 3, 2, 1])
    x = np.random.default_rng(3).normal(size=(40, 3))
    got = pick("kcenter", feats(x), 10, np.random.default_rng(7)).positions
    first = int(np.random.default_rng(7).integers(40))
    want = [first]
    for _ in range(9):
        d = np.min(np.linalg.norm(x[:, None] - x[want][None], axis=2), axis=1)
        want.append(int(np.argmax(d)))
    np.testing.assert_array_equal(got, want)


# -- facility location: brute-force optimum, plain greedy, on-demand columns ----------------------

def cos_sim(x):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return 0.5 + 0.5 * xn @ xn.T


def fl_value(s, subset):
    return s[:, list(subset)].max(axis=1).sum()


def plain_greedy(value, n, k):
    chosen = []
    for _ in range(k):
        gains = [value(chosen + [j]) - (value(chosen) if chosen else 0.0) if j not in chosen else -np.inf
                 for j in range(n)]
        chosen.append(int(np.argmax(gains)))
    return chosen


def test_facility_location_finds_the_brute_force_optimum_on_12_points():
    # four far-apart clusters of three: a centre and two points above and below it (off the plane of
    # the centres, so they are also farther from the other clusters); the optimum of 4 is the four
    # centres, which brute force over all 495 subsets confirms
    ring = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, -0.5]])
    x = np.concatenate([np.array(c) + ring for c in ([0, 0, 0], [10, 0, 0], [0, 10, 0], [10, 10, 0])])
    x = x[[1, 0, 2, 3, 5, 4, 8, 7, 6, 11, 10, 9]]  # centres now at positions 1, 3, 8, 11
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    s = d.max() - d
    best = max(itertools.combinations(range(12), 4), key=lambda sub: fl_value(s, sub))
    assert sorted(best) == [1, 3, 8, 11]
    got = pick("facility_location", feats(x), 4, metric="euclidean").positions
    assert sorted(got) == sorted(best)
    assert fl_value(s, got) == pytest.approx(fl_value(s, best), rel=1e-6)


def test_facility_location_lazy_greedy_equals_plain_greedy_in_memory_and_on_demand():
    x = np.random.default_rng(1).normal(size=(12, 4))
    for metric in ("cosine", "euclidean"):
        if metric == "cosine":
            s = cos_sim(x)
        else:
            d = np.linalg.norm(x[:, None] - x[None], axis=2)
            s = d.max() - d
        want = plain_greedy(lambda sub: fl_value(s, sub), 12, 6)
        np.testing.assert_array_equal(pick("facility_location", feats(x), 6, metric=metric).positions, want)
        best = max(fl_value(s, sub) for sub in itertools.combinations(range(12), 6))
        assert fl_value(s, want) >= (1 - 1 / np.e) * best
    big = np.random.default_rng(2).normal(size=(300, 5))
    full = pick("facility_location", feats(big), 40, metric="euclidean").positions
    # a 1 MiB bound is below 300*300*4 bytes... use 0.1 MiB: columns on demand, 87 at a time
    tiny = JOINT.get("facility_location").fn(feats(big), 40, None, metric="euclidean", max_matrix_mb=0.1)
    np.testing.assert_array_equal(full, tiny.positions)


def test_similarity_never_builds_the_full_matrix_beyond_its_bound():
    from kdprune.selection.joint.base import Similarity

    x = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    sim = Similarity(x, "euclidean", max_matrix_mb=1.0)
    assert sim.full is None and sim.chunk * 2000 * 4 <= 2**20
    d = np.linalg.norm(x[:, None] - x[None, :5], axis=2)
    np.testing.assert_allclose(sim.columns([0, 1, 2, 3, 4]), sim.dmax - d, rtol=1e-4, atol=1e-4)


# -- graph cut: plain greedy on the objective computed from its definition ------------------------

def test_graph_cut_greedy_steps_match_the_objective():
    x = np.random.default_rng(4).normal(size=(12, 3))
    s = cos_sim(x)
    for lam in (1.0, 3.0):
        def g(sub, lam=lam):
            sub = list(sub)
            return lam * s[:, sub].sum() - s[np.ix_(sub, sub)].sum()
        want = plain_greedy(g, 12, 5)
        np.testing.assert_array_equal(pick("graph_cut", feats(x), 5, lam=lam).positions, want)


# -- CRAIG: facility location on gradients, weights = cluster sizes -------------------------------

def test_craig_selects_by_gradient_facility_location_and_weights_are_cluster_sizes():
    rng = np.random.default_rng(5)
    g = rng.normal(size=(12, 6))
    inputs = JointInputs(labels=np.zeros(12, dtype=np.int64), num_classes=1, gradients=g.astype(np.float32))
    d = np.linalg.norm(g[:, None] - g[None], axis=2)
    s = d.max() - d
    want = plain_greedy(lambda sub: fl_value(s, sub), 12, 4)
    for mb in (512.0, 12 * 4 / 2**20 * 1.5):  # whole matrix; one column at a time
        out = JOINT.get("craig").fn(inputs, 4, None, max_matrix_mb=mb)
        np.testing.assert_array_equal(out.positions, want)
        nearest = np.asarray(want)[np.argmin(d[:, want], axis=1)]
        np.testing.assert_array_equal(out.weights, [np.sum(nearest == j) for j in want])
        assert out.weights.sum() == 12


def test_craig_weights_reach_the_manifest_scaled_to_mean_one_and_aligned_with_ids():
    rng = np.random.default_rng(6)
    g = rng.normal(size=(30, 5)).astype(np.float32)
    labels = np.repeat([0, 1, 2], 10)
    ids = np.arange(30)[::-1] * 7  # descending ids: output must come back sorted with weights aligned
    inputs = JointInputs(labels=labels, num_classes=3, gradients=g)
    kept, w = run_joint("craig", ids, inputs, 0.3, options={"balance": True})
    assert np.all(np.diff(kept) > 0) and w.mean() == pytest.approx(1.0)
    # per class: the weights are the class's cluster sizes times k/N
    for c in range(3):
        rows = np.flatnonzero(labels == c)[::-1]  # id order within the class
        out = JOINT.get("craig").fn(inputs.take(rows), 3, None)
        want = dict(zip(ids[rows[out.positions]], out.weights * 9 / 30))
        for i, wi in zip(kept, w):
            if i in want:
                assert wi == pytest.approx(want[i])


# -- GradMatch: OMP residual checks, known sparse answer, plain OMP --------------------------------

def test_omp_residual_is_orthogonal_to_picks_and_ridge_identity_holds():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(40, 15))
    b = a[:20].sum(axis=0)
    picked, w, norms = omp(a, b, 8, lam=0.0, tol=0.0)
    r = b - w @ a[picked]
    np.testing.assert_allclose(a[picked] @ r, 0.0, atol=1e-8)
    assert norms[-1] == pytest.approx(np.linalg.norm(r)) and all(np.diff(norms) <= 1e-12)
    picked, w, _ = omp(a, b, 8, lam=2.5, tol=0.0)
    np.testing.assert_allclose(a[picked] @ (b - w @ a[picked]), 2.5 * w, atol=1e-8)
    # plain OMP written out: argmax correlation, least squares on all picks
    want, res = [], b.copy()
    for _ in range(8):
        c = a @ res
        c[want] = -np.inf
        want.append(int(np.argmax(c)))
        coef, *_ = np.linalg.lstsq(a[want].T, b, rcond=None)
        res = b - coef @ a[want]
    np.testing.assert_array_equal(omp(a, b, 8, lam=0.0, tol=0.0)[0], want)


def test_gradmatch_recovers_a_known_sparse_combination_then_fills():
    rng = np.random.default_rng(8)
    q, _ = np.linalg.qr(rng.normal(size=(20, 8)))
    a = q.T  # 8 orthonormal rows
    b = 2.0 * a[3] + 0.5 * a[6]
    picked, w, norms = omp(a, b, 5, lam=0.0)
    assert list(picked) == [3, 6] and np.allclose(w, [2.0, 0.5]) and norms[-1] < 1e-10
    inputs = JointInputs(labels=np.zeros(8, dtype=np.int64), num_classes=1, gradients=a.astype(np.float32))
    inputs.gradients[:] = 0
    # in the selector the target is the pool's gradient sum: rows 3 and 6 = 4 and 1 times a unit vector
    g = np.zeros((8, 20))
    g[3], g[6] = 4 * a[3], 1 * a[6]
    g[0], g[1] = 2e-3 * a[0], 1e-3 * a[1]
    inputs.gradients = g
    out = JOINT.get("gradmatch").fn(inputs, 4, np.random.default_rng(0), lam=0.0, tol=1e-12)
    assert list(out.positions[:4]) == [3, 6, 0, 1]  # OMP picks every row with a positive share, 3 and 6 first
    np.testing.assert_allclose(out.weights, 1.0, atol=1e-9)  # each reproduces itself exactly: w = 1
    out = JOINT.get("gradmatch").fn(inputs, 6, np.random.default_rng(0), lam=0.0, tol=1e-12)
    assert set(out.positions[4:]) <= {2, 4, 5, 7} and np.all(out.weights[4:] == 1.0)  # seeded uniform fill


# -- Glister: gains from autograd of the validation loss -----------------------------------------

def test_glister_naive_greedy_matches_autograd_taylor_gains():
    rng = np.random.default_rng(9)
    n, m, d, c, eta = 10, 6, 3, 3, 0.5
    h, hv = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    y, yv = rng.integers(0, c, n), rng.integers(0, c, m)
    w0, b0 = rng.normal(size=(c, d)), rng.normal(size=(c,))

    def grad(x, t, w, b):  # mean CE gradient w.r.t. (b, W) by autograd
        wt = torch.tensor(w, requires_grad=True)
        bt = torch.tensor(b, requires_grad=True)
        loss = torch.nn.functional.cross_entropy(torch.tensor(x) @ wt.T + bt, torch.tensor(t))
        gb, gw = torch.autograd.grad(loss, (bt, wt))
        return np.concatenate([gb.numpy(), gw.numpy().ravel()])

    g = np.stack([grad(h[i:i + 1], y[i:i + 1], w0, b0) for i in range(n)])
    np.testing.assert_allclose(last_layer_gradients(h, h @ w0.T + b0, y), g, rtol=1e-5, atol=1e-6)
    want = []
    for _ in range(5):
        step = g[want].mean(axis=0) if want else np.zeros(g.shape[1])
        vg = grad(hv, yv, w0 - eta * step[c:].reshape(c, d), b0 - eta * step[:c])
        gains = g @ vg
        gains[want] = -np.inf
        want.append(int(np.argmax(gains)))
    inputs = JointInputs(labels=y, num_classes=c, gradients=g, val_features=hv, val_logits=hv @ w0.T + b0,
                         val_labels=yv)
    np.testing.assert_array_equal(pick("glister", inputs, 5, eta=eta).positions, want)
    assert len(set(pick("glister", inputs, 5, eta=eta, greedy="lazy").positions)) == 5


# -- CAL: hand-worked KL --------------------------------------------------------------------------

def test_cal_hand_worked():
    x = np.array([[0.0], [1.0], [10.0], [11.5]])
    p = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.25, 0.75]])
    inputs = JointInputs(labels=np.zeros(4, dtype=np.int64), num_classes=2, features=x, probs=p)

    def kl(a, b):
        return float(np.sum(a * np.log(a / b)))

    # one neighbour: 0<->1, 2<->3; score = KL(p_neighbour || p_self)
    want = np.array([kl(p[1], p[0]), kl(p[0], p[1]), kl(p[3], p[2]), kl(p[2], p[3])])
    from kdprune.selection.joint.cal import cal_scores

    np.testing.assert_allclose(cal_scores(x, p, 1), want)
    assert list(pick("cal", inputs, 2, neighbours=1).positions) == list(np.argsort(-want)[:2])


# -- DeepFool: exact distance for a linear classifier ---------------------------------------------

def test_deepfool_equals_the_distance_to_the_nearest_boundary_of_a_linear_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 4)).double()
    x = torch.randn(25, 1, 2, 3, dtype=torch.float64)
    from kdprune.selection.joint.deepfool import deepfool_distances

    got = deepfool_distances(model.float(), x.float(), overshoot=0.02)
    w, b = model[1].weight.detach().double().numpy(), model[1].bias.detach().double().numpy()
    xf = x.reshape(25, -1).numpy()
    z = xf @ w.T + b
    o = z.argmax(1)
    want = []
    for i in range(25):
        dist = [abs(z[i, k] - z[i, o[i]]) / np.linalg.norm(w[k] - w[o[i]]) for k in range(4) if k != o[i]]
        want.append(1.02 * (min(dist) + 1e-4))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    inputs = JointInputs(labels=np.zeros(25, dtype=np.int64), num_classes=4, model=model.float(), inputs=x.float())
    np.testing.assert_array_equal(sorted(pick("deepfool", inputs, 5).positions), sorted(np.argsort(want)[:5]))


def _deepfool_reference(model, x, candidates, max_iter=50, overshoot=0.02):
    """DeepFool one example at a time, full Jacobian by torch.autograd.functional.jacobian; the
    candidate classes: the `candidates` highest other logits at the clean input (0: all others)."""
    out, steps = [], []
    for xi in x.double():
        z0 = model(xi[None])[0]
        o = int(z0.argmax())
        others = [c for c in torch.argsort(z0, descending=True).tolist() if c != o]
        cand = others[:candidates] if candidates else others
        r = torch.zeros_like(xi)
        n = 0
        while n < max_iter:
            xa = xi + (1 + overshoot) * r
            z = model(xa[None])[0].detach()
            if int(z.argmax()) != o:
                break
            jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], xa).reshape(len(z), -1)
            best = min(((abs(z[c] - z[o]) / (jac[c] - jac[o]).norm(), c) for c in cand), key=lambda t: float(t[0]))
            w = jac[best[1]] - jac[o]
            r = r + ((best[0] + 1e-4) * w / w.norm()).view_as(xi)
            n += 1
        out.append(float(((1 + overshoot) * r).norm()))
        steps.append(n)
    return np.array(out), np.array(steps)


def test_deepfool_top_candidates_against_the_full_computation():
    from kdprune.selection.joint.deepfool import deepfool_distances

    # affine model, 6 classes: one step; with k candidates the distance is the nearest boundary
    # among the k highest other logits (never nearer than the full one)
    torch.manual_seed(1)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 6)).double()
    x = torch.randn(40, 1, 2, 3, dtype=torch.float64)
    w, b = lin[1].weight.detach().numpy(), lin[1].bias.detach().numpy()
    z = x.reshape(40, -1).numpy() @ w.T + b
    o = z.argmax(1)
    ratio = np.abs(z - z[np.arange(40), o][:, None]) / np.linalg.norm(w[None] - w[o][:, None], axis=2).clip(1e-300)
    ratio[np.arange(40), o] = np.inf
    order = np.argsort(-z, axis=1, kind="stable")
    want_all = 1.02 * (ratio.min(1) + 1e-4)
    for k in (1, 2):
        want_k = 1.02 * (np.take_along_axis(ratio, order[:, 1:1 + k], 1).min(1) + 1e-4)
        assert (want_k > want_all * 1.01).sum() >= (5 if k == 1 else 1)  # the restriction matters here
        np.testing.assert_allclose(deepfool_distances(lin.float(), x.float(), candidates=k), want_k, rtol=1e-4)
    for k in (0, 5, 7):
        np.testing.assert_allclose(deepfool_distances(lin.float(), x.float(), candidates=k), want_all, rtol=1e-4)

    # a network (several steps for some examples), batched vs one example at a time, any batch size
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16),
                              torch.nn.Tanh(), torch.nn.Linear(16, 5)).double()
    x = 2 * torch.randn(30, 1, 2, 3, dtype=torch.float64)
    for k, bs in ((0, 64), (2, 7), (1, 5)):
        want, steps = _deepfool_reference(net, x, k)
        assert steps.max() >= 3
        got = deepfool_distances(copy.deepcopy(net).float(), x.float(), candidates=k, batch_size=bs)
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-5)


# -- the runner: budgets, balance, input order, options -------------------------------------------

def _pool(n=60, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(c), [n // 2, n // 3, n - n // 2 - n // 3])
    f = (rng.normal(size=(n, 4)) + y[:, None]).astype(np.float32)
    z = (f @ rng.normal(size=(c, 4)).T).astype(np.float32)
    model = torch.nn.Linear(4, c)
    return JointInputs(labels=y, num_classes=c, features=f, logits=z, probs=softmax(z.astype(np.float64)),
                       gradients=last_layer_gradients(f, z, y), val_features=f[::3], val_logits=z[::3],
                       val_labels=y[::3], model=model, inputs=torch.tensor(f))


@pytest.mark.parametrize("name", ALL)
def test_every_selector_runs_per_class_and_globally_independent_of_input_order(name):
    inputs = _pool()
    ids = np.arange(60) * 3 + 100
    kept, w = run_joint(name, ids, inputs, 0.25, seed=1, options={"balance": True})
    counts = np.bincount(inputs.labels[np.searchsorted(ids, kept)], minlength=3)
    np.testing.assert_array_equal(counts, class_quotas(np.bincount(inputs.labels), budget(60, 0.25)))
    assert (w is not None) == JOINT.get(name).weighted
    p = np.random.default_rng(3).permutation(60)
    kept2, w2 = run_joint(name, ids[p], inputs.take(p), 0.25, seed=1, options={"balance": True})
    np.testing.assert_array_equal(kept, kept2)
    if w is not None:
        np.testing.assert_allclose(w, w2)
    g, _ = run_joint(name, ids, inputs, 0.25, seed=1, options={"balance": False})
    assert len(g) == budget(60, 0.25) and set(g) <= set(ids)


def test_options_are_validated_from_the_registration():
    inputs = _pool()
    with pytest.raises(ValueError, match=r"craig.metric: unknown option; valid options: balance, max_matrix_mb"):
        run_joint("craig", np.arange(60), inputs, 0.5, options={"metric": "cosine"})
    with pytest.raises(ValueError, match="graph_cut.lam: got -1.0, must be >= 0.0"):
        run_joint("graph_cut", np.arange(60), inputs, 0.5, options={"lam": -1.0})
    with pytest.raises(ValueError, match="needs gradients"):
        run_joint("craig", np.arange(60), JointInputs(labels=inputs.labels, num_classes=3), 0.5)
    import yaml
    from bench.project import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["select"]["glister"] = {"eta": 0.2, "greedy": "fastest"}
    with pytest.raises(ParamsError, match="select.glister.*glister.greedy: got 'fastest', allowed: naive, lazy"):
        validate(raw)
    raw["select"]["glister"] = {"eta": 0.2}
    raw["select"]["methods"] = ["random", "glister"]
    p = validate(raw)
    assert p.section("select")["glister"] == {"eta": 0.2}  # as given (what MLflow logs and DVC tracks)
    assert p.select.options_of("glister") == {**JOINT.get("glister").resolve(None), "eta": 0.2}  # resolved once


# -- the trainer: per-element weights multiply the loss -------------------------------------------

def test_sample_weights_scale_each_examples_loss():
    from kdprune.train import DeviceData, TrainConfig, seeded, train
    from kdprune.models import build_model

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(64, 1, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 3, 64)
    data = DeviceData.from_numpy(x, y, [0.5], [0.25], torch.device("cpu"))
    subset = torch.arange(0, 64, 2)

    def run(weights, lr):
        with seeded(0):
            model = build_model("small_cnn", 1, 3, 8)
        cfg = TrainConfig(epochs=2, batch_size=8, lr=lr, weight_decay=0.0, warmup_epochs=0.0)
        return train(model, data, cfg, subset=subset, sample_weights=weights).best_state

    # SGD with momentum is linear in the gradient: weights all 2 at lr equal weights 1 at 2*lr
    a, b = run(torch.full((32,), 2.0), 0.01), run(None, 0.02)
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    c = run(torch.ones(32).index_fill_(0, torch.arange(16), 0.0), 0.02)  # half the examples weigh nothing
    assert any(not torch.allclose(b[k], c[k]) for k in b if b[k].is_floating_point())
    with pytest.raises(ValueError, match="sample_weights must be 32"):
        run(torch.ones(5), 0.01)


def test_selectors_run_with_one_blas_thread(monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []
    spec = JOINT.get("herding")
    real = spec.fn

    def probe(inputs, k, rng, **opts):
        seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        return real(inputs, k, rng, **opts)

    monkeypatch.setattr(spec, "fn", probe)
    with threadpool_limits(limits=2, user_api="blas"):  # two outside, whatever the machine
        run_joint("herding", np.arange(60), _pool(), 0.2, options={"balance": True})
    assert seen and set(seen) == {1}


# -- similarity of gradient-sized rows; facility location and graph cut on last-layer gradients ------

def cosine_s(x):
    """(1 + cos) / 2 of every pair of rows, in float64 (DeepCore's ``cossim_np``), computed directly."""
    x = np.asarray(x, dtype=np.float64)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return 0.5 + 0.5 * (u @ u.T)


@pytest.mark.parametrize("max_mb", [512.0, 1e-4])  # the whole matrix, and columns on demand
def test_cosine_similarity_normalises_gradient_sized_rows(max_mb):
    from kdprune.selection.joint.base import Similarity
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 12)) * np.logspace(-12, 0, 30)[:, None]  # norms from ~1e-12 to ~1
    sim = Similarity(x.astype(np.float32), "cosine", max_mb)
    got = np.concatenate([sim.columns(list(range(j, min(j + 7, 30)))) for j in range(0, 30, 7)], axis=1)
    np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-6)  # sklearn alone: about 0.5 below norm ~1e-6
    np.testing.assert_allclose(got, cosine_s(x.astype(np.float32)), atol=2e-6)
    zero = Similarity(np.vstack([np.zeros((1, 12)), x[:3]]).astype(np.float32), "cosine", max_mb)
    np.testing.assert_allclose(zero.columns([0])[:, 0], 0.5)  # a zero row has no direction: cosine 0
    np.testing.assert_array_equal(zero.diagonal()[:2], [0.5, 1.0])


def torch_last_layer_gradients(h, w, b, y, batch_mean):
    """Per-example gradients of the cross-entropy w.r.t. (bias, weight) by autograd, one example at a time;
    ``batch_mean``: divided by the number of examples, as DeepCore's batch-mean loss gives them."""
    out = []
    for i in range(len(y)):
        wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
        bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
        z = torch.tensor(h[i:i + 1], dtype=torch.float64) @ wt.T + bt
        torch.nn.functional.cross_entropy(z, torch.tensor(y[i:i + 1])).backward()
        out.append(np.concatenate([bt.grad.numpy(), wt.grad.numpy().ravel()]) / (len(y) if batch_mean else 1))
    return np.asarray(out)


def greedy_by_objective(objective, n, k):
    """Add, k times, the element of largest objective increase (ties: lowest index)."""
    chosen = []
    for _ in range(k):
        gains = [objective(chosen + [j]) - objective(chosen) if j not in chosen else -np.inf for j in range(n)]
        chosen.append(int(np.argmax(gains)))
    return sorted(chosen)


def _gradient_case():
    rng = np.random.default_rng(3)
    n, c, d = 16, 3, 5
    h = rng.normal(size=(n, d))
    w, b = rng.normal(size=(c, d)), rng.normal(size=c)
    y = rng.integers(0, c, n)
    z = h @ w.T + b
    inputs = JointInputs(labels=y, num_classes=c, features=h.astype(np.float32), logits=z.astype(np.float32),
                         gradients=last_layer_gradients(h, z, y))
    return inputs, h, w, b, y


def test_facility_location_and_graph_cut_on_gradients_match_an_independent_computation():
    inputs, h, w, b, y = _gradient_case()
    g = torch_last_layer_gradients(h, w, b, y, batch_mean=True)  # DeepCore's scaling: cosine ignores it
    np.testing.assert_allclose(inputs.gradients, g * len(y), rtol=1e-4, atol=1e-5)
    s = cosine_s(g)
    n, k = len(y), budget(len(y), 0.25)
    fl = greedy_by_objective(lambda S: s[:, S].max(axis=1).sum() if S else 0.0, n, k)
    gc = greedy_by_objective(lambda S: s[:, S].sum() - s[np.ix_(S, S)].sum(), n, k)
    ids = np.arange(n) * 10
    for name, want in (("facility_location", fl), ("graph_cut", gc)):
        kept, _ = run_joint(name, ids, inputs, 0.25, options={"input": "gradients", "balance": False})
        np.testing.assert_array_equal(kept, ids[want])
    on_features, _ = run_joint("facility_location", ids, inputs, 0.25, options={"balance": False})
    fl_features = greedy_by_objective(lambda S: cosine_s(h)[:, S].max(axis=1).sum() if S else 0.0, n, k)
    np.testing.assert_array_equal(on_features, ids[fl_features])  # the default input is unchanged


def test_similarity_input_option_declares_what_it_reads():
    for name in ("facility_location", "graph_cut"):
        spec = JOINT.get(name)
        assert spec.inputs_for() == ("features",)
        assert spec.inputs_for(spec.resolve({"input": "gradients"})) == ("gradients",)
    inputs, *_ = _gradient_case()
    inputs.gradients = None
    with pytest.raises(ValueError, match="'graph_cut' needs gradients, which the inputs lack"):
        run_joint("graph_cut", np.arange(16), inputs, 0.25, options={"input": "gradients"})
    with pytest.raises(ValueError, match="facility_location.input: got 'logits', allowed: features, gradients"):
        JOINT.get("facility_location").resolve({"input": "logits"})
