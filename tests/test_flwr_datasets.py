"""register_flwr_partitioner with real flwr-datasets partitioners over a local
``datasets.Dataset`` built from our data (no hub access). Needs the optional extra
(``pip install 'fedsim[flwr-datasets]'``; .ci/run installs it)."""

import numpy as np
import pytest

pytest.importorskip("flwr_datasets", reason="pip install 'fedsim[flwr-datasets]' (.ci/run does)")

from datasets import Dataset as HFDataset  # noqa: E402
from flwr_datasets.partitioner import (  # noqa: E402
    DirichletPartitioner,
    IidPartitioner,
    PathologicalPartitioner,
    ShardPartitioner,
)

from fedsim.data import _pools, load_dataset, make_split, register_flwr_partitioner  # noqa: E402
from fedsim.validate import load_config  # noqa: E402

CLIENTS = 8
MAKERS = {
    "flwr-iid": lambda n: IidPartitioner(num_partitions=n),
    "flwr-dirichlet": lambda n: DirichletPartitioner(num_partitions=n, partition_by="label", alpha=0.5,
                                                     seed=1),
    "flwr-pathological": lambda n: PathologicalPartitioner(num_partitions=n, partition_by="label",
                                                           num_classes_per_partition=2, seed=1,
                                                           class_assignment_mode="first-deterministic"),
    "flwr-shard": lambda n: ShardPartitioner(num_partitions=n, partition_by="label",
                                             num_shards_per_partition=2, seed=1),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_real_partitioner_gives_the_clients_its_own_partitions(name):
    register_flwr_partitioner(name, MAKERS[name])
    config = load_config(None, [f"partitioner={name}", f"num-clients={CLIENTS}"])
    data = load_dataset(config)
    splits = make_split(config, data)
    # the partitioner's own output on the same training pool (make_split's first draw)
    train_pool, _ = _pools(data, config.test_fraction, np.random.default_rng(config.seed))
    partitioner = MAKERS[name](CLIENTS)
    labels = data.y[train_pool]
    partitioner.dataset = HFDataset.from_dict({"label": labels.tolist(), "index": list(range(len(labels)))})
    assert len(splits) == CLIENTS
    for client, split in enumerate(splits):
        partition = partitioner.load_partition(client)
        assert len(split.train) == partition.num_rows
        assert np.array_equal(split.train, np.sort(train_pool[np.asarray(partition["index"])]))
        assert set(data.y[split.train].tolist()) == set(partition["label"])
        assert set(data.y[split.test].tolist()) <= set(partition["label"])  # test data from its classes
    if name == "flwr-pathological":
        assert all(len(set(data.y[s.train].tolist())) == 2 for s in splits)
    if name == "flwr-iid":
        sizes = [len(s.train) for s in splits]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(train_pool)
