"""Readers on tiny files written in the real on-disk formats (IDX, CIFAR pickles, LEAF JSON,
Digit-Five .mat)."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from fedsim.data import DataError
from fedsim.readers import (
    read_cifar,
    read_digit5,
    read_idx_images,
    read_idx_labels,
    read_leaf_femnist,
    read_mnist_like,
)

RNG = np.random.default_rng(0)


# --- IDX --------------------------------------------------------------------------------------


def idx_images(images: np.ndarray) -> bytes:
    return struct.pack(">4i", 2051, *images.shape) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">2i", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_mnist(d: Path, n_train: int = 5, n_test: int = 3, gz: bool = True) -> None:
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write(d / f"{prefix}-images-idx3-ubyte{ext}", idx_images(RNG.integers(0, 256, (n, 28, 28))))
        write(d / f"{prefix}-labels-idx1-ubyte{ext}", idx_labels(np.arange(n) % 10))


@pytest.mark.parametrize("name", ["img-idx3-ubyte", "img-idx3-ubyte.gz"])
def test_idx_images_raw_and_gz(tmp_path, name):
    images = RNG.integers(0, 256, (4, 28, 28))
    x = read_idx_images(write(tmp_path / name, idx_images(images)))
    assert x.shape == (4, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0] * 255, images, atol=1e-4)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_idx_labels(tmp_path):
    y = read_idx_labels(write(tmp_path / "l.gz", idx_labels(np.array([3, 1, 4, 1, 5]))))
    assert y.dtype == np.int64 and y.tolist() == [3, 1, 4, 1, 5]


def test_idx_bad_magic_names_path(tmp_path):
    path = write(tmp_path / "l-idx1-ubyte", idx_labels(np.arange(3)))
    with pytest.raises(DataError, match="magic number 2049") as e:
        read_idx_images(path)
    assert str(path) in str(e.value)


def test_idx_truncated(tmp_path):
    path = write(tmp_path / "i-idx3-ubyte", idx_images(np.zeros((4, 28, 28)))[:-10])
    with pytest.raises(DataError, match="truncated") as e:
        read_idx_images(path)
    assert str(path) in str(e.value)


def test_idx_truncated_gzip_stream(tmp_path):
    path = tmp_path / "i-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_images(np.zeros((4, 28, 28))))[:-20])
    with pytest.raises(DataError, match=str(path)):
        read_idx_images(path)


def test_idx_missing(tmp_path):
    with pytest.raises(DataError, match="missing file .*nope"):
        read_idx_labels(tmp_path / "nope")


@pytest.mark.parametrize("layout", ["", "MNIST/raw"])
def test_mnist_like_layouts(tmp_path, layout):
    write_mnist(tmp_path / layout, gz=layout == "")
    (x, y), (xt, yt) = read_mnist_like(tmp_path, "mnist")
    assert x.shape == (5, 1, 28, 28) and xt.shape == (3, 1, 28, 28)
    assert y.tolist() == [0, 1, 2, 3, 4] and yt.dtype == np.int64


def test_fashion_mnist_torchvision_layout(tmp_path):
    write_mnist(tmp_path / "FashionMNIST" / "raw")
    (x, _), _ = read_mnist_like(tmp_path, "fashion-mnist")
    assert len(x) == 5


def test_mnist_like_missing_says_how(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist") as e:
        read_mnist_like(tmp_path, "fashion-mnist")
    assert str(tmp_path / "train-images-idx3-ubyte") in str(e.value)


def test_mnist_like_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_labels(np.arange(2)))
    with pytest.raises(DataError, match="3 images"):
        read_mnist_like(tmp_path, "mnist")


# --- CIFAR ------------------------------------------------------------------------------------


def write_cifar_batch(path: Path, n: int, label_key: bytes, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {b"batch_label": b"x", b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key: [i % 10 for i in range(n)], b"filenames": [b"a.png"] * n}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10(tmp_path, protocol):
    base = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        write_cifar_batch(base / f"data_batch_{i}", 2, b"labels", protocol)
    write_cifar_batch(base / "test_batch", 3, b"labels", protocol)
    (x, y), (xt, yt) = read_cifar(tmp_path, "cifar10")
    assert x.shape == (10, 3, 32, 32) and x.dtype == np.float32 and xt.shape == (3, 3, 32, 32)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.dtype == np.int64 and y.tolist() == [0, 1] * 5 and yt.tolist() == [0, 1, 2]


def test_cifar100_fine_labels(tmp_path):
    base = tmp_path / "cifar-100-python"
    write_cifar_batch(base / "train", 4, b"fine_labels")
    write_cifar_batch(base / "test", 2, b"fine_labels")
    (x, y), (_, yt) = read_cifar(tmp_path, "cifar100")
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 2, 3] and yt.tolist() == [0, 1]


def test_cifar_missing_names_path(tmp_path):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz") as e:
        read_cifar(tmp_path, "cifar10")
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in str(e.value)


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_forbidden_global_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = Evil()
    evil.marker = marker
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    (base / "train").write_bytes(pickle.dumps({b"data": evil, b"fine_labels": [0]}))
    with pytest.raises(DataError, match="forbidden global (posix|nt|os).system"):
        read_cifar(tmp_path, "cifar100")
    assert not marker.exists()


def test_cifar_truncated_and_bad_shape(tmp_path):
    base = tmp_path / "cifar-100-python"
    write_cifar_batch(base / "train", 4, b"fine_labels")
    raw = (base / "train").read_bytes()
    (base / "train").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_cifar(tmp_path, "cifar100")
    (base / "train").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"fine_labels": [0, 1]}))
    with pytest.raises(DataError, match=r"\(N, 3072\)"):
        read_cifar(tmp_path, "cifar100")


# --- LEAF FEMNIST -----------------------------------------------------------------------------


def write_leaf(path: Path, users: dict[str, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"users": list(users), "num_samples": list(users.values()),
           "user_data": {u: {"x": RNG.random((n, 784)).tolist(), "y": [(i * 7) % 62 for i in range(n)]}
                         for u, n in users.items()}}
    path.write_text(json.dumps(doc))


def test_leaf_train_test(tmp_path):
    write_leaf(tmp_path / "train" / "a.json", {"f0": 3, "f1": 2})
    write_leaf(tmp_path / "train" / "b.json", {"f2": 4})
    write_leaf(tmp_path / "test" / "a.json", {"f0": 1, "f1": 1, "f2": 2})
    writers = read_leaf_femnist(tmp_path)
    assert [w[0] for w in writers] == ["f0", "f1", "f2"]
    _, x, y, xt, yt = writers[2]
    assert x.shape == (4, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert xt.shape == (2, 1, 28, 28) and yt.tolist() == [0, 7]
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_leaf_single_directory_is_all_train(tmp_path):
    write_leaf(tmp_path / "all_data" / "all_data_0.json", {"w": 5})
    [(wid, x, y, xt, yt)] = read_leaf_femnist(tmp_path)
    assert wid == "w" and len(x) == 5 and xt.shape == (0, 1, 28, 28) and yt.shape == (0,)
    assert len(read_leaf_femnist([tmp_path / "all_data" / "all_data_0.json"])) == 1


def test_leaf_errors(tmp_path):
    with pytest.raises(DataError, match="LEAF"):
        read_leaf_femnist(tmp_path / "missing")
    bad = tmp_path / "train" / "bad.json"
    bad.parent.mkdir()
    bad.write_text('{"users": ["u"], "user_data": {"u": {"x": [[0.1, 0.2]], "y": [1]}}}')
    with pytest.raises(DataError, match="784"):
        read_leaf_femnist(tmp_path)
    bad.write_text('{"users": [')
    with pytest.raises(DataError, match=str(bad)):
        read_leaf_femnist(tmp_path)


# --- Digit-Five .mat --------------------------------------------------------------------------


def one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(10, dtype=np.uint8)[y]


def write_digit5(root: Path, domain: str) -> tuple[np.ndarray, np.ndarray]:
    """Writes tiny .mat files like KD3A's; returns (train labels, test labels) expected."""
    d = root / domain
    d.mkdir(parents=True)
    ytr, yte = np.array([0, 1, 2, 9]), np.array([5, 0])
    if domain == "mnist":
        savemat(d / "mnist_data.mat", {"train_32": RNG.integers(0, 256, (4, 32, 32), dtype=np.uint8),
                                       "test_32": RNG.integers(0, 256, (2, 32, 32), dtype=np.uint8),
                                       "label_train": one_hot(ytr), "label_test": one_hot(yte)})
    elif domain == "mnistm":
        savemat(d / "mnistm_with_label.mat", {"train": RNG.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
                                              "test": RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
                                              "label_train": one_hot(ytr), "label_test": one_hot(yte)})
    elif domain in ("svhn", "syn"):
        prefix = "svhn" if domain == "svhn" else "synth"
        for split, y in (("train", ytr), ("test", yte)):
            svhn_y = np.where(y == 0, 10, y)[:, None]  # SVHN writes digit 0 as 10
            savemat(d / f"{prefix}_{split}_32x32.mat",
                    {"X": RNG.integers(0, 256, (32, 32, 3, len(y)), dtype=np.uint8), "y": svhn_y})
    elif domain == "usps":
        cells = np.empty((2, 2), dtype=object)
        cells[0, 0], cells[0, 1] = RNG.random((4, 1, 28, 28)), ytr[:, None]
        cells[1, 0], cells[1, 1] = RNG.random((2, 1, 28, 28)), yte[:, None]
        savemat(d / "usps_28x28.mat", {"dataset": cells})
    return ytr, yte


@pytest.mark.parametrize("domain", ["mnist", "mnistm", "svhn", "syn", "usps"])
def test_digit5_domains(tmp_path, domain):
    ytr, yte = write_digit5(tmp_path, domain)
    (x, y), (xt, yt) = read_digit5(tmp_path, domain)
    assert x.shape == (4, 3, 32, 32) and xt.shape == (2, 3, 32, 32)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    assert y.dtype == np.int64 and y.tolist() == ytr.tolist() and yt.tolist() == yte.tolist()


def test_digit5_svhn_layout_is_kept(tmp_path):
    d = tmp_path / "svhn"
    d.mkdir()
    img = np.zeros((32, 32, 3, 1), np.uint8)
    img[5, 7, 2, 0] = 255  # one blue pixel at row 5, column 7
    for split in ("train", "test"):
        savemat(d / f"svhn_{split}_32x32.mat", {"X": img, "y": np.array([[3]])})
    (x, _), _ = read_digit5(tmp_path, "svhn")
    assert x[0, 2, 5, 7] == 1.0 and x.sum() == 1.0


def test_digit5_syn_alternative_file(tmp_path):
    d = tmp_path
    savemat(d / "syn_number.mat", {"train_data": RNG.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
                                   "train_label": np.array([1, 2, 3]),
                                   "test_data": RNG.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8),
                                   "test_label": np.array([4])})
    (x, y), (_, yt) = read_digit5(tmp_path, "syn")
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [1, 2, 3] and yt.tolist() == [4]


def test_digit5_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match="KD3A") as e:
        read_digit5(tmp_path, "usps")
    assert str(tmp_path / "usps" / "usps_28x28.mat") in str(e.value)
    (tmp_path / "usps").mkdir()
    (tmp_path / "usps" / "usps_28x28.mat").write_bytes(b"MATLAB 5.0 garbage" * 3)
    with pytest.raises(DataError, match="cannot read .*usps_28x28.mat"):
        read_digit5(tmp_path, "usps")


def test_digit5_wrong_shapes(tmp_path):
    d = tmp_path / "mnistm"
    d.mkdir()
    savemat(d / "mnistm_with_label.mat", {"train": np.zeros((5, 32, 32, 3), np.uint8), "label_train": one_hot(
        np.arange(4)), "test": np.zeros((1, 32, 32, 3), np.uint8), "label_test": one_hot(np.arange(1))})
    with pytest.raises(DataError, match="do not match 4 labels"):
        read_digit5(tmp_path, "mnistm")
