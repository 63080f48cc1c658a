"""KD3A on the real apps in process: only weights move, labels stay, phases and switches."""

import json

import numpy as np
import pytest
import torch
from inprocess import InProcessGrid

from clients.app import _actor, app
from clients.routines import _sgd, kd3a_epochs
from fedsim.config import Config, ConfigError
from fedsim.data import DataError, load_dataset, make_split
from fedsim.history import RunWriter
from fedsim.server import run_rounds
from fedsim.validate import load_config
from fedsim.algorithms import client_model

SETTING = ["dataset=digit5-synth", "partitioner=domain", "num-clients=5", "target-domain=usps",
           "synth-per-class=6", "num-rounds=2", "fraction-train=1.0", "batch-size=16"]


def run(tmp_path, *extra):
    config = load_config(None, [*SETTING, "strategy=kd3a", *extra])
    grid = InProcessGrid(app, 2)
    writer = RunWriter(tmp_path / f"kd3a-{len(list(tmp_path.iterdir()))}", config.to_dict())
    run_rounds(grid, config, writer, 2)
    return config, grid, writer.rows


def test_only_weights_cross_client_boundaries(tmp_path):
    config, grid, rows = run(tmp_path)
    data = load_dataset(config)
    names = set(client_model(config, data).state_dict())
    n_samples = min(len(s.train) for s in make_split(config, data))
    assert any(m.metadata.message_type == "train.distill" for m in grid.sent)
    for msg in grid.sent + grid.replies:
        for record in msg.content.values():
            if hasattr(record, "to_numpy_ndarrays"):  # ArrayRecord: model entries only
                assert {k.rpartition("/")[2] if "/" in k else k for k in record.keys()} <= names
            else:  # metrics and configs: scalars and per-client lists, nothing per sample
                for value in record.values():
                    assert not isinstance(value, list) or len(value) < n_samples
    # the target (last client) never trains on labels: its label tensor is all -1
    target = config.targets()[0]
    assert (_actor(config.to_json()).tensors(target)[1] == -1).all()
    assert all(target not in m.content["config"]["clients"]
               for m in grid.sent if m.metadata.message_type == "train")
    assert set(rows[-1]["source_weights"]) == {"0", "1", "2", "3"}
    assert rows[-1]["target_weight"] + sum(rows[-1]["source_weights"].values()) == pytest.approx(1.0)
    assert "source_accuracy" in rows[-1]


def test_batchnorm_statistics_stay_local_when_switched_off(tmp_path):
    _, grid, _ = run(tmp_path, "kd3a-bn=false")
    wire = {k.rpartition("/")[2] for m in grid.sent + grid.replies if "arrays" in m.content
            for k in m.content["arrays"].keys()}
    assert wire and not any(k.endswith(("running_mean", "running_var")) for k in wire)
    _, grid, _ = run(tmp_path)
    wire = {k.rpartition("/")[2] for m in grid.replies if "arrays" in m.content
            for k in m.content["arrays"].keys()}
    assert any(k.endswith("running_mean") for k in wire)


@pytest.mark.parametrize("rounds_per_epoch, steps", [(0.5, 8), (1.0, 4), (2.0, 2), (4.0, 1)])
def test_communication_rounds_set_the_local_steps(rounds_per_epoch, steps):
    config = Config(kd3a_rounds_per_epoch=rounds_per_epoch, batch_size=10)
    model = torch.nn.Linear(2, 2)
    calls = []

    def loss(batch):
        calls.append(len(batch))
        return model(torch.zeros(len(batch), 2)).sum()

    _sgd(model, model.parameters(), torch.zeros(40, 2), kd3a_epochs(config), config,
         torch.Generator().manual_seed(0), loss)
    assert len(calls) == steps and set(calls) == {10}


def test_kd3a_settings_are_validated():
    with pytest.raises(ConfigError, match="needs target-domain"):
        load_config(None, ["strategy=kd3a", "partitioner=domain", "dataset=digit5-synth"])
    with pytest.raises(ConfigError, match="needs partitioner = 'domain'"):
        load_config(None, ["target-domain=usps"])
    with pytest.raises(ConfigError, match="ids must be source clients 0..3"):
        load_config(None, [*SETTING, "malicious-sources=4"])
    with pytest.raises(ConfigError, match="kd3a-gate-end = 1.5"):
        load_config(None, [*SETTING, "kd3a-gate-end=1.5"])
    config = load_config(None, [*SETTING, "target-domain=cifar"])
    with pytest.raises(DataError, match="target-domain = 'cifar' is not a domain"):
        make_split(config, load_dataset(config))


def test_malicious_sources_are_corrupted_in_their_actor_only():
    config = load_config(None, [*SETTING, "malicious-sources=1"])
    actor = _actor(config.to_json())
    data, split = actor.data, actor.splits[1]
    np.testing.assert_array_equal(actor.tensors(1)[1].numpy(), (data.y[split.train] + 1) % 10)
    np.testing.assert_array_equal(actor.tensors(1)[3].numpy(), data.y[split.test])  # test untouched
    noisy = _actor(config.replace(malicious_mode="noise").to_json())
    assert not np.allclose(noisy.tensors(1)[0].numpy(), data.x[split.train])
    assert json.loads(config.to_json())["malicious-sources"] == "1"
