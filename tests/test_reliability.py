"""Checkpoint/resume and fault injection on the real apps in process (Ray tests are in
test_simulation_ray.py)."""

import json

import numpy as np
import pytest
from inprocess import InProcessGrid, cut_and_resume

from clients.app import app
from fedsim.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedsim.config import Config
from fedsim.data import DataError
from fedsim.history import RunWriter, read_run
from fedsim.server import ClientFailure, run_rounds


def config(**changes):
    base = dict(num_rounds=4, num_clients=6, fraction_train=0.5, head_epochs=1, checkpoint_every=2)
    return Config(**{**base, **changes})


def timing_free(rows):
    return [{k: v for k, v in r.items() if k != "round_seconds"} for r in rows]


def test_checkpoint_file_round_trip_is_exact_and_pickle_free(tmp_path):
    ckpt = Checkpoint(3, {"body.w": np.arange(6, dtype=np.float32).reshape(2, 3)},
                      {"4/head.b": np.array([0.5, -1.0], dtype=np.float32)}, {"ema": [0.25]})
    save_checkpoint(tmp_path, ckpt)
    back = load_checkpoint(tmp_path)
    assert back.round == 3 and back.strategy_state == {"ema": [0.25]}
    np.testing.assert_array_equal(back.server["body.w"], ckpt.server["body.w"])
    np.testing.assert_array_equal(back.clients["4/head.b"], ckpt.clients["4/head.b"])
    (tmp_path / "checkpoint.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="is unreadable"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "elsewhere")


@pytest.mark.parametrize("strategy, changes", [
    ("fedrep", {}), ("ditto", {}),
    ("fedrep", {"keep_optimizer_state": True, "lr_schedule": "cosine", "vectorize": "on"}),
    ("fedavg", {"keep_optimizer_state": True, "vectorize": "off"}),
    ("fedrep", {"aggregation": "gradnorm"}),  # the GradNorm weights are checkpointed
])
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, strategy, changes):
    cfg = config(strategy=strategy, **changes)
    whole = RunWriter(tmp_path / "whole", cfg.to_dict())
    run_rounds(InProcessGrid(app, 2), cfg, whole, 2)

    # killed in round 3, resumed as a new process: fresh node contexts, another node layout
    checkpoint = cut_and_resume(tmp_path / "cut", cfg)
    assert checkpoint.round == 2 and any(k.startswith("0/") or k.startswith("1/") for k in checkpoint.clients)
    assert timing_free(read_run(tmp_path / "cut")[1]) == timing_free(whole.rows)


def test_dropout_and_crashes_within_budget_are_counted(tmp_path):
    cfg = config(client_dropout=0.3, client_crash=0.3, max_failures=6, fraction_train=1.0)
    writer = RunWriter(tmp_path / "faults", cfg.to_dict())
    run_rounds(InProcessGrid(app, 2), cfg, writer, 2)
    assert sum(r["dropped"] for r in writer.rows) > 0 and sum(r["failures"] for r in writer.rows) > 0
    for r in writer.rows:
        assert r["clients_trained"] + r["dropped"] + r["failures"] == 6
    again = RunWriter(tmp_path / "again", cfg.to_dict())
    run_rounds(InProcessGrid(app, 3), cfg, again, 3)
    assert timing_free(again.rows) == timing_free(writer.rows)  # faults are seeded


def test_crashes_beyond_budget_stop_the_run_naming_clients(tmp_path):
    cfg = config(client_crash=0.5, max_failures=1, fraction_train=1.0)
    writer = RunWriter(tmp_path / "crash", cfg.to_dict())
    with pytest.raises(ClientFailure, match=r"client\(s\) failed \(max-failures = 1\)\n  client \d: "
                       r"RuntimeError: injected crash \(client-crash = 0.5\)"):
        run_rounds(InProcessGrid(app, 2), cfg, writer, 2)


def test_killed_run_keeps_readable_metrics(tmp_path):
    path = tmp_path / "run"
    writer = RunWriter(path, {"a": 1})
    writer.log_round({"round": 1, "accuracy": 0.5})
    with open(path / "metrics.jsonl", "a") as handle:
        handle.write('{"round": 2, "accur')  # cut mid-line by a kill
    assert read_run(path)[1] == [{"round": 1, "accuracy": 0.5}]
    assert json.loads((path / "config.json").read_text()) == {"a": 1}


def test_run_once_reuses_only_a_completed_run_of_the_same_config(tmp_path, monkeypatch):
    import fedsim.simulation as simulation

    calls = []

    def fake_run(cfg, run_dir, progress=False):
        calls.append(cfg.seed)
        writer = RunWriter(run_dir, cfg.to_dict())
        writer.log_round({"round": 1, "accuracy": float(cfg.seed), "loss": 0.0})
        writer.finish()

    monkeypatch.setattr(simulation, "run", fake_run)
    run_dir = tmp_path / "run"
    assert simulation.run_once(config(seed=1), run_dir)[0]["accuracy"] == 1.0
    assert simulation.run_once(config(seed=1), run_dir)[0]["accuracy"] == 1.0
    assert calls == [1]  # the second call reused the run
    assert simulation.run_once(config(seed=2), run_dir)[0]["accuracy"] == 2.0
    assert calls == [1, 2]  # another config: run again, not the stale rows
    (run_dir / "summary.json").unlink()  # a run cut short is run again
    simulation.run_once(config(seed=2), run_dir)
    assert calls == [1, 2, 2]
