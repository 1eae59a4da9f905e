"""Dataset loaders read small samples written here in each dataset's real on-disk format."""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from kdprune.data import DATASETS, DatasetFormatError, DatasetUnavailable
from kdprune.data.base import DOWNLOAD_ENV

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    monkeypatch.delenv(DOWNLOAD_ENV, raising=False)


def test_all_loaders_are_registered():
    for name in ("fashion_mnist", "mnist", "cifar10", "cifar100", "svhn", "imagefolder", "digits"):
        assert name in DATASETS


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

def _idx_bytes(arr: np.ndarray) -> bytes:
    # magic: two zero bytes, type 0x08 (ubyte), number of dims; then big-endian uint32 dims
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _idx_bytes(arr)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _idx_sample(seed: int):
    rng = np.random.default_rng(seed)
    train_x = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    train_x[2, 5, 7] = 201
    return train_x, np.array([0, 9, 3, 3, 1, 5, 7]), test_x, np.array([9, 0, 4])


def _write_idx_set(d: Path, sample, gz: bool = True) -> None:
    train_x, train_y, test_x, test_y = sample
    _write_idx(d / "train-images-idx3-ubyte", train_x, gz)
    _write_idx(d / "train-labels-idx1-ubyte", train_y, gz)
    _write_idx(d / "t10k-images-idx3-ubyte", test_x, gz)
    _write_idx(d / "t10k-labels-idx1-ubyte", test_y, gz)


def _check_idx(raw, sample, classes):
    train_x, train_y, test_x, test_y = sample
    assert raw.train_x.shape == (7, 1, 28, 28) and raw.train_x.dtype == np.uint8
    assert raw.test_x.shape == (3, 1, 28, 28) and raw.test_x.dtype == np.uint8
    assert raw.train_y.dtype == np.int64 and raw.test_y.dtype == np.int64
    assert raw.train_x[2, 0, 5, 7] == 201
    np.testing.assert_array_equal(raw.train_x[4, 0], train_x[4])
    np.testing.assert_array_equal(raw.test_x[2, 0], test_x[2])
    assert raw.train_y.tolist() == [0, 9, 3, 3, 1, 5, 7]
    assert raw.test_y.tolist() == [9, 0, 4]
    assert raw.classes == classes


def test_fashion_mnist_reads_gzipped_idx_files_in_root(tmp_path):
    sample = _idx_sample(0)
    _write_idx_set(tmp_path, sample)
    raw = DATASETS.get("fashion_mnist")(root=str(tmp_path))
    _check_idx(raw, sample, FASHION_CLASSES)
    assert str(tmp_path) in raw.source and "train-images-idx3-ubyte.gz" in raw.source


def test_fashion_mnist_reads_torchvision_layout(tmp_path):
    sample = _idx_sample(1)
    _write_idx_set(tmp_path / "FashionMNIST" / "raw", sample, gz=False)
    raw = DATASETS.get("fashion_mnist")(root=str(tmp_path))
    _check_idx(raw, sample, FASHION_CLASSES)


def test_mnist_reads_torchvision_layout(tmp_path):
    sample = _idx_sample(2)
    _write_idx_set(tmp_path / "MNIST" / "raw", sample)
    raw = DATASETS.get("mnist")(root=str(tmp_path))
    _check_idx(raw, sample, [str(c) for c in range(10)])
    assert "MNIST" in raw.source


def test_idx_with_wrong_magic_is_a_clear_error(tmp_path):
    sample = _idx_sample(3)
    _write_idx_set(tmp_path, sample)
    # a label file where the image file should be: magic 0x801 instead of 0x803
    _write_idx(tmp_path / "train-images-idx3-ubyte", sample[1])
    with pytest.raises(DatasetFormatError, match=r"train-images-idx3-ubyte\.gz.*magic number 0x00000801, expected 0x00000803"):
        DATASETS.get("mnist")(root=str(tmp_path))


def test_truncated_idx_is_a_clear_error(tmp_path):
    sample = _idx_sample(4)
    _write_idx_set(tmp_path, sample, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DatasetFormatError, match=r"t10k-images-idx3-ubyte: header declares shape \[3, 28, 28\]"):
        DATASETS.get("mnist")(root=str(tmp_path))


def test_idx_label_count_must_match_images(tmp_path):
    train_x, train_y, test_x, test_y = _idx_sample(5)
    _write_idx_set(tmp_path, (train_x, train_y[:-1], test_x, test_y))
    with pytest.raises(DatasetFormatError, match="7 images but .* 6 labels"):
        DATASETS.get("fashion_mnist")(root=str(tmp_path))


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetUnavailable) as e:
        DATASETS.get("fashion_mnist")(root=str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "torchvision.datasets.FashionMNIST(" in msg and "download=True" in msg
    assert str(tmp_path / "nowhere" / "FashionMNIST" / "raw") in msg


def test_missing_mnist_does_not_download_without_opt_in(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []
    monkeypatch.setattr(torchvision.datasets, "MNIST", lambda *a, **k: calls.append((a, k)))
    with pytest.raises(DatasetUnavailable, match=f"torchvision.datasets.MNIST.*{DOWNLOAD_ENV}=1"):
        DATASETS.get("mnist")(root=str(tmp_path))
    with pytest.raises(DatasetUnavailable, match="data.root is not set"):
        DATASETS.get("mnist")()
    assert calls == []


def test_mnist_downloads_with_torchvision_only_when_allowed(tmp_path, monkeypatch):
    import torchvision.datasets

    sample = _idx_sample(6)
    calls = []

    def fake_mnist(root, download=False, **kw):  # stands in for the network: writes torchvision's layout
        calls.append((root, download))
        _write_idx_set(Path(root) / "MNIST" / "raw", sample, gz=False)

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    monkeypatch.setenv(DOWNLOAD_ENV, "1")
    raw = DATASETS.get("mnist")(root=str(tmp_path))
    assert calls == [(str(tmp_path), True)]
    _check_idx(raw, sample, [str(c) for c in range(10)])
    DATASETS.get("mnist")(root=str(tmp_path))  # present now: no second download
    assert len(calls) == 1


def test_failed_download_is_dataset_unavailable(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(root, download=False, **kw):
        raise RuntimeError("Error downloading train_32x32.mat: no network")

    monkeypatch.setattr(torchvision.datasets, "SVHN", offline)
    monkeypatch.setenv(DOWNLOAD_ENV, "1")
    with pytest.raises(DatasetUnavailable, match="torchvision.datasets.SVHN .*failed: RuntimeError: .*no network"):
        DATASETS.get("svhn")(root=str(tmp_path))


@pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_from_debian_package():
    raw = DATASETS.get("fashion_mnist")()  # data.root null -> /usr/share/datasets/fashion-mnist
    assert raw.train_x.shape == (60000, 1, 28, 28) and raw.test_x.shape == (10000, 1, 28, 28)
    assert raw.train_x.dtype == np.uint8 and raw.train_y.dtype == np.int64
    assert raw.train_y.min() == 0 and raw.train_y.max() == 9
    assert np.bincount(raw.train_y).tolist() == [6000] * 10
    assert np.bincount(raw.test_y).tolist() == [1000] * 10
    assert raw.classes == FASHION_CLASSES
    assert 0 < raw.train_x.mean() < 255 and raw.train_x.max() == 255
    assert str(FASHION_DIR) in raw.source


# ---------------------------------------------------------------- CIFAR

def _cifar_image(r: int, g: int, b: int, hot: int) -> np.ndarray:
    """One row of a CIFAR batch built from its definition: 1024 red, 1024 green, 1024 blue values."""
    red = np.full(1024, r, np.uint8)
    red[hot] = 255  # plane index = row * 32 + col
    return np.concatenate([red, np.full(1024, g, np.uint8), np.full(1024, b, np.uint8)])


def _dump(path: Path, obj: dict, py2_style: bool = False) -> None:
    if py2_style:  # protocol 2 with NumPy 1.x module names, like the official Python 2 files
        data = pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"numpy.core.multiarray" in data
        path.write_bytes(data)
    else:
        path.write_bytes(pickle.dumps(obj))


def test_cifar10_reads_official_python_batches(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(d / "batches.meta", {b"num_cases_per_batch": 2, b"label_names": names, b"num_vis": 3072})
    for i in range(1, 6):
        data = np.stack([_cifar_image(10 * i, 20 * i, 30 * i, hot=1), _cifar_image(i, i, i, hot=32 + 2)])
        _dump(d / f"data_batch_{i}", {b"batch_label": f"training batch {i} of 5".encode(), b"labels": [i, 9 - i],
                                      b"data": data, b"filenames": [b"a.png", b"b.png"]}, py2_style=(i == 1))
    test = np.stack([_cifar_image(7, 8, 9, hot=1023)] * 3)
    _dump(d / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 1, 4],
                             b"data": test, b"filenames": [b"x"] * 3})
    raw = DATASETS.get("cifar10")(root=str(tmp_path))
    assert raw.train_x.shape == (10, 3, 32, 32) and raw.train_x.dtype == np.uint8
    assert raw.test_x.shape == (3, 3, 32, 32)
    assert raw.train_y.dtype == np.int64
    assert raw.train_y.tolist() == [1, 8, 2, 7, 3, 6, 4, 5, 5, 4]  # data_batch_1 first
    assert raw.test_y.tolist() == [3, 1, 4]
    img = raw.train_x[2]  # data_batch_2, first image: R=20, G=40, B=60, red (0,1)=255
    assert img[0, 0, 1] == 255 and img[0, 0, 0] == 20 and img[0, 31, 31] == 20
    assert (img[1] == 40).all() and (img[2] == 60).all()
    assert raw.train_x[1, 0, 1, 2] == 255 and raw.train_x[1, 0, 0, 1] == 1  # hot = row 1, col 2
    assert raw.test_x[0, 0, 31, 31] == 255 and raw.test_x[0, 1, 31, 31] == 8
    assert raw.classes == [n.decode() for n in names]


def test_cifar100_reads_fine_labels(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    fine = [f"fine{i:02d}".encode() for i in range(100)]
    _dump(d / "meta", {b"fine_label_names": fine, b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})
    train = np.stack([_cifar_image(1, 2, 3, hot=0), _cifar_image(4, 5, 6, hot=5), _cifar_image(7, 8, 9, hot=64)])
    _dump(d / "train", {b"filenames": [b"f"] * 3, b"batch_label": b"training batch 1 of 1",
                        b"fine_labels": [99, 0, 42], b"coarse_labels": [19, 4, 7], b"data": train})
    _dump(d / "test", {b"filenames": [b"f"] * 2, b"batch_label": b"testing batch 1 of 1",
                       b"fine_labels": [5, 98], b"coarse_labels": [1, 2], b"data": train[:2]})
    # data.root may also be the extracted folder itself
    for root in (tmp_path, d):
        raw = DATASETS.get("cifar100")(root=str(root))
        assert raw.train_y.tolist() == [99, 0, 42] and raw.test_y.tolist() == [5, 98]
        assert raw.classes == [f"fine{i:02d}" for i in range(100)]
        assert raw.train_x.shape == (3, 3, 32, 32) and raw.test_x.shape == (2, 3, 32, 32)
        assert raw.train_x[2, 0, 2, 0] == 255 and raw.train_x[2, 2, 2, 0] == 9
        assert raw.train_x[1, 0, 0, 5] == 255 and raw.train_x[1, 1, 0, 5] == 5


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        import os
        return (os.mkdir, (str(self.target),))


def test_cifar_pickle_cannot_run_code(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    target = tmp_path / "pwned"
    _dump(d / "meta", {b"fine_label_names": _Evil(target)})
    for f in ("train", "test"):
        _dump(d / f, {b"fine_labels": [0], b"data": np.zeros((1, 3072), np.uint8)})
    with pytest.raises(DatasetFormatError, match="meta: not an official CIFAR python pickle.*mkdir is not allowed"):
        DATASETS.get("cifar100")(root=str(tmp_path))
    assert not target.exists()


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetUnavailable) as e:
        DATASETS.get("cifar10")(root=str(tmp_path))
    msg = str(e.value)
    assert f"torchvision.datasets.CIFAR10('{tmp_path}', download=True)" in msg
    assert f"data.root: {tmp_path}" in msg and f"{DOWNLOAD_ENV}=1" in msg
    with pytest.raises(DatasetUnavailable, match="data.root is not set"):
        DATASETS.get("cifar100")()
    # an incomplete extraction names the missing batches
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    _dump(d / "batches.meta", {b"label_names": [b"a"] * 10})
    with pytest.raises(DatasetUnavailable, match="lacks data_batch_1, .*test_batch"):
        DATASETS.get("cifar10")(root=str(tmp_path))


# ---------------------------------------------------------------- SVHN

def test_svhn_reads_mat_files_and_maps_10_to_0(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, size=(32, 32, 3, 4), dtype=np.uint8)  # official layout [H, W, C, N]
    x_train[3, 5, 2, 1] = 250  # image 1, blue, row 3, col 5
    y_train = np.array([[10], [1], [9], [10]], dtype=np.float64)  # official labels are doubles; 10 = digit 0
    x_test = rng.integers(0, 256, size=(32, 32, 3, 2), dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x_train, "y": y_train})
    savemat(tmp_path / "test_32x32.mat", {"X": x_test, "y": np.array([[2], [10]], dtype=np.uint8)})
    raw = DATASETS.get("svhn")(root=str(tmp_path))
    assert raw.train_x.shape == (4, 3, 32, 32) and raw.train_x.dtype == np.uint8
    assert raw.test_x.shape == (2, 3, 32, 32)
    assert raw.train_y.dtype == np.int64 and raw.train_y.tolist() == [0, 1, 9, 0]
    assert raw.test_y.tolist() == [2, 0]
    assert raw.train_x[1, 2, 3, 5] == 250
    for i, c, r, col in [(0, 0, 0, 0), (3, 1, 31, 7), (2, 2, 10, 20)]:
        assert raw.train_x[i, c, r, col] == x_train[r, col, c, i]
    assert raw.test_x[1, 0, 4, 9] == x_test[4, 9, 0, 1]
    assert raw.classes == [str(c) for c in range(10)]


def test_missing_svhn_says_how_to_get_it(tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 1), np.uint8), "y": np.ones((1, 1))})
    with pytest.raises(DatasetUnavailable, match=r"test_32x32\.mat not found.*SVHN\(.*split='test', download=True\)"):
        DATASETS.get("svhn")(root=str(tmp_path))


# ---------------------------------------------------------------- ImageFolder

def _png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_imagefolder_reads_rgb_tree(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {k: rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8) for k in ("t0", "t1", "t2", "s0", "s1")}
    _png(tmp_path / "train/dog/bb.png", imgs["t0"])
    _png(tmp_path / "train/dog/a.png", imgs["t1"])
    _png(tmp_path / "train/cat/z.png", imgs["t2"])
    _png(tmp_path / "test/cat/q.png", imgs["s0"])
    _png(tmp_path / "test/dog/sub/r.png", imgs["s1"])  # nested folders count, like torchvision
    (tmp_path / "train/dog/notes.txt").write_text("not an image")
    raw = DATASETS.get("imagefolder")(root=str(tmp_path))
    assert raw.classes == ["cat", "dog"]
    assert raw.train_x.shape == (3, 3, 4, 5) and raw.train_x.dtype == np.uint8  # [N, C, H, W]
    assert raw.train_y.dtype == np.int64 and raw.train_y.tolist() == [0, 1, 1]
    # order: class, then file name: cat/z, dog/a, dog/bb
    np.testing.assert_array_equal(raw.train_x[0], imgs["t2"].transpose(2, 0, 1))
    np.testing.assert_array_equal(raw.train_x[1], imgs["t1"].transpose(2, 0, 1))
    assert raw.train_x[2, 1, 3, 4] == imgs["t0"][3, 4, 1]
    assert raw.test_y.tolist() == [0, 1]
    np.testing.assert_array_equal(raw.test_x[1], imgs["s1"].transpose(2, 0, 1))
    assert str(tmp_path) in raw.source


def test_imagefolder_keeps_greyscale_as_one_channel_and_mixes_to_rgb(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    _png(tmp_path / "train/x/a.png", a)
    _png(tmp_path / "train/y/b.png", 255 - a)
    _png(tmp_path / "test/x/c.png", a)
    _png(tmp_path / "test/y/d.png", a)
    raw = DATASETS.get("imagefolder")(root=str(tmp_path))
    assert raw.train_x.shape == (2, 1, 3, 4)
    np.testing.assert_array_equal(raw.train_x[1, 0], 255 - a)
    # one colour image turns the whole dataset RGB; grey images become three equal channels
    _png(tmp_path / "test/y/d.png", np.stack([a, a, 255 - a], axis=-1))
    raw = DATASETS.get("imagefolder")(root=str(tmp_path))
    assert raw.train_x.shape == (2, 3, 3, 4) and raw.test_x.shape == (2, 3, 3, 4)
    for c in range(3):
        np.testing.assert_array_equal(raw.train_x[0, c], a)
    np.testing.assert_array_equal(raw.test_x[1, 2], 255 - a)


def test_imagefolder_class_folders_must_match(tmp_path):
    img = np.zeros((2, 2, 3), np.uint8)
    _png(tmp_path / "train/cat/a.png", img)
    _png(tmp_path / "train/dog/a.png", img)
    _png(tmp_path / "test/cat/a.png", img)
    _png(tmp_path / "test/bird/a.png", img)
    with pytest.raises(DatasetFormatError, match=r"only in train: \['dog'\]; only in test: \['bird'\]"):
        DATASETS.get("imagefolder")(root=str(tmp_path))


def test_imagefolder_sizes_must_match(tmp_path):
    _png(tmp_path / "train/cat/a.png", np.zeros((4, 4, 3), np.uint8))
    _png(tmp_path / "test/cat/odd.png", np.zeros((4, 6, 3), np.uint8))
    with pytest.raises(DatasetFormatError, match=r"test/cat/odd\.png is 6x4 \(WxH\) but .*train/cat/a\.png is 4x4"):
        DATASETS.get("imagefolder")(root=str(tmp_path))


def test_imagefolder_missing_layout_is_unavailable(tmp_path):
    _png(tmp_path / "train/cat/a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetUnavailable, match=r"test is not a directory.*root/train/<class>/<image>"):
        DATASETS.get("imagefolder")(root=str(tmp_path))
    with pytest.raises(DatasetUnavailable, match="data.root is not set"):
        DATASETS.get("imagefolder")()
