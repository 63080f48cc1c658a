"""The experiment protocol (issue 19): validation sets, unseen clients, the accuracy
spread, TensorBoard events, sweeps and selection by validation."""

import json

import numpy as np
import pytest
import torch
from inprocess import InProcessGrid

from clients import engine, specs
from clients.app import app
from fedsim import sweep as sweeping
from fedsim.config import Config, ConfigError
from fedsim.data import ClientSplit, carve_validation, client_splits
from fedsim.history import RunWriter
from fedsim.server import run_rounds, spread
from strategies.base import CohortFedAvg as FedAvg


def run(tmp_path, **changes):
    config = Config(num_rounds=2, num_clients=6, fraction_train=1.0, head_epochs=1, **changes)
    grid = InProcessGrid(app, 2)
    writer = RunWriter(tmp_path / f"run{len(list(tmp_path.iterdir()))}", config.to_dict())
    run_rounds(grid, config, writer, 2)
    writer.finish()
    return grid, writer.rows


def test_spread_of_client_accuracies():
    assert spread([0.5, 1.0, 0.0, 0.25]) == {
        # mean 0.4375; squared deviations 1/256 + 81/256 + 49/256 + 9/256 = 0.546875
        "accuracy_std": pytest.approx(np.sqrt(0.546875 / 4)),
        "accuracy_p10": pytest.approx(0.075),  # numpy's linear interpolation: 0 + 0.3 * 0.25
        "accuracy_min": 0.0,
    }


def test_validation_is_carved_out_of_training_data_only():
    splits = [ClientSplit(np.arange(10), np.arange(100, 104)),
              ClientSplit(np.arange(10, 13), np.arange(104, 106))]
    out = carve_validation(splits, 0.2, seed=0)
    assert [len(s.val) for s in out] == [2, 1]  # round(0.2 * 3) = 1: at least one
    assert [len(s.train) for s in out] == [8, 2]
    for before, after in zip(splits, out):
        assert np.array_equal(np.sort(np.concatenate([after.train, after.val])), before.train)
        assert np.array_equal(after.test, before.test)
    assert all(np.array_equal(a.val, b.val) for a, b in zip(out, carve_validation(splits, 0.2, seed=0)))
    assert not np.array_equal(out[0].val, carve_validation(splits, 0.2, seed=1)[0].val)


def test_val_fraction_logs_val_accuracy_and_config_rejects_bad_values(tmp_path):
    _, rows = run(tmp_path, val_fraction=0.2)
    assert all(0.0 <= r["val_accuracy"] <= 1.0 for r in rows)
    splits = client_splits(Config(num_clients=6, val_fraction=0.2))
    assert all(len(s.val) > 0 for s in splits)
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="val-fraction"):
            Config(val_fraction=bad).check()
    with pytest.raises(ConfigError, match="holdout-clients"):
        Config(holdout_clients=1.0).check()


def test_held_out_clients_never_train_and_are_scored_apart(tmp_path):
    config = Config(num_clients=6, holdout_clients=0.34)
    held = config.holdout()
    assert len(held) == 2 and held == Config(num_clients=6, holdout_clients=0.34).holdout()
    grid, rows = run(tmp_path, holdout_clients=0.34)
    trained = {c for m in grid.sent if m.metadata.message_type == "train"
               for c in m.content["config"]["clients"]}
    assert trained == set(range(6)) - set(held)
    for row in rows:
        assert set(row["clients_unseen"]) == {str(c) for c in held}
        assert not set(row["clients"]) & set(row["clients_unseen"])
        assert 0.0 <= row["unseen_accuracy"] <= 1.0
    # no personal state was ever stored for a held-out client
    stored = {key.partition("/")[0] for ctx in grid.contexts.values()
              for key in (ctx.state["personal"].keys() if "personal" in ctx.state else [])}
    assert stored and not stored & {str(c) for c in held}


def _states(model, shared_names, rows=1):
    return {k: v.detach().clone().unsqueeze(0).repeat(rows, *([1] * v.dim()))
            for k, v in model.state_dict().items()}


def test_unseen_fedrep_client_trains_a_head_on_the_received_body():
    from torch import nn

    from fedsim.models import SplitModel

    torch.manual_seed(0)
    model = SplitModel(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), nn.Linear(3, 2))
    states = _states(model, None)
    before = {k: v.clone() for k, v in states.items()}
    x, y = torch.randn(12, 4), torch.arange(12) % 2
    shared = [n for n in states if n.startswith("body.")]
    engine.adapt_unseen(model, specs.FEDREP, states, [0], ([x], [y]), shared,
                        Config(head_epochs=2, body_epochs=1), [torch.Generator().manual_seed(0)])
    for name in states:
        moved = not torch.equal(states[name], before[name])
        assert moved == name.startswith("head."), name  # the body stays as received


def test_unseen_fedavg_client_evaluates_the_global_model_as_is():
    from torch import nn

    from fedsim.models import SplitModel

    model = SplitModel(nn.Sequential(nn.Linear(4, 3)), nn.Linear(3, 2))
    states = _states(model, None)
    before = {k: v.clone() for k, v in states.items()}
    x, y = torch.randn(12, 4), torch.arange(12) % 2
    engine.adapt_unseen(model, specs.FEDAVG, states, [0], ([x], [y]), list(states), Config(),
                        [torch.Generator().manual_seed(0)])
    assert all(torch.equal(states[k], before[k]) for k in states)


def test_unseen_ditto_client_starts_its_personal_model_at_the_global_one():
    from torch import nn

    model = nn.ModuleDict({"shared": nn.Linear(4, 2), "personal": nn.Linear(4, 2)})
    states = _states(model, None)
    shared = [n for n in states if n.startswith("shared.")]
    x, y = torch.randn(6, 4), torch.arange(6) % 2
    # no epochs: the personal model is exactly the global one it started from
    engine.adapt_unseen(model, specs.DITTO, states, [0], ([x], [y]), shared, Config(local_epochs=0),
                        [torch.Generator().manual_seed(0)])
    for name in ("weight", "bias"):
        assert torch.equal(states[f"personal.{name}"], states[f"shared.{name}"])


def test_holdout_sampling_leaves_runs_without_holdout_unchanged():
    config = Config(num_clients=10, fraction_train=0.3, fraction_evaluate=0.5)
    strategy = FedAvg(config)
    assert strategy.sample(3, 0.3, 0) == FedAvg(config).sample(3, 0.3, 0)
    held = FedAvg(config.replace(holdout_clients=0.2))
    assert not set(held.sample(3, 0.3, 0)) & set(held.config.holdout())
    assert set(held.config.holdout()) <= set(held.sample(3, 0.5, 1))


def test_tensorboard_events_hold_the_rows(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, rows = run(tmp_path, tensorboard=True)
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("accuracy", "loss", "train_loss", "accuracy_p10", "accuracy_std", "accuracy_min"):
        assert tag in tags
        assert [(e.step, round(e.value, 5)) for e in events.Scalars(tag)] == [
            (r["round"], round(r[tag], 5)) for r in rows]


def test_event_scalars_of_a_row():
    from fedsim.events import scalars

    row = {"round": 3, "accuracy": 0.5, "kd3a_weights": [0.25, 0.75], "clients": {"0": 1.0},
           "notice": "text", "round_seconds": 1.0, "dropped": 0}
    assert scalars(row) == {"accuracy": 0.5, "kd3a_weights/0": 0.25, "kd3a_weights/1": 0.75, "dropped": 0.0}
    # KD3A's weights and focus come keyed by client id (GradNorm's client_weights too)
    row = {"round": 1, "target_weights": {"4": 0.2}, "source_weights": {"0": 0.5, "1": 0.3},
           "consensus_focus": {"0": 1.5, "1": 0.0}, "failures": {"0": "text"}, "clients_loss": {"0": 1.0}}
    assert scalars(row) == {"target_weights/4": 0.2, "source_weights/0": 0.5, "source_weights/1": 0.3,
                            "consensus_focus/0": 1.5, "consensus_focus/1": 0.0}


def test_grid_arguments_are_checked():
    assert sweeping.parse_grid(["lr=0.01,0.05", "strategy=fedrep"]) == [
        ("lr", ["0.01", "0.05"]), ("strategy", ["fedrep"])]
    for bad, match in (("lr", "KEY=V1"), ("lr=", "KEY=V1"), ("seed=1,2", "--seeds")):
        with pytest.raises(ConfigError, match=match):
            sweeping.parse_grid([bad])
    with pytest.raises(ConfigError, match="given twice"):
        sweeping.parse_grid(["lr=0.1", "lr=0.2"])
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        sweeping.plan(None, [], [("lrr", ["0.1"])], [0], "out")
    with pytest.raises(ConfigError, match="lr = -1"):
        sweeping.plan(None, [], [("lr", ["0.1", "-1"])], [0], "out")


def _fake_run(run_dir, val, test, strategy):
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({
        "status": "completed", "final_val_accuracy": val, "final_accuracy": test, "best_accuracy": test,
        "final_accuracy_p10": test, "final_unseen_accuracy": None, "final_loss": 1.0, "wall_seconds": 1.0}))


def test_select_by_validation_never_looks_at_test_accuracy(tmp_path):
    grid = [("strategy", ["fedrep", "fedavg"]), ("lr", ["0.01", "0.1"])]
    sweep = sweeping.plan(None, ["val-fraction=0.2"], grid,
                          [0, 1], tmp_path)
    # validation prefers lr=0.01 for fedrep and lr=0.1 for fedavg; test accuracy says the opposite
    val = {("fedrep", "0.01"): 0.9, ("fedrep", "0.1"): 0.5, ("fedavg", "0.01"): 0.4, ("fedavg", "0.1"): 0.6}
    for point in sweep.points:
        values = dict(point.values)
        for seed in sweep.seeds:
            score = val[values["strategy"], values["lr"]]
            _fake_run(sweep.run_dir(point, seed), score, 1.0 - score, values["strategy"])
    text = sweeping.selection_table(sweep, sweeping.collect(sweep))
    assert "| fedrep | lr=0.01 | 90.00 ± 0.00 | 10.00 ± 0.00 |" in text
    assert "| fedavg | lr=0.1 | 60.00 ± 0.00 | 40.00 ± 0.00 |" in text
    # the choice is a function of validation accuracies alone: any test accuracies give it
    records = sweeping.collect(sweep)
    for record in records:
        record["final_accuracy"] = float(np.random.default_rng(0).random())
    assert sweeping.selection_table(sweep, records).split("\n")[2].startswith("| fedrep | lr=0.01 |")
    group_of = {p: dict(p.values)["strategy"] for p in sweep.points}
    chosen = sweeping.select_by_validation(sweep.points, {p: [val[tuple(dict(p.values).values())]]
                                                          for p in sweep.points}, group_of)
    assert {g: dict(p.values)["lr"] for g, p in chosen.items()} == {"fedrep": "0.01", "fedavg": "0.1"}


def test_select_val_needs_a_validation_set(tmp_path):
    sweep = sweeping.plan(None, [], [("strategy", ["fedrep"])], [0], tmp_path)
    with pytest.raises(ConfigError, match="val-fraction"):
        sweeping.execute(sweep, select="val")


@pytest.mark.ray
def test_sweep_runs_on_one_ray_start_reuses_completed_runs_and_survives_a_failed_one(tmp_path, monkeypatch):
    import ray

    from fedsim.cli import main

    starts = []
    real_init = ray.init
    monkeypatch.setattr(ray, "init", lambda *a, **k: (starts.append(1), real_init(*a, **k))[1])
    args = ["sweep", "--grid", "strategy=fedrep,fedavg", "--grid", "client-crash=0,0.95",
            "--seeds", "0", "--set", "num-rounds=2", "--set", "num-clients=4", "--set", "fraction-train=1",
            "--out", str(tmp_path / "sw")]
    assert main(args) == 1  # the two runs at client-crash = 0.95 failed; the others completed
    assert len(starts) == 1
    import csv

    with open(tmp_path / "sw" / "runs.csv", newline="") as f:
        status = {row["run"]: row["status"] for row in csv.DictReader(f)}
    assert status == {"fedrep_client-crash=0-seed0": "completed", "fedrep_client-crash=0.95-seed0": "failed",
                      "fedavg_client-crash=0-seed0": "completed", "fedavg_client-crash=0.95-seed0": "failed"}
    assert (tmp_path / "sw" / "table.md").read_text().count("| 1/1 |") == 2
    # the completed runs are reused: only the points that failed are run again
    starts.clear()
    assert main([*args[:4], "client-crash=0", *args[5:]]) == 0
    assert starts == []


def test_unseen_fedavg_ft_client_fine_tunes_a_fresh_head():
    from torch import nn

    from fedsim.models import SplitModel

    torch.manual_seed(0)
    model = SplitModel(nn.Sequential(nn.Linear(4, 3)), nn.Linear(3, 2))
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    states = _states(model, None)
    states["head.weight"] += 1.0  # the received (trained) global head
    received_body = states["body.0.weight"].clone()
    x, y = torch.randn(12, 4), torch.arange(12) % 2
    engine.adapt_unseen(model, specs.FEDAVG_FT, states, [0], ([x], [y]), list(states), Config(),
                        [torch.Generator().manual_seed(0)], initial)
    assert torch.equal(states["head.weight"][0], initial["head.weight"])  # fine-tuning comes after
    assert torch.equal(states["body.0.weight"], received_body)


def test_tensorboard_without_the_package_is_refused_before_anything_starts(monkeypatch):
    from fedsim import events
    from fedsim.validate import load_config

    def missing():
        raise ImportError(events.MISSING)

    monkeypatch.setattr(events, "require", missing)
    with pytest.raises(ConfigError, match=r"pip install 'fedsim\[tensorboard\]'"):
        load_config(None, ["tensorboard=true"])
    load_config(None, ["tensorboard=false"])  # off needs nothing
