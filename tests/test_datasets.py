"""Dataset registrations on real-format files, the model zoo, domain/size splits, the
flwr-datasets adapter and `fedsim split`."""

import gzip
import struct
import subprocess
import sys
import types

import numpy as np
import pytest

from fedsim.config import Config
from fedsim.data import DataError, load_dataset, make_split, register_flwr_partitioner
from fedsim.models import build_model
from fedsim.validate import load_config


def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def fake_mnist(root, n_train=120, n_test=40):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 2051)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, 2049)


def test_mnist_from_data_root_keeps_the_official_test_set(tmp_path):
    fake_mnist(tmp_path)
    config = load_config(None, ["dataset=mnist", f"data-root={tmp_path}", "num-clients=4",
                                "partitioner=iid"])
    data = load_dataset(config)
    assert data.x.shape == (160, 1, 28, 28) and data.test_mask.sum() == 40
    splits = make_split(config, data)
    assert all(not data.test_mask[s.train].any() and data.test_mask[s.test].all() for s in splits)
    model = build_model(data, 16, 0)
    assert type(model.body[0]).__name__ == "Conv2d"  # cnn28 chosen for 28x28 images


def test_missing_files_name_the_path(tmp_path):
    config = load_config(None, ["dataset=mnist", f"data-root={tmp_path / 'nowhere'}"])
    with pytest.raises(DataError, match="nowhere"):
        load_dataset(config)
    with pytest.raises(DataError, match="needs data-root"):
        load_dataset(load_config(None, ["dataset=cifar10"]))


def test_download_without_torchvision_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    config = load_config(None, ["dataset=mnist", f"data-root={tmp_path}", "download=true"])
    with pytest.raises(DataError, match=r"needs torchvision: pip install 'fedsim\[torchvision\]'"):
        load_dataset(config)


def test_digit5_synth_domain_split_and_cnn32():
    config = load_config(None, ["dataset=digit5-synth", "partitioner=domain", "num-clients=10",
                                "synth-per-class=4"])
    data = load_dataset(config)
    assert data.x.shape[1:] == (3, 32, 32) and data.domain_names[0] == "mnist"
    splits = make_split(config, data)
    for client, s in enumerate(splits):
        assert set(data.domains[s.train]) == {client % 5} == set(data.domains[s.test])
    model = build_model(data, 16, 0)
    assert [type(m).__name__ for m in model.body][:2] == ["Conv2d", "BatchNorm2d"]  # cnn32bn
    cifar_cnn = build_model(data, 16, 0, "cnn32")
    assert [type(m).__name__ for m in cifar_cnn.body][:2] == ["Conv2d", "ReLU"]
    assert cifar_cnn.head.in_features == 84  # FedRep's CIFAR CNN: head = last linear layer
    with pytest.raises(DataError, match="fewer than the 5 clients"):
        make_split(load_config(None, ["dataset=digit5-synth", "partitioner=domain", "num-clients=3",
                                      "synth-per-class=4"]), data)
    with pytest.raises(DataError, match="needs a multi-domain dataset"):
        make_split(load_config(None, ["partitioner=domain"]), load_dataset(load_config()))


def test_wrong_model_for_the_data_is_named():
    with pytest.raises(ValueError, match=r"model = 'cnn32' needs C×32×32 images"):
        build_model(load_dataset(load_config()), 16, 0, "cnn32")


def test_size_partitioner_is_skewed_and_complete():
    config = load_config(None, ["partitioner=size", "num-clients=20", "size-sigma=1.5"])
    data = load_dataset(config)
    splits = make_split(config, data)
    sizes = np.array([len(s.train) for s in splits])
    assert sizes.min() >= 2 and sizes.max() > 4 * np.median(sizes) / 2
    assert sizes.sum() == (~np.isin(np.arange(len(data.y)), np.concatenate([s.test for s in splits]))).sum()


def test_flwr_datasets_adapter_with_a_partitioner_of_the_same_interface(monkeypatch):
    class FakeHF:
        def __init__(self, columns):
            self.columns = columns

        @classmethod
        def from_dict(cls, columns):
            return cls(columns)

        def select(self, rows):
            return FakeHF({k: [v[i] for i in rows] for k, v in self.columns.items()})

        def __getitem__(self, key):
            return self.columns[key]

    class EvenOdd:  # flwr_datasets interface: .dataset setter, load_partition(i)
        def __init__(self, n):
            self.n = n

        def load_partition(self, i):
            rows = [j for j, label in enumerate(self.dataset["label"]) if label % self.n == i]
            return self.dataset.select(rows)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(Dataset=FakeHF))
    register_flwr_partitioner("even-odd-flwr", EvenOdd)
    config = load_config(None, ["partitioner=even-odd-flwr", "num-clients=2"])
    data = load_dataset(config)
    splits = make_split(config, data)
    assert set(data.y[splits[0].train] % 2) == {0} and set(data.y[splits[1].test] % 2) == {1}
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"pip install 'fedsim\[flwr-datasets\]'"):
        make_split(config, data)


def test_fedsim_split_writes_a_png(tmp_path):
    out = tmp_path / "split.png"
    result = subprocess.run([sys.executable, "-m", "fedsim", "split", "--set", "num-clients=8",
                             "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_synthetic_is_fedprox_synthetic_with_natural_clients():
    from fedsim.data import synthetic

    config = Config(dataset="synthetic", partitioner="natural", num_clients=3, samples_per_client=8,
                    synthetic_alpha=0.0, synthetic_beta=0.0)
    data = synthetic(config)
    assert data.x.shape == (3 * 13, 60) and data.num_classes == 10 and data.x.dtype == np.float32
    assert [len(s.train) for s in data.natural] == [8] * 3
    assert [len(s.test) for s in data.natural] == [5] * 3
    assert np.array_equal(synthetic(config).x, data.x)  # a function of the seed
    assert not np.array_equal(synthetic(config.replace(seed=1)).x, data.x)
    # alpha = beta = 0: every client's mean input is N(0, 1) per feature, its model N(0, 1)
    spread = data.x.reshape(3, 13, 60).std(axis=1)
    assert np.all(spread[:, -10:] < spread[:, :10].mean())  # Σⱼⱼ = j^-1.2 shrinks later features
