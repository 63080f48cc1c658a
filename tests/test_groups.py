"""Issue 21: TAG's inter-client affinity, the grouping search, grouped FedRep bodies and
the rotated benchmark (pure maths to exact numbers; the apps in process)."""

import json

import numpy as np
import pytest
import torch
from inprocess import InProcessGrid, cut_and_resume
from torch import nn

from clients.affinity import lookahead_affinities
from clients.app import app
from fedsim.affinity import (
    SINGLETON,
    adjusted_rand_index,
    exact_grouping,
    find_groups,
    lookahead_affinity,
    partitions,
    tag_objective,
)
from fedsim.affinity_plot import affinity_matrix, plot_affinity
from fedsim.algorithms import client_model
from fedsim.cli import main
from fedsim.config import ConfigError
from fedsim.data import load_dataset, make_split
from fedsim.history import RunWriter, read_run
from fedsim.models import SplitModel
from fedsim.rotated import planted_groups, rotate
from fedsim.server import run_rounds
from fedsim.validate import load_config


def _scalar_model(body: float, head: float) -> SplitModel:
    model = SplitModel(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model.body.weight.fill_(body)
        model.head.weight.fill_(head)
    return model


def test_lookahead_affinity_on_a_hand_computed_two_client_example():
    # y = x·w·h, MSE. θ: w = 1. Client 0: x = (1, 2), y = (2, 4), head 1; its update Δ₀ = +0.5.
    # Client 1: x = (1), y = (0), head 2; its update Δ₁ = -0.25.
    x0, y0 = torch.tensor([[1.0], [2.0]]), torch.tensor([2.0, 4.0])
    x1, y1 = torch.tensor([[1.0]]), torch.tensor([0.0])
    delta0, delta1 = {"body.weight": np.array([[0.5]])}, {"body.weight": np.array([[-0.25]])}
    model0 = _scalar_model(1.0, 1.0)
    # L₀(θ) = ((1-2)² + (2-4)²)/2 = 2.5; L₀(θ+Δ₁): w = .75, ((.75-2)² + (1.5-4)²)/2 = 3.90625
    assert lookahead_affinities(model0, x0, y0, [delta1]) == [pytest.approx(1 - 3.90625 / 2.5)]
    assert 1 - 3.90625 / 2.5 == -0.5625
    # L₁(θ) = (2-0)² = 4; L₁(θ+Δ₀): w = 1.5, 3² = 9 -> Z₀→₁ = 1 - 9/4 = -1.25
    model1 = _scalar_model(1.0, 2.0)
    assert lookahead_affinities(model1, x1, y1, [delta0]) == [pytest.approx(-1.25)]
    # Δ₀ applied to client 0 itself: w = 1.5, ((1.5-2)² + (3-4)²)/2 = .625 -> 1 - .625/2.5 = .75
    assert lookahead_affinities(model0, x0, y0, [delta0, delta1]) == [pytest.approx(0.75),
                                                                     pytest.approx(-0.5625)]
    assert model0.body.weight.item() == 1.0 and model1.body.weight.item() == 1.0  # θ restored
    assert lookahead_affinity(4.0, 9.0) == -1.25
    with pytest.raises(ValueError, match="must be > 0"):
        lookahead_affinity(0.0, 1.0)


# Z[i, j] = Z_{i→j}; {0, 1} and {2, 3} help each other, 0 also helps 2 (but 2 hurts 0).
FOUR = np.array([
    [0.0, 0.4, 0.5, -0.1],
    [0.2, 0.0, -0.1, 0.0],
    [-0.3, -0.1, 0.0, 0.3],
    [-0.1, 0.0, 0.1, 0.0],
])


def test_tag_objective_is_the_mean_over_clients_of_the_affinity_onto_them_from_their_group():
    # {0,1},{2,3}: (Z₁→₀ + Z₀→₁ + Z₃→₂ + Z₂→₃)/4 = (.2 + .4 + .1 + .3)/4
    assert tag_objective(FOUR, [0, 0, 1, 1]) == pytest.approx(0.25)
    # {0,2},{1,3}: (Z₂→₀ + Z₃→₁ + Z₀→₂ + Z₁→₃)/4 = (-.3 + 0 + .5 + 0)/4
    assert tag_objective(FOUR, [0, 1, 0, 1]) == pytest.approx(0.05)
    # {0,3},{1,2}: (-.1 - .1 - .1 - .1)/4
    assert tag_objective(FOUR, [0, 1, 1, 0]) == pytest.approx(-0.1)
    # {0,1,2,3}: client 0 gets (.2 - .3 - .1)/3, 1: (.4 - .1 + 0)/3, 2: (.5 - .1 + .1)/3, 3: (-.1 + 0 + .3)/3
    assert tag_objective(FOUR, [0, 0, 0, 0]) == pytest.approx((-0.2 + 0.3 + 0.5 + 0.2) / 12)
    # a client alone scores TAG's -1e6: {0}, {1, 2, 3}
    assert tag_objective(FOUR, [0, 1, 1, 1]) == pytest.approx((SINGLETON + (-0.1 + 0.0) / 2
                                                               + (-0.1 + 0.1) / 2 + (0.0 + 0.3) / 2) / 4)


def test_exact_search_finds_the_best_partition_of_four_clients():
    assert exact_grouping(FOUR, 2).tolist() == [0, 0, 1, 1]
    labels, method = find_groups(FOUR, 2)
    assert (labels.tolist(), method) == ([0, 0, 1, 1], "exact")
    assert find_groups(FOUR, 1)[0].tolist() == [0, 0, 0, 0]
    # brute force over all 2^4 labelings agrees
    best = max((tuple(int(b) for b in np.binary_repr(m, 4)) for m in range(16) if 0 < m < 15),
               key=lambda labels: tag_objective(FOUR, labels))
    assert tag_objective(FOUR, best) == pytest.approx(0.25)


@pytest.mark.parametrize("n, k, stirling", [(4, 2, 7), (5, 3, 25), (6, 1, 1), (6, 6, 1), (10, 4, 34105)])
def test_partitions_are_every_set_partition_into_k_groups_once(n, k, stirling):
    found = list(partitions(n, k))
    assert len(found) == len(set(found)) == stirling
    assert all(len(set(p)) == k and p[0] == 0 for p in found)


def test_clustering_runs_beyond_ten_clients_and_recovers_planted_blocks():
    rng = np.random.default_rng(0)
    planted = np.arange(12) % 3
    z = np.where(planted[:, None] == planted[None, :], 0.3, -0.1) + 0.05 * rng.standard_normal((12, 12))
    labels, method = find_groups(z, 3)
    assert method == "clustering"
    assert adjusted_rand_index(labels, planted) == 1.0
    assert find_groups(z, 3)[0].tolist() == labels.tolist()  # deterministic
    # the restarts keep the best of TAG's objective: never below the clustering alone
    alone = find_groups(z, 3, restarts=0)[0]
    assert tag_objective(z, labels) >= tag_objective(z, alone)


def test_adjusted_rand_index_on_a_hand_example():
    # a: {0,1},{2,3}; b: {0,1},{2},{3}. Σ C(nᵢⱼ,2) = 1, Σ C(aᵢ,2) = 2, Σ C(bⱼ,2) = 1, C(4,2) = 6:
    # E = 2·1/6 = 1/3, max = (2 + 1)/2 = 3/2 -> (1 - 1/3)/(3/2 - 1/3) = 4/7
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(4 / 7)
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 2, 2]) == 1.0  # names do not matter
    assert adjusted_rand_index([0, 0, 0], [0, 0, 0]) == 1.0
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = rng.integers(0, 4, 20), rng.integers(0, 3, 20)
        assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b))


def test_rotate_turns_images_counter_clockwise():
    flat = np.array([[1, 2, 3, 4]], dtype=np.float32)  # [[1, 2], [3, 4]]
    assert rotate(flat, 1).tolist() == [[2, 4, 1, 3]]
    assert rotate(flat, 2).tolist() == [[4, 3, 2, 1]]
    assert rotate(flat, 4).tolist() == flat.tolist()


def test_the_rotated_partitioner_plants_groups_of_rotated_train_and_test_images():
    config = load_config(None, ["partitioner=rotated", "num-clients=8", "num-rotations=4",
                                "classes-per-client=2"])
    data = load_dataset(config)
    n = len(data.y) // 4
    splits = make_split(config, data)
    assert planted_groups(config) == [0, 1, 2, 3, 0, 1, 2, 3]
    used = []
    for client, split in enumerate(splits):
        g = client % 4
        for idx in (split.train, split.test):
            assert ((idx >= g * n) & (idx < (g + 1) * n)).all()  # the group's copy
            base = idx - g * n
            np.testing.assert_array_equal(data.x[idx], rotate(data.x[base], g))
            np.testing.assert_array_equal(data.y[idx], data.y[base])
        assert len(np.unique(data.y[split.train])) == 2
        assert set(data.y[split.test]) <= set(data.y[split.train])
        used += (split.train - g * n).tolist() + (split.test - g * n).tolist()
    assert len(used) == len(set(used))  # every image held once, in one rotation


def test_group_settings_are_validated():
    with pytest.raises(ConfigError, match="affinity-every = 2 needs strategy = 'fedrep-groups'"):
        load_config(None, ["affinity-every=2"])
    with pytest.raises(ConfigError, match="affinity-every = 6 must be 1..5"):
        load_config(None, ["strategy=fedrep-groups", "group-after=5", "affinity-every=6"])
    with pytest.raises(ConfigError, match="num-rotations = 5"):
        load_config(None, ["num-rotations=5"])
    with pytest.raises(ConfigError, match="num-groups = 21: must be <= num-clients = 20"):
        load_config(None, ["strategy=fedrep-groups", "num-groups=21"])
    assert load_config(None, ["strategy=fedrep-groups"]).affinity_every == 1
    # grouping never happens: no affinity needed
    load_config(None, ["strategy=fedrep-groups", "affinity-every=0", "group-after=100", "num-rounds=100"])


SETTING = ["strategy=fedrep-groups", "partitioner=rotated", "num-rotations=2", "num-groups=2",
           "num-clients=8", "fraction-train=1.0", "num-rounds=4", "group-after=2", "head-epochs=2"]


def run(path, *extra):
    config = load_config(None, [*SETTING, *extra])
    grid = InProcessGrid(app, 2)
    writer = RunWriter(path, config.to_dict())
    run_rounds(grid, config, writer, 2)
    writer.finish()
    return config, grid, writer.rows


def test_affinity_phase_moves_model_updates_and_scalars_only(tmp_path):
    config, grid, rows = run(tmp_path / "run")
    data = load_dataset(config)
    body = {k for k in client_model(config, data).state_dict() if k.startswith("body.")}
    n_samples = min(len(s.train) for s in make_split(config, data))
    asked = [m for m in grid.sent if m.metadata.message_type == "train.affinity"]
    answers = [r for r in grid.replies if "affinity" in r.content.get("metrics", {})]
    assert len(asked) == 2 * 2 and len(answers) == len(asked)  # 2 nodes × rounds 1, 2
    for msg in asked:  # θ and peers' body updates: model entries only
        assert set(msg.content["arrays"].keys()) == set(msg.content["deltas"].keys()) == body
        for value in msg.content["config"].values():
            assert not isinstance(value, list) or len(value) < n_samples
    for reply in answers:  # scalars only: one Z per (client, peer), nothing per sample
        assert list(reply.content.keys()) == ["metrics"]
        m = reply.content["metrics"]
        assert len(m["affinity"]) == len(m["peer-ids"]) == sum(m["peer-counts"])
        assert all(isinstance(z, float) for z in m["affinity"])
        assert all(count == 7 for count in m["peer-counts"])  # every other participant
    assert len(rows[0]["affinity"]) == len(rows[1]["affinity"]) == 8 * 7
    assert "affinity" not in rows[2]  # only up to group-after


def test_groups_get_their_own_bodies_averaged_within_the_group(tmp_path):
    config, grid, rows = run(tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert rows[1]["grouping_method"] == "exact" == summary["grouping_method"]  # 8 clients
    groups = summary["groups"]
    assert groups == rows[-1]["groups"] and sorted(set(groups)) == [0, 1]
    assert summary["planted_groups"] == planted_groups(config)
    assert summary["group_ari"] == pytest.approx(adjusted_rand_index(groups, planted_groups(config)))
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    round3 = [m for m in train if m.content["config"]["server-round"] == 3]
    round4 = [m for m in train if m.content["config"]["server-round"] == 4]
    assert all(a.numpy().shape[0] == 2 for m in round3 for a in m.content["arrays"].values())
    for m in round3:
        record = m.content["config"]
        assert list(record["client-groups"]) == [groups[c] for c in record["clients"]]
    # round 3's replies averaged (sample-weighted) per group are round 4's bodies
    replies = [r for m, r in zip(grid.sent, grid.replies) if any(m is x for x in round3)]
    sums, weights = {}, {}
    for reply in replies:
        metrics = reply.content["metrics"]
        for k, (client, n) in enumerate(zip(metrics["client-ids"], metrics["client-examples"])):
            g = groups[client]
            weights[g] = weights.get(g, 0) + n
            for name, array in reply.content["arrays"].items():
                sums.setdefault((g, name), 0)
                sums[(g, name)] = sums[(g, name)] + n * array.numpy()[k].astype(np.float64)
    sent = round4[0].content["arrays"]
    for (g, name), total in sums.items():
        np.testing.assert_allclose(sent[name].numpy()[g], total / weights[g], rtol=1e-5, atol=1e-6)


def test_same_seed_same_groups_and_metrics(tmp_path):
    _, _, first = run(tmp_path / "a")
    _, _, second = run(tmp_path / "b")
    drop = ("round_seconds", "affinity_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in first] == \
        [{k: v for k, v in r.items() if k not in drop} for r in second]


def test_affinity_peers_bounds_the_transfers(tmp_path):
    _, grid, rows = run(tmp_path / "run", "affinity-peers=2", "num-rounds=2", "group-after=1")
    for msg in grid.sent:
        if msg.metadata.message_type == "train.affinity":
            assert all(count == 2 for count in msg.content["config"]["peer-counts"])
            assert len(msg.content["config"]["delta-ids"]) <= 2 * len(msg.content["config"]["clients"])
    assert len(rows[0]["affinity"]) == 8 * 2


def test_affinity_heat_map_from_a_run(tmp_path):
    config, _, rows = run(tmp_path / "run")
    z = affinity_matrix(rows, config.num_clients)
    assert np.isnan(np.diag(z)).all() and np.isfinite(z[~np.eye(8, dtype=bool)]).all()
    i, j, value = rows[0]["affinity"][0]
    second = next(v for a, b, v in rows[1]["affinity"] if (a, b) == (i, j))
    assert z[i, j] == pytest.approx((value + second) / 2)  # the running mean over rounds
    assert main(["affinity", str(tmp_path / "run"), "-o", str(tmp_path / "z.png")]) == 0
    assert (tmp_path / "z.png").stat().st_size > 0
    assert plot_affinity(tmp_path / "run", tmp_path / "y.png").is_file()


def test_a_run_without_affinity_is_refused_by_the_heat_map(tmp_path, capsys):
    run(tmp_path / "run", "affinity-every=0", "group-after=4")
    assert main(["affinity", str(tmp_path / "run"), "-o", str(tmp_path / "z.png")]) == 2
    assert "measured no affinity" in capsys.readouterr().err


def test_groups_and_affinity_survive_a_checkpoint_and_resume(tmp_path):
    # cut after round 2 (the grouping round), resumed on another node layout
    config = load_config(None, [*SETTING, "num-rounds=4", "checkpoint-every=2"])
    whole = RunWriter(tmp_path / "whole", config.to_dict())
    run_rounds(InProcessGrid(app, 2), config, whole, 2)

    checkpoint = cut_and_resume(tmp_path / "cut", config)
    assert checkpoint.round == 2 and checkpoint.strategy_state["groups"] == 2
    drop = ("round_seconds", "affinity_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in read_run(tmp_path / "cut")[1]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in whole.rows]


def _affinity_variants():
    """experiments/affinity_variants.py as a module (its pure helpers)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "affinity_variants.py"
    spec = importlib.util.spec_from_file_location("affinity_variants", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_double_centred_by_hand():
    # off-diagonal row means 1.5, 4, 6.5; column means 4.5, 4, 3.5; overall 4
    z = np.array([[0.0, 1, 2], [3, 0, 5], [6, 7, 0]])
    expected = np.array([[0.0, -0.5, 1.0], [-1.5, 0.0, 1.5], [-1.0, 0.5, 0.0]])
    np.testing.assert_allclose(_affinity_variants().double_centred(z), expected)


def test_angle_means_by_hand():
    # 4 clients, rotations 0, 90, 180, 270 (planted c mod 4); classes {0}, {0}, {1}, {1}
    z = np.array([[0.0, 1, 2, 3], [4, 0, 5, 6], [7, 8, 0, 9], [10, 11, 12, 0]])
    off = z[~np.eye(4, dtype=bool)]
    mean, std = off.mean(), off.std()
    # 90° apart: pairs (0,1) shared, (1,0) shared, (2,3), (3,2) shared, the rest not
    ninety_shared = np.mean([1, 4, 9, 12])
    ninety_not = np.mean([3, 5, 8, 10])  # (0,3), (1,2), (2,1), (3,0)
    one_eighty_not = np.mean([2, 6, 7, 11])  # (0,2), (1,3), (2,0), (3,1)
    got = _affinity_variants().angle_means(z, [0, 1, 2, 3], 4, [{0}, {0}, {1}, {1}])
    assert np.isnan(got[0]) and np.isnan(got[1]) and np.isnan(got[4])
    np.testing.assert_allclose(got[2:4] + got[5:], np.array([ninety_shared, ninety_not, one_eighty_not]) / std
                               - mean / std)


def test_pairs_by_kind_by_hand():
    from fedsim.rotated import PAIR_KINDS, pairs_by_kind

    # 4 clients at 0°, 90°, 180°, 270°; classes {0}, {0}, {1}, {1}; an unmeasured pair is left out
    z = np.array([[0.0, 1, 2, 3], [4, 0, 5, 6], [7, 8, 0, 9], [10, 11, np.nan, 0]])
    kinds = dict(zip(PAIR_KINDS, pairs_by_kind(z, [0, 1, 2, 3], 4, [{0}, {0}, {1}, {1}])))
    assert kinds[(0, True)] == [] and kinds[(0, False)] == [] and kinds[(180, True)] == []
    assert sorted(kinds[(90, True)]) == [1, 4, 9]  # (0,1), (1,0), (2,3); (3,2) is nan
    assert sorted(kinds[(90, False)]) == [3, 5, 8, 10]
    assert sorted(kinds[(180, False)]) == [2, 6, 7, 11]
