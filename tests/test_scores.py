"""Every pruning score checked against an independent computation on a small, hand-built case."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdprune  # noqa: F401
from kdprune.models import build_model
from kdprune.scores import SCORES, ScoreContext
from kdprune.scores.grand import grand_loop, grand_norms
from kdprune.scores.kmeans import kmeans
from kdprune.train import seeded

NEW = ["el2n_proxy", "grand", "grand_last_layer", "aum", "aum_prob", "entropy", "least_confidence", "margin",
       "dynamic_uncertainty", "prototypes", "prototypes_supervised", "moderate_ds", "memorization"]


def _ctx(labels, num_classes, **fields):
    labels = np.asarray(labels, dtype=np.int64)
    return ScoreContext(ids=np.arange(len(labels), dtype=np.int64), labels=labels, num_classes=num_classes, **fields)


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


# ---------------------------------------------------------------- registry

def test_all_new_scores_are_registered_with_their_keep_direction():
    names = SCORES.names()
    for n in NEW + ["el2n", "forgetting", "random"]:
        assert n in names
    keep = {n: SCORES.get(n).keep for n in NEW}
    assert keep["aum"] == keep["aum_prob"] == keep["margin"] == "low"
    assert all(keep[n] == "high" for n in NEW if n not in ("aum", "aum_prob", "margin"))
    for n in NEW:  # every score states a definition and a variant
        assert SCORES.get(n).definition and SCORES.get(n).variant


@pytest.mark.parametrize("name, field", [
    ("el2n_proxy", "proxy_logits"), ("grand", "proxy_models"), ("grand_last_layer", "inputs"),
    ("aum", "dynamics"), ("dynamic_uncertainty", "dynamics"), ("prototypes", "embeddings"),
    ("prototypes_supervised", "embeddings"), ("moderate_ds", "embeddings"), ("memorization", "memo_correct"),
])
def test_missing_context_field_is_a_clear_error(name, field):
    fields = {"proxy_logits": [np.zeros((3, 2))], "proxy_models": [torch.nn.Linear(2, 2)],
              "inputs": torch.zeros(3, 2), "dynamics": np.zeros((2, 3, 2)), "embeddings": np.zeros((3, 2)),
              "memo_masks": np.zeros((2, 3), bool), "memo_correct": np.zeros((2, 3), bool)}
    fields[field] = None
    with pytest.raises(ValueError, match=f"score '{name}' needs {field}, which the context lacks"):
        SCORES.get(name)(_ctx([0, 1, 0], 2, **fields))


def test_uncertainty_scores_need_final_logits_or_dynamics():
    for n in ("entropy", "least_confidence", "margin"):
        with pytest.raises(ValueError, match="final_logits or dynamics"):
            SCORES.get(n)(_ctx([0, 1], 2))


# ---------------------------------------------------------------- dynamics-based scores

def test_el2n_proxy_averages_the_per_proxy_error_norms():
    # 2 proxies' logits at the read epoch, 2 examples, 2 classes; labels (0, 1)
    a = np.array([[math.log(3.0), 0.0], [0.0, 0.0]])
    b = np.array([[0.0, 0.0], [0.0, math.log(3.0)]])
    ctx = _ctx([0, 1], 2, proxy_logits=[a, b])
    # proxy a: ex0 p=(3/4,1/4) -> sqrt(2)/4; ex1 p=(1/2,1/2) -> sqrt(2)/2
    # proxy b: ex0 p=(1/2,1/2) -> sqrt(2)/2; ex1 p=(1/4,3/4) -> sqrt(2)/4
    s2 = math.sqrt(2.0)
    np.testing.assert_allclose(SCORES.get("el2n_proxy")(ctx), [(s2 / 4 + s2 / 2) / 2, (s2 / 2 + s2 / 4) / 2], rtol=1e-12)
    # one proxy reproduces the single-run el2n on the same logits
    single = _ctx([0, 1], 2, proxy_logits=[a], dynamics=a[None])
    np.testing.assert_allclose(SCORES.get("el2n_proxy")(single), SCORES.get("el2n")(single, epoch=1))
    with pytest.raises(ValueError, match="shape"):
        SCORES.get("el2n_proxy")(_ctx([0, 1, 1], 2, proxy_logits=[a]))


def test_a_proxy_stopped_early_follows_the_full_runs_schedule_and_weights():
    """The EL2N recipe: a proxy is the first epochs of a run on the full schedule, so up to where it
    stops it is that run, step for step (same LR curve, same weights), not a short run of its own."""
    from kdprune.train import DeviceData, TrainConfig, train

    rng = np.random.default_rng(0)
    data = DeviceData.from_numpy(rng.integers(0, 255, (64, 1, 8, 8), dtype=np.uint8), rng.integers(0, 10, 64),
                                 [0.5], [0.25], torch.device("cpu"))
    cfg = dict(epochs=6, batch_size=16, lr=0.1, warmup_epochs=1.0)
    runs = {}
    for name, extra in (("full", {}), ("proxy", {"stop_after": 2}), ("short", {"epochs": 2})):
        with seeded(0):
            model = build_model("small_cnn", 1, 10, 8)
        res = train(model, data, TrainConfig(**{**cfg, **extra}))
        runs[name] = res
    full, proxy, short = runs["full"], runs["proxy"], runs["short"]
    assert len(proxy.history) == 2 and len(full.history) == 6
    assert [h["lr"] for h in proxy.history] == [h["lr"] for h in full.history[:2]]  # the full run's LR curve
    assert [h["lr"] for h in short.history] != [h["lr"] for h in full.history[:2]]  # not a squeezed cosine
    assert [h["train_loss"] for h in proxy.history] == [h["train_loss"] for h in full.history[:2]]


def test_aum_logit_and_prob_variants_by_hand():
    # 3 epochs, 2 examples, 3 classes; example 0 label 0, example 1 label 2
    dyn = np.array([
        [[2.0, 1.0, 0.0], [3.0, 0.0, 1.0]],
        [[1.0, 3.0, 0.0], [0.0, 0.0, 2.0]],
        [[4.0, 0.0, 1.0], [1.0, 5.0, 1.0]],
    ])
    ctx = _ctx([0, 2], 3, dynamics=dyn)
    # logit margins: ex0: 2-1=1, 1-3=-2, 4-1=3 -> mean 2/3;  ex1: 1-3=-2, 2-0=2, 1-5=-4 -> mean -4/3
    np.testing.assert_allclose(SCORES.get("aum")(ctx), [2 / 3, -4 / 3], rtol=1e-12)
    np.testing.assert_allclose(SCORES.get("aum")(ctx, variant="logit"), [2 / 3, -4 / 3], rtol=1e-12)
    want = [0.0, 0.0]
    for e in range(3):
        for n, y in enumerate([0, 2]):
            p = _softmax(dyn[e, n])
            want[n] += p[y] - max(v for c, v in enumerate(p) if c != y)  # summed, not averaged
    np.testing.assert_allclose(SCORES.get("aum")(ctx, variant="prob"), want, rtol=1e-12)
    np.testing.assert_allclose(SCORES.get("aum_prob")(ctx), want, rtol=1e-12)  # the CCS code's AUM, by name
    with pytest.raises(ValueError, match="variant"):
        SCORES.get("aum")(ctx, variant="probs")


def test_entropy_least_confidence_and_margin_by_hand():
    logits = np.array([[0.0, 0.0, 0.0], [math.log(6.0), math.log(3.0), 0.0]])  # p = (1/3,1/3,1/3), (.6,.3,.1)
    ctx = _ctx([0, 1], 3, final_logits=logits)
    h1 = math.log(3.0)
    h2 = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1))
    np.testing.assert_allclose(SCORES.get("entropy")(ctx), [h1, h2], rtol=1e-12)
    np.testing.assert_allclose(SCORES.get("least_confidence")(ctx), [2 / 3, 0.4], rtol=1e-12)
    np.testing.assert_allclose(SCORES.get("margin")(ctx), [0.0, 0.3], atol=1e-12)
    # without final_logits they read the last epoch of the dynamics
    dyn = np.stack([np.zeros_like(logits) + [[5.0, 0, 0]], logits])
    np.testing.assert_allclose(SCORES.get("margin")(_ctx([0, 1], 3, dynamics=dyn)), [0.0, 0.3], atol=1e-12)
    # final_logits win over dynamics when both are given
    both = _ctx([0, 1], 3, dynamics=dyn[:1], final_logits=logits)
    np.testing.assert_allclose(SCORES.get("entropy")(both), [h1, h2], rtol=1e-12)


def test_dynamic_uncertainty_sliding_window_by_hand():
    # target-class probability chosen directly: logits (log p, log(1-p)) with label 0
    traj = np.array([[0.1, 0.5, 0.3, 0.9], [0.5, 0.5, 0.5, 0.5]])  # [N, E]
    dyn = np.stack([np.log(traj.T), np.log(1 - traj.T)], axis=2)  # [E, N, 2]
    ctx = _ctx([0, 0], 2, dynamics=dyn)

    def pstd(v):
        m = sum(v) / len(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / len(v))

    t = traj[0].tolist()
    want2 = (pstd(t[0:2]) + pstd(t[1:3]) + pstd(t[2:4])) / 3  # 0.2, 0.1, 0.3 -> 0.2
    assert want2 == pytest.approx(0.2)
    np.testing.assert_allclose(SCORES.get("dynamic_uncertainty")(ctx, window=2), [want2, 0.0], atol=1e-12)
    want3 = (pstd(t[0:3]) + pstd(t[1:4])) / 2
    np.testing.assert_allclose(SCORES.get("dynamic_uncertainty")(ctx, window=3), [want3, 0.0], atol=1e-12)
    # E < window: the whole run is one window
    np.testing.assert_allclose(SCORES.get("dynamic_uncertainty")(ctx), [pstd(t), 0.0], atol=1e-12)
    # ddof=1: sample std
    s1 = np.std(t, ddof=1)
    np.testing.assert_allclose(SCORES.get("dynamic_uncertainty")(ctx, window=10, ddof=1)[0], s1, rtol=1e-12)


# ---------------------------------------------------------------- GraNd

def _tiny_models_and_data(n=10, seeds=(0, 1)):
    models = []
    for s in seeds:
        with seeded(s):
            models.append(build_model("small_cnn", 1, 10, 8))
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return models, x, y


def _reference_grand(models, x, y, head_only):
    """Independent per-sample loop: eval mode, one autograd.grad per example, norm over the chosen params."""
    out = torch.zeros(len(x), dtype=torch.float64)
    for m in models:
        was = m.training
        m.eval()
        params = list(m.head.parameters()) if head_only else [p for p in m.parameters()]
        for i in range(len(x)):
            loss = F.cross_entropy(m(x[i : i + 1]), y[i : i + 1])
            g = torch.autograd.grad(loss, params)
            out[i] += math.sqrt(sum(float((t.double() ** 2).sum()) for t in g))
        m.train(was)
    return (out / len(models)).numpy()


def test_grand_batched_equals_a_per_sample_autograd_loop():
    models, x, y = _tiny_models_and_data()
    want = _reference_grand(models, x, y, head_only=False)
    ctx = _ctx(y.numpy(), 10, proxy_models=models, inputs=x)
    got = SCORES.get("grand")(ctx, batch_size=4)  # batches of 4, 4, 2
    np.testing.assert_allclose(got, want, rtol=1e-4)
    np.testing.assert_allclose(grand_loop(models, x, y).numpy(), want, rtol=1e-4)
    # scores of one model differ from the two-model average (the average is really taken)
    one = grand_norms(models[:1], x, y, batch_size=10).numpy()
    np.testing.assert_allclose(one, _reference_grand(models[:1], x, y, head_only=False), rtol=1e-4)
    assert not np.allclose(one, want, rtol=1e-3)
    # models are left as they were: train mode, parameters untouched
    assert all(m.training for m in models)
    assert all(p.grad is None for m in models for p in m.parameters())


def test_grand_last_layer_closed_form_equals_a_per_sample_autograd_loop():
    models, x, y = _tiny_models_and_data()
    want = _reference_grand(models, x, y, head_only=True)
    got = SCORES.get("grand_last_layer")(_ctx(y.numpy(), 10, proxy_models=models, inputs=x), batch_size=3)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    np.testing.assert_allclose(grand_loop(models, x, y, last_layer=True).numpy(), want, rtol=1e-4)
    full = _reference_grand(models, x, y, head_only=False)
    assert np.all(got < full)  # the head is a strict subset of the parameters


@pytest.mark.parametrize("arch,size", [("small_cnn", 8), ("resnet20", 16), ("wrn16_4", 16), ("resnet18", 16)])
def test_grand_per_layer_closed_forms_equal_per_sample_gradients(arch, size):
    """The one-backward-pass per-layer norms (conv both ways: per-example weight gradient and Gram
    matrices; BatchNorm on non-trivial running statistics; linear head) against vmap(grad)."""
    from kdprune.scores.grand import _eval_copy, _full_norms, _layer_norms

    with seeded(5):
        m = build_model(arch, 3, 10, size)
    gen = torch.Generator().manual_seed(9)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.rand(mod.num_features, generator=gen) - 0.5)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
    x = torch.randn(5, 3, size, size, generator=gen)
    y = torch.randint(0, 10, (5,), generator=gen)
    e = _eval_copy(m, torch.device("cpu"))
    got = _layer_norms(e, x, y)
    assert got is not None, f"{arch}: every layer should have a closed form"
    torch.testing.assert_close(got, _full_norms(e, x, y), rtol=1e-4, atol=1e-6)


def test_grand_falls_back_to_per_sample_gradients_for_other_layers():
    from kdprune.scores.grand import _layer_norms

    class WithLayerNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.norm = torch.nn.LayerNorm([4, 8, 8])
            self.head = torch.nn.Linear(4, 10)

        def forward(self, x):
            return self.head(self.norm(self.conv(x)).mean((2, 3)))

    with seeded(2):
        models = [WithLayerNorm()]
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(6, 1, 8, 8, generator=gen), torch.randint(0, 10, (6,), generator=gen)
    assert _layer_norms(models[0].eval(), x, y) is None
    np.testing.assert_allclose(grand_norms(models, x, y, batch_size=4).numpy(),
                               _reference_grand(models, x, y, head_only=False), rtol=1e-4)


def test_grand_does_not_depend_on_batch_composition_and_applies_transform():
    models, x, y = _tiny_models_and_data(n=6, seeds=(3,))
    a = grand_norms(models, x, y, batch_size=6)
    b = grand_norms(models, x.flip(0), y.flip(0), batch_size=4).flip(0)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # raw inputs + per-batch transform == pre-normalised inputs
    raw = x * 2.0 + 1.0
    c = grand_norms(models, raw, y, batch_size=4, transform=lambda t: (t - 1.0) / 2.0)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- embeddings: prototypes, moderate-DS

def _blobs():
    """Three tight, well separated blobs in 2-D around known centres, 20 points each."""
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0.0], [-10.0, 0.0], [0.0, 15.0]])
    offsets = rng.normal(size=(60, 2)) * 0.5
    labels = np.repeat(np.arange(3), 20)
    offsets -= np.stack([offsets[labels == c].mean(0) for c in range(3)])[labels]  # each blob's mean = its centre
    return centres[labels] + offsets, labels, centres, offsets


def test_kmeans_finds_separated_blobs_deterministically():
    x, labels, centres, _ = _blobs()
    c1, a1 = kmeans(x, 3, seed=5)
    c2, a2 = kmeans(x, 3, seed=5)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(a1, a2)
    order = [int(np.argmin(np.linalg.norm(c1 - c, axis=1))) for c in centres]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(c1[order], centres, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(order)[labels], a1)


def test_prototypes_distance_to_nearest_centroid_on_known_geometry():
    x, labels, centres, offsets = _blobs()
    want = np.linalg.norm(offsets, axis=1)  # each point's distance to its blob centre
    ctx = _ctx(labels, 3, embeddings=x, seed=1)
    np.testing.assert_allclose(SCORES.get("prototypes")(ctx, normalize=False), want, atol=1e-9)
    # labels are not used: shuffling them changes nothing
    ctx2 = _ctx(np.random.default_rng(1).permutation(labels), 3, embeddings=x, seed=1)
    np.testing.assert_allclose(SCORES.get("prototypes")(ctx2, normalize=False), want, atol=1e-9)
    # normalised (default): each point's distance to the nearest k-means centroid of the unit vectors
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cu = np.stack([u[labels == c].mean(0) for c in range(3)])
    want_u = np.linalg.norm(u - cu[labels], axis=1)
    np.testing.assert_allclose(SCORES.get("prototypes")(ctx), want_u, atol=1e-9)


def test_prototypes_supervised_is_distance_to_own_class_mean():
    x, labels, centres, offsets = _blobs()
    # swap the labels of blobs 0 and 1: the prototype follows the label, not the cluster
    lab = np.where(labels == 0, 1, np.where(labels == 1, 0, labels))
    ctx = _ctx(lab, 3, embeddings=x)
    np.testing.assert_allclose(SCORES.get("prototypes_supervised")(ctx, normalize=False),
                               np.linalg.norm(offsets, axis=1), atol=1e-9)
    # one example mislabelled: its distance is to the other class's mean
    bad = labels.copy()
    bad[0] = 1
    mean1 = x[bad == 1].mean(0)
    got = SCORES.get("prototypes_supervised")(_ctx(bad, 3, embeddings=x), normalize=False)
    assert got[0] == pytest.approx(np.linalg.norm(x[0] - mean1))
    assert got[0] > 15.0 and got[1:20].max() < 3.0
    # two sub-clusters per class: distance to the nearer sub-centre
    two = np.concatenate([x[labels == 0], x[labels == 1]])
    got2 = SCORES.get("prototypes_supervised")(_ctx(np.zeros(40, np.int64), 1, embeddings=two),
                                               clusters_per_class=2, normalize=False)
    np.testing.assert_allclose(got2, np.linalg.norm(offsets[:40], axis=1), atol=1e-9)


def test_moderate_ds_scores_closeness_to_the_median_distance():
    # class 0: points on a line at distances 1, 2, 3, 10 (and the median point itself) from the class median
    f0 = np.array([[0.0], [1.0], [-2.0], [3.0], [-10.0]])  # coordinate-wise median = 0
    f1 = np.array([[100.0], [101.0], [104.0]])  # median 101 -> distances 1, 0, 3
    emb = np.concatenate([f0, f1])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    d = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 1.0, 0.0, 3.0])
    # per-class median distance: class 0 -> 2, class 1 -> 1
    want = -np.abs(d - np.array([2.0] * 5 + [1.0] * 3))
    got = SCORES.get("moderate_ds")(_ctx(labels, 2, embeddings=emb), variant="class")
    np.testing.assert_allclose(got, want, atol=1e-12)
    # the median is coordinate-wise: 2-D class whose per-axis medians are (1, 5)
    emb2 = np.array([[0.0, 9.0], [1.0, 5.0], [7.0, 0.0]])
    dist2 = np.linalg.norm(emb2 - [1.0, 5.0], axis=1)
    got2 = SCORES.get("moderate_ds")(_ctx([0, 0, 0], 1, embeddings=emb2), variant="class")
    np.testing.assert_allclose(got2, -np.abs(dist2 - np.median(dist2)), atol=1e-12)
    # the default, global_rank (published code): keep the middle band of all examples' sorted distances
    g = SCORES.get("moderate_ds")(_ctx(labels, 2, embeddings=emb))
    np.testing.assert_array_equal(g, SCORES.get("moderate_ds")(_ctx(labels, 2, embeddings=emb), variant="global_rank"))
    order = np.argsort(d, kind="stable")  # ranks 0..7, centre 3.5
    rank = np.empty(8)
    rank[order] = np.arange(8)
    np.testing.assert_allclose(g, -np.abs(rank - 3.5))
    keep4 = np.sort(np.argsort(-g, kind="stable")[:4])
    np.testing.assert_array_equal(keep4, np.sort(order[2:6]))  # the code's band: sorted[2:6] for rate 0.5


# ---------------------------------------------------------------- memorization

def test_memorization_matches_brute_force_on_a_toy_mask():
    rng = np.random.default_rng(0)
    m, n = 7, 9
    masks = rng.random((m, n)) < 0.6
    correct = rng.random((m, n)) < 0.7
    masks[:, 0] = True  # never held out -> 0
    masks[:, 1] = False  # never in -> 0
    masks[:2, 2], masks[2:4, 2] = True, False  # example 2 is in and out of some subsets...
    correct[:, 2] = masks[:, 2]  # ...and correct exactly when trained on -> memorisation 1
    want = []
    for j in range(n):
        ins = [bool(correct[i, j]) for i in range(m) if masks[i, j]]
        outs = [bool(correct[i, j]) for i in range(m) if not masks[i, j]]
        want.append(0.0 if not ins or not outs else sum(ins) / len(ins) - sum(outs) / len(outs))
    got = SCORES.get("memorization")(_ctx(np.zeros(n, np.int64), 2, memo_masks=masks, memo_correct=correct))
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got[0] == 0.0 and got[1] == 0.0 and got[2] == 1.0
    with pytest.raises(ValueError, match="memo_masks"):
        SCORES.get("memorization")(_ctx(np.zeros(n, np.int64), 2, memo_masks=masks[:, :5], memo_correct=correct))


# ---------------------------------------------------------------- registrations
def test_every_function_option_is_declared_and_reachable_from_params():
    """A registration declares every keyword option its function implements, with the function's defaults;
    params reach each one (resolve) and an unknown one is refused naming the valid ones."""
    import inspect

    for name in SCORES.names():
        spec = SCORES.get(name)
        takes = list(inspect.signature(spec.fn).parameters)[1:]
        assert sorted(takes) == sorted(spec.fn_options(spec.resolve(None))), name
        assert spec.keep in ("high", "low", None) and spec.hard in ("high", "low", None)
        with pytest.raises(ValueError, match=f"{name}.nope: unknown option; valid options: "):
            spec.resolve({"nope": 1})
    assert SCORES.get("moderate_ds").resolve({"variant": "class"}) == {"variant": "class"}
    assert SCORES.get("dynamic_uncertainty").resolve({"ddof": 1}) == {"window": 10, "ddof": 1}
    assert SCORES.get("grand").resolve(None) == {"batch_size": 128}
    assert SCORES.get("prototypes").resolve({"k": 3, "normalize": False})["k"] == 3
    assert SCORES.get("el2n_proxy").fn_options(SCORES.get("el2n_proxy").resolve({"epoch": 2})) == {}  # an input option
    assert [n for n in SCORES.names() if SCORES.get(n).seeded] == ["random"]
    assert SCORES.get("moderate_ds").keep == "high" and SCORES.get("moderate_ds").hard == "low"


def test_a_registration_must_declare_the_functions_options():
    from kdprune.options import Option
    from kdprune.scores import register_score

    def undeclared(ctx, width: int = 3):
        return ctx.labels * 0.0

    with pytest.raises(ValueError, match=r"options \['width'\] of the function are not declared"):
        register_score("t_undeclared", keep="high", hard="high", variant="t")(undeclared)
    with pytest.raises(ValueError, match="defaults to 4 in the registration but 3 in the function"):
        register_score("t_default", keep="high", hard="high", variant="t",
                       options={"width": Option(int, 4)})(undeclared)
    with pytest.raises(ValueError, match="reads unknown context fields"):
        register_score("t_needs", keep="high", hard="high", variant="t", needs=("logitz",),
                       options={"width": Option(int, 3)})(undeclared)
    assert "t_undeclared" not in SCORES and "t_default" not in SCORES and "t_needs" not in SCORES


def reference_ccs_forgetting(correct: np.ndarray) -> np.ndarray:
    """The CCS code's forgetting count (``generate_importance_score.py``), written out from reading it:
    ``last_correctness`` starts at 0; each epoch adds ``last == 1 and now == 0``, then ``last = now``."""
    last = np.zeros(correct.shape[1], dtype=np.int32)
    forgetting = np.zeros(correct.shape[1])
    for now in correct.astype(np.int32):
        forgetting += np.logical_and(last == 1, now == 0)
        last = now
    return forgetting


def test_forgetting_never_learned_scores_epochs_by_default_and_zero_as_the_ccs_code():
    rng = np.random.default_rng(0)
    e, n, c = 9, 200, 4
    labels = rng.integers(0, c, n)
    dyn = rng.normal(size=(e, n, c)).astype(np.float32)
    dyn[:, :40, :] = 0.0
    dyn[:, np.arange(40), (labels[:40] + 1) % c] = 5.0  # the first 40 are never classified correctly
    ctx = ScoreContext(ids=np.arange(n), labels=labels, num_classes=c, dynamics=dyn)
    correct = dyn.argmax(axis=2) == labels[None, :]
    spec = SCORES.get("forgetting")
    assert spec.resolve(None) == {"never_learned": "epochs"}
    default = spec(ctx, **spec.fn_options(spec.resolve(None)))
    ccs = spec(ctx, **spec.fn_options(spec.resolve({"never_learned": "zero"})))
    learned = correct.any(axis=0)
    assert not learned[:40].any() and learned[40:].sum() > 100
    np.testing.assert_array_equal(default[~learned], np.full((~learned).sum(), float(e)))
    np.testing.assert_array_equal(ccs, reference_ccs_forgetting(correct))  # the CCS code's counts, 0 included
    np.testing.assert_array_equal(ccs[~learned], 0.0)
    np.testing.assert_array_equal(default[learned], ccs[learned])
    with pytest.raises(ValueError, match="forgetting.never_learned: got 'never', allowed: epochs, zero"):
        spec.resolve({"never_learned": "never"})
