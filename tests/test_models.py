"""Every registered architecture: shapes, gradients, seeded construction, published sizes."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kdprune.models import MODELS, build_model
from kdprune.train import seeded

DIGITS, MNIST, CIFAR = (1, 8, 8), (1, 28, 28), (3, 32, 32)
# Too slow on 2 CPU cores for a full forward+backward at 28x28/32x32: checked at 8x8 only,
# plus one batch-1 forward at 32x32 (test_big_models_cifar_forward).
BIG = {"resnet34", "resnet110", "wrn16_8", "wrn28_10", "resnet50_imagenet"}
# Published parameter counts (10 classes, 3 input channels).
PUBLISHED = {
    "resnet18": 11.17e6,  # He et al. 2016 / CIFAR stem, e.g. kuangliu/pytorch-cifar
    "resnet34": 21.28e6,
    "resnet20": 0.27e6,  # He et al. 2016, table 6
    "resnet32": 0.46e6,
    "resnet56": 0.85e6,
    "resnet110": 1.7e6,
    "wrn16_4": 2.7e6,  # Zagoruyko & Komodakis 2016, table 4
    "wrn16_8": 11.0e6,
    "wrn28_10": 36.5e6,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Batches of 1-2 tiny images: intra-op threads only add OpenMP barrier spinning, which on a
    loaded 2-core machine made this file ~8x slower (80 s vs 10 s CPU). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cases():
    for name in MODELS.names():
        for shape in (DIGITS,) if name in BIG else (DIGITS, MNIST, CIFAR):
            yield pytest.param(name, shape, 10, id=f"{name}-{'x'.join(map(str, shape))}")
    yield pytest.param("resnet20", CIFAR, 100, id="resnet20-3x32x32-100classes")


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _batch(shape, num_classes, n=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, *shape, generator=g), torch.randint(num_classes, (n,), generator=g)


@pytest.mark.parametrize("name,shape,num_classes", list(_cases()))
def test_forward_backward(name, shape, num_classes):
    with seeded(0):
        model = build_model(name, shape[0], num_classes, shape[1])
    assert isinstance(model.head, nn.Linear) and model.head.out_features == num_classes
    x, y = _batch(shape, num_classes)
    for train_mode in (True, False):
        model.train(train_mode)
        model.zero_grad(set_to_none=True)
        logits = model(x)
        assert logits.shape == (2, num_classes) and torch.isfinite(logits).all()
        F.cross_entropy(logits, y).backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None, f"{name}: no gradient for {pname}"
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
        assert any(p.grad.abs().sum() > 0 for p in model.parameters())
        with torch.no_grad():
            feats = model.features(x)
            assert feats.shape == (2, model.head.in_features)
            # features really is the penultimate layer: head(features(x)) == forward(x)
            torch.testing.assert_close(model.head(feats), logits.detach())


@pytest.mark.parametrize("name", sorted(BIG & set(MODELS.names())))
def test_big_models_cifar_forward(name):
    with seeded(0):
        model = build_model(name, 3, 10, 32).eval()
    with torch.no_grad():
        logits = model(_batch(CIFAR, 10, n=1)[0])
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODELS.names())
def test_seeded_construction_is_deterministic(name):
    with seeded(0):
        a = build_model(name, 3, 10, 32)
    with seeded(0):
        b = build_model(name, 3, 10, 32)
    with seeded(1):
        c = build_model(name, 3, 10, 32)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{name}: {k} differs under the same seed"
    assert any(not torch.equal(sa[k], sc[k]) for k in sa), f"{name}: seed has no effect"
    # no reseeding of the global RNG inside the builder: what follows a build depends on the caller's seed
    after = []
    with torch.random.fork_rng(devices=[]):
        for seed in (12345, 54321):
            torch.manual_seed(seed)
            build_model(name, 3, 10, 32)
            after.append(torch.rand(8))
    assert not torch.equal(*after), f"{name}: building reseeds the global RNG"


@pytest.mark.parametrize("name,expected", sorted(PUBLISHED.items()))
def test_parameter_count_matches_published(name, expected):
    n = _n_params(build_model(name, 3, 10, 32))
    assert abs(n - expected) / expected < 0.02, f"{name}: {n} parameters, published {expected:.0f}"


def test_exact_parameter_counts():
    # Regression guard on the architecture itself (option-B shortcuts, no bias in convs).
    assert _n_params(build_model("resnet18", 3, 10, 32)) == 11_173_962
    assert _n_params(build_model("resnet20", 3, 10, 32)) == 272_474
    assert _n_params(build_model("wrn28_10", 3, 10, 32)) == 36_479_194
    # conv 1->16 (144) + BN, conv 16->32 (4,608) + BN, FC 32*7*7->128 (200,704) + BN, head 128->10
    assert _n_params(build_model("pool_cnn", 1, 10, 28)) == 144 + 32 + 4_608 + 64 + 200_704 + 256 + 1_290


def test_pool_cnn_refuses_images_it_cannot_pool_twice():
    with pytest.raises(ValueError, match="too small"):
        build_model("pool_cnn", 1, 10, 3)


def test_wrn_dropout_is_off_by_default_and_optional():
    x, _ = _batch(DIGITS, 10)
    with seeded(0):
        plain = build_model("wrn28_2", 1, 10, 8).train()
        dropped = build_model("wrn28_2", 1, 10, 8, dropout=0.3).train()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), plain(x))
        assert not torch.allclose(dropped(x), dropped(x))
        dropped.eval()
        torch.testing.assert_close(dropped(x), dropped(x))


def test_resnet18_has_cifar_stem():
    model = build_model("resnet18", 3, 10, 32)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and stem.out_channels == 64


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(KeyError, match="valid names:.*resnet18.*wrn28_10"):
        build_model("resnet1000", 3, 10, 32)
