import json

import numpy as np
import pytest

from fedsim.config import ConfigError
from fedsim.data import DataError, load_dataset, make_split, match_test_split, shards
from fedsim.validate import load_config


def split_of(*overrides):
    config = load_config(None, list(overrides))
    data = load_dataset(config)
    return data, make_split(config, data)


def test_digits_dataset():
    data = load_dataset(load_config())
    assert data.x.shape == (1797, 64) and data.x.dtype == np.float32
    assert data.input_shape == (64,) and data.num_classes == 10
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0
    from sklearn.datasets import load_digits  # read directly, without importing scikit-learn

    bunch = load_digits()
    np.testing.assert_array_equal(data.x, (bunch.data / 16.0).astype(np.float32))
    np.testing.assert_array_equal(data.y, bunch.target)


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_shards_give_exactly_k_classes_and_matching_test_classes(k):
    data, splits = split_of("partitioner=shards", f"classes-per-client={k}", "num-clients=20")
    assert len(splits) == 20
    for s in splits:
        train_classes = set(np.unique(data.y[s.train]))
        assert len(train_classes) == k
        assert set(np.unique(data.y[s.test])) == train_classes  # FedRep's test protocol
    sizes = [len(s.train) for s in splits]
    assert max(sizes) - min(sizes) <= 0.25 * max(sizes)  # balanced


def test_every_sample_used_once_and_train_test_disjoint():
    data, splits = split_of("partitioner=shards", "num-clients=20")
    all_idx = np.concatenate([np.concatenate([s.train, s.test]) for s in splits])
    assert len(all_idx) == len(np.unique(all_idx)) == len(data.y)


def test_iid_sizes_and_classes():
    data, splits = split_of("partitioner=iid", "num-clients=10")
    sizes = [len(s.train) for s in splits]
    assert max(sizes) - min(sizes) <= 1
    assert all(len(np.unique(data.y[s.train])) >= 8 for s in splits)


def test_dirichlet_is_skewed_at_small_alpha_and_near_iid_at_large():
    def label_entropy(alpha):
        data, splits = split_of("partitioner=dirichlet", f"dirichlet-alpha={alpha}", "num-clients=10")
        ent = []
        for s in splits:
            p = np.bincount(data.y[s.train], minlength=10) / len(s.train)
            ent.append(-(p[p > 0] * np.log(p[p > 0])).sum())
        return np.mean(ent)

    assert label_entropy(0.1) < 1.3 < label_entropy(100.0)


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards"])
def test_splits_are_deterministic_in_the_seed(name):
    _, a = split_of(f"partitioner={name}", "seed=4")
    _, b = split_of(f"partitioner={name}", "seed=4")
    _, c = split_of(f"partitioner={name}", "seed=5")
    assert all(np.array_equal(x.train, y.train) and np.array_equal(x.test, y.test) for x, y in zip(a, b))
    assert not all(np.array_equal(x.train, y.train) for x, y in zip(a, c))


def test_match_test_split_follows_train_proportions():
    train_labels = [np.array([0, 0, 0, 1]), np.array([1, 1, 1, 1]), np.array([2])]
    test_pool = np.arange(100, 112)
    test_labels = np.array([0] * 4 + [1] * 8)
    parts = match_test_split(train_labels, test_pool, test_labels, np.random.default_rng(0))
    counts = [np.bincount(test_labels[p - 100], minlength=3).tolist() for p in parts]
    # class 0 -> client 0 only; class 1 split 1:4 between clients 0 and 1 (8 -> 2 and 6 after rounding)
    assert counts == [[4, 2, 0], [0, 6, 0], [0, 0, 0]]


def test_more_classes_than_dataset_has_is_an_error():
    with pytest.raises(DataError, match="classes-per-client = 11 but the dataset has only 10"):
        split_of("classes-per-client=11")


def test_client_without_data_is_an_error():
    with pytest.raises(DataError, match=r"leaves client\(s\) .* without train data"):
        split_of("partitioner=iid", "num-clients=2000")  # 1,348 training samples


def test_more_clients_than_test_samples_share_test_samples():
    data, splits = split_of("partitioner=iid", "num-clients=1000")  # 449 test samples
    assert all(len(s.test) >= 1 and len(s.train) >= 1 for s in splits)
    for s in splits:  # shared test samples are of the client's own classes, never its training ones
        assert set(data.y[s.test]) <= set(data.y[s.train])
        assert not set(s.test) & set(s.train)


def test_shards_deal_each_class_evenly():
    labels = np.repeat(np.arange(5), 10)
    config = load_config(None, ["classes-per-client=2"])
    parts = shards(labels, 5, np.random.default_rng(0), config)
    holders = np.zeros(5, dtype=int)
    for p in parts:
        for c in np.unique(labels[p]):
            holders[c] += 1
    assert holders.tolist() == [2] * 5


def write(tmp_path, payload):
    path = tmp_path / "split.json"
    path.write_text(json.dumps(payload))
    return str(path)


def test_split_file_lists_and_train_test_dicts(tmp_path):
    path = write(tmp_path, {"0": list(range(0, 40)), "1": {"train": [40, 41, 42], "test": [43]}})
    data, splits = split_of("partitioner=file", f"split-file={path}", "num-clients=2")
    assert len(splits[0].train) == 30 and len(splits[0].test) == 10
    assert splits[1].train.tolist() == [40, 41, 42] and splits[1].test.tolist() == [43]


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"0": [1, 2, 3, 4], "1": [5, 99999]}, "index 99999 is out of range"),
        ({"0": [1, 2, 3, 4], "1": [4, 5, 6, 7]}, "an index is used twice"),
        ({"0": [1, 2, 3, 4]}, "expected exactly '0'..'1'"),
        ({"0": [1, 2, 3, 4], "1": ["a"]}, "indices must be integers"),
        ({"0": [1, 2, 3, 4], "1": [5]}, "without test data"),
        ([1, 2], "expected an object"),
    ],
)
def test_bad_split_files_are_named(tmp_path, payload, message):
    path = write(tmp_path, payload)
    with pytest.raises(DataError, match=message):
        split_of("partitioner=file", f"split-file={path}", "num-clients=2")


def test_corrupt_split_file(tmp_path):
    path = tmp_path / "split.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="is not readable JSON"):
        split_of("partitioner=file", f"split-file={path}", "num-clients=2")


def test_registered_partitioner_from_a_plugin_file(tmp_path):
    plugin = tmp_path / "my_split_plugin.py"
    plugin.write_text(
        "import numpy as np\n"
        "from fedsim import register_partitioner\n"
        "@register_partitioner('even-odd')\n"
        "def even_odd(labels, num_clients, rng, config):\n"
        "    idx = np.arange(len(labels))\n"
        "    return [idx[labels % 2 == 0], idx[labels % 2 == 1]]\n"
    )
    data, splits = split_of(f"plugins={plugin}", "partitioner=even-odd", "num-clients=2")
    assert set(np.unique(data.y[splits[0].train] % 2)) == {0}
    assert set(np.unique(data.y[splits[1].test] % 2)) == {1}
    with pytest.raises(DataError, match="returned 2 parts for num-clients = 3"):
        split_of(f"plugins={plugin}", "partitioner=even-odd", "num-clients=3")


def test_plugin_with_a_syntax_error(tmp_path):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("def oops(:\n")
    with pytest.raises(ConfigError, match="cannot import"):
        load_config(None, [f"plugins={plugin}"])


@pytest.mark.parametrize(("body", "message"), [
    ("return np.array_split(np.arange(len(labels)), 0)",
     r"partitioner 'mine' raised ValueError: .*num-clients = 2"),
    ("return None", r"returned a NoneType for num-clients = 2"),
    ("return [np.arange(len(labels) + 1), np.arange(1)]", r"client 0: index \d+ is out of range"),
    ("return [np.array([0.0, 1.5]), np.array([2, 3])]", r"client 0: expected a 1-d array of integer indices"),
    ("return [np.arange(10), np.arange(5, 20)]", r"client 1: an index is used twice"),
    ("return [np.array([1, 1, 2]), np.array([3, 4])]", r"client 0: an index is used twice"),
])
def test_a_partitioners_bad_output_or_exception_is_a_data_error_naming_it(tmp_path, body, message):
    """A plugin's bug or a split it cannot make: a DataError naming the partitioner (and
    the client), as the split-file path gives, not a traceback or a silent bad split."""
    plugin = tmp_path / f"bad_split_{abs(hash(body))}.py"  # plugins are imported once per name
    plugin.write_text("import numpy as np\nfrom fedsim import register_partitioner\n"
                      "@register_partitioner('mine')\n"
                      f"def mine(labels, num_clients, rng, config):\n    {body}\n")
    with pytest.raises(DataError, match=message):
        split_of(f"plugins={plugin}", "partitioner=mine", "num-clients=2")


def test_a_2d_array_of_parts_is_accepted(tmp_path):
    plugin = tmp_path / "array_split_plugin.py"
    plugin.write_text("import numpy as np\nfrom fedsim import register_partitioner\n"
                      "@register_partitioner('rows')\n"
                      "def rows(labels, num_clients, rng, config):\n"
                      "    return np.arange(num_clients * 40).reshape(num_clients, 40)\n")
    _, splits = split_of(f"plugins={plugin}", "partitioner=rows", "num-clients=2")
    assert [len(s.train) for s in splits] == [40, 40]


@pytest.mark.parametrize("partitioner", ["dirichlet", "shards"])
def test_class_partitioners_refuse_a_regression_dataset(partitioner):
    with pytest.raises(DataError, match=f"partitioner '{partitioner}' deals clients classes, but "
                                        "dataset 'linear-regression' has real-valued targets"):
        split_of("dataset=linear-regression", f"partitioner={partitioner}", "num-clients=4")
