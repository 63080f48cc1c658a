"""Block sums: the weighted average's order, on the nodes and on the server."""

import numpy as np
import pytest
from inprocess import InProcessGrid

from clients.app import _sum_blocks, app
from fedsim.config import Config
from fedsim.history import RunWriter
from fedsim.server import run_rounds
from fedsim.summation import BLOCK, block_sums, combine
from strategies.aggregate import weighted_average
from strategies.base import CohortFedAvg
from strategies.fedrep import FedRep
from strategies.kd3a import KD3A


def sequential(weights, values):
    acc = np.zeros_like(values[0], dtype=np.float64)
    for w, v in zip(weights, values):
        acc += float(w) * v.astype(np.float64)
    return acc / float(sum(weights))


def test_the_blocks_are_summed_first_then_added_in_order():
    # 2^30 then 31 × 2^-24: one after another every 2^-24 is a quarter of 2^30's ulp (2^-22)
    # and is lost; block 1's sixteen make 2^-20 first, which survives
    values = [np.array([2.0 ** 30])] + [np.array([2.0 ** -24])] * 31
    assert sequential([1] * 32, values)[0] == 2.0 ** 25
    out = weighted_average([1] * 32, [{"w": v} for v in values])["w"]
    assert out.dtype == np.float64 and out[0] == 2.0 ** 25 + 2.0 ** -25
    sums = block_sums([1] * 32, [{"w": v} for v in values], [i // BLOCK for i in range(32)])
    assert sums[0]["w"][0] == 2.0 ** 30 and sums[1]["w"][0] == 2.0 ** -20
    assert combine(sums, 32.0, {"w": np.float64})["w"][0] == 2.0 ** 25 + 2.0 ** -25
    # the blocks are added in block order (any other order of these three gives 0)
    three = {2: {"w": np.array([2.0 ** -30])}, 0: {"w": np.array([2.0 ** 30])},
             1: {"w": np.array([-2.0 ** 30])}}
    assert combine(three, 1.0, {"w": np.float64})["w"][0] == 2.0 ** -30


def test_up_to_a_block_of_clients_is_the_plain_sequential_sum():
    rng = np.random.default_rng(3)
    values = [rng.normal(size=(4, 5)).astype(np.float32) for _ in range(BLOCK)]
    weights = rng.integers(1, 500, BLOCK).tolist()
    out = weighted_average(weights, [{"w": v} for v in values])["w"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, sequential(weights, values).astype(np.float32))


def test_a_block_sum_is_the_same_wherever_its_members_lie():
    rng = np.random.default_rng(0)
    stacks = {"w": rng.normal(size=(40, 7)).astype(np.float32),
              "b": rng.normal(size=(40,)).astype(np.float32)}
    examples = rng.integers(1, 90, 40).tolist()
    done = list(range(100, 140))
    blocks = {c: (i // BLOCK if i < 32 else -1) for i, c in enumerate(done)}  # block 2 split elsewhere
    alone, record, sent, ids = _sum_blocks(done, examples, stacks, blocks)
    assert ids == [0, 1] and sent == done[32:]
    np.testing.assert_array_equal(alone["w"], stacks["w"][32:])
    for b in ids:  # a node's block sum is the server's sum of the same members
        rows = range(b * BLOCK, (b + 1) * BLOCK)
        ref = block_sums([examples[i] for i in rows], [{"w": stacks["w"][i]} for i in rows], [b] * BLOCK)
        np.testing.assert_array_equal(record["w"].numpy()[b], ref[b]["w"])
        assert record["w"].numpy().dtype == np.float64


def test_strategies_that_change_the_average_keep_every_update():
    class Median(CohortFedAvg):
        def average(self, weights, updates):
            return {k: np.median([u[k] for u in updates], axis=0) for k in updates[0]}

    class Reweighted(CohortFedAvg):
        def aggregate_train(self, server_round, replies):
            return super().aggregate_train(server_round, replies)

    assert CohortFedAvg.node_sums and FedRep.node_sums
    assert not Median.node_sums and not Reweighted.node_sums and not KD3A.node_sums
    assert not CohortFedAvg(Config(aggregation="gradnorm")).sums_on_nodes()


def test_split_blocks_reply_alone():
    strategy = CohortFedAvg(Config(num_clients=40))
    strategy.node_of = {c: 0 if c < 20 else 1 for c in range(40)}
    clients = list(range(0, 40, 2))  # positions 0–9 on node 0, 10–19 on node 1
    blocks = strategy._node_blocks(clients)
    assert [blocks[c] for c in clients] == [-1] * 16 + [1] * 4  # block 0 is split, block 1 is node 1's
    strategy.node_of = {c: 0 if c < 32 else 1 for c in range(40)}
    blocks = strategy._node_blocks(clients)
    assert [blocks[c] for c in clients] == [0] * 16 + [1] * 4


def rounds(tmp_path, num_nodes, sums=True, **changes):
    config = Config(**{"num_rounds": 3, "num_clients": 40, "fraction_train": 0.9, "strategy": "fedavg",
                       "client_dropout": 0.15, **changes})
    grid = InProcessGrid(app, num_nodes)
    writer = RunWriter(tmp_path / f"run-{num_nodes}-{sums}-{len(list(tmp_path.iterdir()))}", config.to_dict())
    original = CohortFedAvg.node_sums
    CohortFedAvg.node_sums = sums
    try:
        run_rounds(grid, config, writer, num_nodes)
    finally:
        CohortFedAvg.node_sums = original
    writer.finish()
    return grid, [{k: v for k, v in r.items() if k != "round_seconds"} for r in writer.rows]


@pytest.mark.parametrize("strategy", ["fedavg", "fedrep"])
def test_metrics_do_not_depend_on_which_node_sums_which_block(tmp_path, strategy):
    one_grid, one = rounds(tmp_path, 1, strategy=strategy)
    summed = [r for r in one_grid.replies if "sums" in r.content]
    assert summed and all(len(r.content["metrics"]["sent-ids"]) == 0 for r in summed)  # one node: all summed
    for nodes in (2, 3, 7):
        grid, rows = rounds(tmp_path, nodes, strategy=strategy)
        assert rows == one, nodes
        assert any(len(r.content["metrics"]["sent-ids"]) for r in grid.replies if "sums" in r.content)
    # and the nodes' sums give the numbers of the server summing every client's update itself
    _, alone = rounds(tmp_path, 3, sums=False, strategy=strategy)
    assert alone == one


def replies_of(strategy, values, examples, dropped):
    """What the nodes reply to round 1's train messages (as ``clients.app.train`` builds them)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from fedsim.wire import to_array

    arrays = ArrayRecord({"w": to_array(values[0])})
    replies = []
    for msg in strategy.configure_train(1, arrays, ConfigRecord(), None):
        members = list(msg.content["config"]["clients"])
        done = [c for c in members if c not in dropped]
        stacks = {"w": np.stack([values[c] for c in done])} if done else {}
        metrics = MetricRecord({"client-ids": done, "client-examples": [examples[c] for c in done],
                                "train-loss": [0.0] * len(done)})
        blocks = dict(zip(members, msg.content["config"]["sum-blocks"]))
        stacks, sums, metrics["sent-ids"], metrics["block-ids"] = _sum_blocks(
            done, [examples[c] for c in done], stacks, blocks)
        content = RecordDict({"arrays": ArrayRecord({n: to_array(s) for n, s in stacks.items()}),
                              "sums": sums, "metrics": metrics})
        replies.append(Message(content, reply_to=msg))
    return replies


def test_every_layout_of_nodes_gives_the_blocked_average_to_the_bit():
    # values 2^30 next to 2^-24 multiples: the order of the additions shows in float64
    config = Config(num_clients=40, fraction_train=0.95, seed=4)
    values = {c: np.array([2.0 ** 30 if c % 7 == 0 else 2.0 ** -24 * (1 + c % 3), 0.1 * c])
              for c in range(40)}
    examples = {c: 1 + c % 5 for c in range(40)}
    dropped = {3, 21}
    sampled = CohortFedAvg(config).sample(1, config.fraction_train, 0)
    present = [c for c in sampled if c not in dropped]
    blocked = weighted_average([examples[c] for c in present], [{"w": values[c]} for c in present],
                               [sampled.index(c) // BLOCK for c in present])["w"]
    plain = sequential([examples[c] for c in present], [values[c] for c in present])
    assert blocked[0] != plain[0]  # the data tell the orders apart
    layouts = {"one node": [0] * 40, "two": [0] * 7 + [1] * 33, "three": [0] * 13 + [1] * 16 + [2] * 11,
               "a node each": list(range(40))}
    for name, nodes in layouts.items():
        strategy = CohortFedAvg(config)
        strategy.node_of = dict(enumerate(nodes))
        replies = replies_of(strategy, values, examples, dropped)
        arrays, metrics = strategy.aggregate_train(1, replies)
        np.testing.assert_array_equal(arrays["w"].numpy(), blocked, err_msg=name)
        assert metrics["num-examples"] == sum(examples[c] for c in present)


def test_mismatched_inputs_are_refused_with_their_counts():
    with pytest.raises(ValueError, match="got 2 weights, 1 blocks and 2 updates"):
        block_sums([1, 2], [{"w": np.zeros(2)}] * 2, [0])
    with pytest.raises(ValueError, match="positive number, got 0.0"):
        combine({0: {"w": np.zeros(2)}}, 0.0, {"w": np.float32})
