"""The real ServerApp round loop and ClientApp, run in process through InProcessGrid."""

import numpy as np
import pytest
from inprocess import InProcessGrid

from clients.app import app
from clients.personal import personal_arrays
from fedsim.config import Config
from fedsim.history import RunWriter
from fedsim.server import ClientFailure, assign_nodes, run_rounds


def run(tmp_path, num_nodes=2, **changes):
    config = Config(**{"num_rounds": 3, "num_clients": 6, "fraction_train": 0.5, "head_epochs": 2, **changes})
    grid = InProcessGrid(app, num_nodes)
    writer = RunWriter(tmp_path / f"run-{num_nodes}-{len(list(tmp_path.iterdir()))}", config.to_dict())
    run_rounds(grid, config, writer, num_nodes)
    writer.finish()
    return grid, writer.rows


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k != "round_seconds"} for r in rows]


def test_fedrep_server_never_receives_a_head(tmp_path):
    grid, rows = run(tmp_path)
    train_replies = [r for r in grid.replies if "arrays" in r.content]
    assert train_replies
    for reply in train_replies:
        for key in reply.content["arrays"].keys():
            assert key.startswith("body."), key
    for msg in grid.sent:  # and never sends one
        if "arrays" in msg.content:
            assert all(k.startswith("body.") for k in msg.content["arrays"].keys())


def test_fedavg_shares_the_whole_model(tmp_path):
    grid, _ = run(tmp_path, strategy="fedavg")
    names = {k for r in grid.replies if "arrays" in r.content
             for k in r.content["arrays"].keys()}
    assert any(n.startswith("head.") for n in names) and any(n.startswith("body.") for n in names)
    assert all("personal" not in ctx.state for ctx in grid.contexts.values())


def test_heads_persist_in_client_state_across_rounds(tmp_path, monkeypatch):
    from fedsim import server

    saved = []
    monkeypatch.setattr(server, "save_checkpoint", lambda directory, checkpoint: saved.append(checkpoint))
    config = Config(num_rounds=2, num_clients=4, fraction_train=1.0, head_epochs=1, checkpoint_every=1)
    grid = InProcessGrid(app, 2)
    run_rounds(grid, config, RunWriter(tmp_path / "r", config.to_dict()), 2)
    heads = [checkpoint.clients for checkpoint in saved]
    assert sorted(heads[0]) == sorted(f"{c}/head.{p}" for c in range(4) for p in ("weight", "bias"))
    # round 2 trained the heads stored in round 1 further: they moved again
    assert any(not np.array_equal(heads[0][k], heads[1][k]) for k in heads[0])


def test_a_new_run_on_the_same_nodes_starts_from_empty_client_state(tmp_path):
    """The runs of a sweep share the nodes: a run's metrics must not depend on what
    an earlier run left there."""
    config = Config(num_rounds=2, num_clients=4, fraction_train=1.0, head_epochs=1)
    grid = InProcessGrid(app, 2)
    run_rounds(grid, config.replace(seed=5), RunWriter(tmp_path / "other", config.to_dict()), 2)
    reused = RunWriter(tmp_path / "reused", config.to_dict())
    run_rounds(grid, config, reused, 2)
    fresh = RunWriter(tmp_path / "fresh", config.to_dict())
    run_rounds(InProcessGrid(app, 2), config, fresh, 2)
    assert strip_timing(reused.rows) == strip_timing(fresh.rows)


def test_metrics_identical_for_any_number_of_nodes(tmp_path):
    _, one = run(tmp_path, num_nodes=1)
    _, three = run(tmp_path, num_nodes=3)
    _, six = run(tmp_path, num_nodes=6)
    assert strip_timing(one) == strip_timing(three) == strip_timing(six)


def test_rows_have_the_documented_fields(tmp_path):
    _, rows = run(tmp_path, eval_every=2)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert "accuracy" not in rows[0]  # eval-every = 2, but the last round is always evaluated
    for r in rows[1:]:
        assert set(r["clients"]) == {str(c) for c in range(6)}
        assert 0.0 <= r["accuracy"] <= 1.0 and r["loss"] > 0
    assert all(r["clients_trained"] == 3 for r in rows)


def test_client_exception_names_the_clients(tmp_path, monkeypatch):
    from clients.phases import ClientSpec, Phase, Routine
    from fedsim import algorithms

    def explode(*args):
        raise RuntimeError("disk on fire")

    spec = ClientSpec(train=(Phase("explode", "", "local_epochs", routine=Routine(explode)),))
    algorithm = algorithms.Algorithm("strategies.fedrep:FedRep", spec)
    monkeypatch.setitem(algorithms.ALGORITHMS, "fedrep", algorithm)
    with pytest.raises(ClientFailure, match=r"3 client\(s\) failed \(max-failures = 0\)\n  client \d: "
                       r"RuntimeError: disk on fire \(at .*test_apps_inprocess.py:\d+\)"):
        run(tmp_path)


def test_different_seeds_give_different_metrics(tmp_path):
    _, zero = run(tmp_path)
    _, one = run(tmp_path, seed=1)
    assert strip_timing(zero) != strip_timing(one)


def test_clients_are_assigned_to_nodes_in_consecutive_runs_balanced_by_load():
    # midpoints of the loads' running total (2.5, 9.5, 14.5, 18.5, 23.5 of 25) in halves
    assert assign_nodes([5, 9, 1, 7, 3], 2) == [0, 0, 1, 1, 1]
    assert assign_nodes([4, 4, 4], 3) == [0, 1, 2]
    assert assign_nodes([2, 2], 1) == [0, 0]
    assert assign_nodes([100, 1, 1], 3) == [0, 1, 2]  # every node gets a client
    assert assign_nodes([3, 3], 4) == [0, 1]
    loads = np.random.default_rng(0).lognormal(3, 1, 100).astype(int).tolist()
    for count in (2, 3, 5):
        nodes = assign_nodes(loads, count)
        assert nodes == sorted(nodes) and set(nodes) == set(range(count))
        totals = [sum(x for x, n in zip(loads, nodes) if n == k) for k in range(count)]
        assert max(abs(t - sum(loads) / count) for t in totals) <= max(loads)


def test_personal_state_is_one_stacked_array_per_parameter():
    import pickle

    from flwr.app import Context, RecordDict

    from clients.personal import Personal

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    personal = Personal.of(context)
    for client in range(500):
        personal.put(client, "head.weight", np.full((2, 3), client, dtype=np.float32))
        personal.put(client, "bn.num_batches_tracked", np.array(client, dtype=np.int64))
    personal.save(context)
    record = pickle.loads(pickle.dumps(context)).state["personal"]  # as Flower ships it
    assert sorted(record.keys()) == ["bn.num_batches_tracked", "bn.num_batches_tracked#clients",
                                     "head.weight", "head.weight#clients"]
    again = Personal(record)
    again.put(7, "head.weight", np.zeros((2, 3), dtype=np.float32))  # in place
    again.put(900, "head.weight", np.ones((2, 3), dtype=np.float32))  # a new row
    assert again.get(3, "bn.num_batches_tracked").shape == ()
    assert again.get(900, "bn.num_batches_tracked") is None
    again.save(context)
    arrays = personal_arrays(context)
    assert len(arrays) == 1001
    np.testing.assert_array_equal(arrays["7/head.weight"], np.zeros((2, 3)))
    np.testing.assert_array_equal(arrays["900/head.weight"], np.ones((2, 3)))
    np.testing.assert_array_equal(arrays["499/head.weight"], np.full((2, 3), 499))
    assert int(arrays["499/bn.num_batches_tracked"]) == 499


def test_restore_replaces_everything_a_node_held():
    from flwr.app import Array, ArrayRecord, Message, RecordDict

    from clients.personal import Personal

    grid = InProcessGrid(app, 1)
    held = Personal.of(grid.contexts[1000])
    held.put(0, "head.weight", np.ones(2, dtype=np.float32))
    held.save(grid.contexts[1000])
    arrays = ArrayRecord({"3/head.bias": Array(np.zeros(1, dtype=np.float32))})
    (reply,) = grid.send_and_receive([Message(RecordDict({"arrays": arrays}), dst_node_id=1000,
                                              message_type="query.restore")])
    assert not reply.has_error()
    assert list(personal_arrays(grid.contexts[1000])) == ["3/head.bias"]


def test_an_evaluation_travels_with_the_next_rounds_training(tmp_path, monkeypatch):
    """One exchange per round: round r's evaluate config rides on round r+1's train
    messages (nodes that train nothing get it on its own); the rows equal those of a
    run that evaluates in an exchange of its own (checkpointed rounds evaluate at once)."""
    from fedsim import server

    monkeypatch.setattr(server, "save_checkpoint", lambda directory, checkpoint: None)
    changes = dict(num_rounds=4, fraction_train=0.34, fraction_evaluate=1.0)
    grid, deferred = run(tmp_path, num_nodes=6, **changes)
    _, at_once = run(tmp_path, num_nodes=6, checkpoint_every=1, **changes)
    assert strip_timing(deferred) == strip_timing(at_once)
    assert [r["round"] for r in deferred] == [1, 2, 3, 4] and all("accuracy" in r for r in deferred)
    carried = [m for m in grid.sent if "evaluate" in m.content]
    alone = [m for m in grid.sent if m.metadata.message_type == "evaluate"]
    assert len(carried) == 3 * 2  # rounds 2-4: two training nodes each carry the last evaluation
    assert len(alone) == 3 * 4 + 6  # the other four nodes on their own; round 4 evaluates at once
    assert all("evaluation" in r.content for r in grid.replies if "evaluate" in r.content)


def test_an_evaluation_whose_train_message_failed_is_sent_again(tmp_path, monkeypatch):
    from clients import app as client_app

    original = client_app._Actor.train

    def train(self, clients, shared, personal, server_round, failed, errors):
        if server_round == 2:
            raise RuntimeError("node lost")  # the whole message fails, its evaluation with it
        return original(self, clients, shared, personal, server_round, failed, errors)

    _, clean = run(tmp_path)
    monkeypatch.setattr(client_app._Actor, "train", train)
    grid, rows = run(tmp_path, max_failures=6)
    assert rows[0] == {**rows[0], **{k: v for k, v in clean[0].items() if k != "round_seconds"}}
    assert rows[1]["failures"] == 3 and rows[1]["accuracy"] is not None
