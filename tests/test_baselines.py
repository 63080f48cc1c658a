"""Defining behaviour of each personalized-FL baseline, on the real apps in process."""

import numpy as np
import pytest
import torch
from inprocess import InProcessGrid

from clients import specs
from clients.app import app
from clients.engine import train_one
from clients.personal import personal_arrays
from clients.routines import DittoModel
from fedsim.algorithms import ALGORITHMS
from fedsim.config import Config
from fedsim.data import load_dataset, make_split
from fedsim.history import RunWriter
from fedsim.models import build_model
from fedsim.server import run_rounds


def run(tmp_path, strategy, **changes):
    settings = dict(num_rounds=2, num_clients=4, fraction_train=1.0, head_epochs=1,
                    finetune_epochs=2, local_epochs=1)
    config = Config(strategy=strategy, **{**settings, **changes})
    grid = InProcessGrid(app, 2)
    writer = RunWriter(tmp_path / f"{strategy}-{len(list(tmp_path.iterdir()))}", config.to_dict())
    run_rounds(grid, config, writer, 2)
    return grid, writer.rows


def names_on_the_wire(grid):
    names = set()
    for msg in grid.sent + grid.replies:
        if "arrays" in msg.content:
            names |= {k.rpartition("/")[2] if "/" in k else k for k in msg.content["arrays"].keys()}
    return names


def personal_state(grid):
    return {k: a for ctx in grid.contexts.values() for k, a in personal_arrays(ctx).items()}


@pytest.mark.parametrize("strategy", sorted(set(ALGORITHMS) - {"kd3a"}))  # kd3a: test_kd3a.py
def test_every_algorithm_runs_and_evaluates(tmp_path, strategy):
    _, rows = run(tmp_path, strategy)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(0.0 <= r["accuracy"] <= 1.0 and len(r["clients"]) == 4 for r in rows)


def test_local_only_shares_nothing(tmp_path):
    grid, _ = run(tmp_path, "local")
    assert names_on_the_wire(grid) == set()
    assert len(personal_state(grid)) == 4 * 6  # 4 clients x (3 linear layers x weight, bias)


def test_lg_fedavg_body_never_leaves_the_client(tmp_path):
    grid, _ = run(tmp_path, "lg-fedavg")
    wire = names_on_the_wire(grid)
    assert wire and all(n.startswith("head.") for n in wire)
    assert all(k.partition("/")[2].startswith("body.") for k in personal_state(grid))


def test_fedper_shares_the_body_and_trains_heads_jointly(tmp_path):
    grid, _ = run(tmp_path, "fedper")
    assert all(n.startswith("body.") for n in names_on_the_wire(grid))
    initial = build_model(load_dataset(Config()), 128, 0).head.weight.detach().numpy()
    heads = personal_state(grid)
    assert not np.array_equal(heads["0/head.weight"], initial)


def test_fedbabu_head_stays_at_its_initialisation(tmp_path):
    grid, _ = run(tmp_path, "fedbabu", num_rounds=3)
    initial = build_model(load_dataset(Config()), 128, 0).state_dict()
    heads = personal_state(grid)
    assert len(heads) == 8
    for key, value in heads.items():
        np.testing.assert_array_equal(value, initial[key.partition("/")[2]].numpy())
    assert all(n.startswith("body.") for n in names_on_the_wire(grid))


def test_fedavg_ft_trains_like_fedavg_and_fine_tunes_only_for_evaluation(tmp_path):
    _, plain = run(tmp_path, "fedavg")
    grid, tuned = run(tmp_path, "fedavg-ft", finetune_epochs=5)
    assert [r["train_loss"] for r in plain] == [r["train_loss"] for r in tuned]
    assert tuned[-1]["accuracy"] > plain[-1]["accuracy"]  # 2 classes per client: FT helps
    assert personal_state(grid) == {}  # nothing personal is kept


def test_ditto_shares_only_the_global_model(tmp_path):
    grid, _ = run(tmp_path, "ditto")
    wire = names_on_the_wire(grid)
    assert wire and all(n.startswith("shared.") for n in wire)
    assert all(k.partition("/")[2].startswith("personal.") for k in personal_state(grid))


def test_ditto_personal_model_moves_toward_the_global_one_as_lambda_grows():
    config = Config(local_epochs=3)
    data = load_dataset(config)
    split = make_split(config, data)[0]
    x, y = torch.from_numpy(data.x[split.train]), torch.from_numpy(data.y[split.train])
    distances = []
    for lam in (0.0, 1.0, 10.0):
        shared = build_model(data, 32, 0)
        personal = build_model(data, 32, 1)  # start away from the global model
        model = DittoModel(shared, personal)
        received = [p.detach().clone() for p in shared.parameters()]
        generator = torch.Generator().manual_seed(0)
        train_one(model, specs.DITTO.train, x, y, config.replace(ditto_lambda=lam), generator)
        distances.append(sum(((p - r) ** 2).sum().item()
                             for p, r in zip(model.personal.parameters(), received)))
    assert distances[0] > distances[1] > distances[2]
