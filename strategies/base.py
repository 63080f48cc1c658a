"""FedAvg over logical clients packed into cohorts, with seeded sampling.

Several logical clients (identified by partition id) live on one simulated Flower node;
a round sends each node one message naming its sampled clients, and the node replies
with the sums of the blocks of 16 clients it holds whole and one update for each other
client (one array per parameter, stacked along a first axis in the order of the reply's
``block-ids`` and ``sent-ids``). The server adds them in an order fixed by the round's
sorted client list (:mod:`fedsim.summation`), so results do not depend on how clients
are packed into nodes, on actor count or on reply order.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedsim.config import Config
from fedsim.summation import block_of, block_sums, combine
from fedsim.wire import split_client_arrays, to_array
from strategies.aggregate import sample_clients, weighted_average
from strategies.gradnorm import GradNormWeights


class CohortFedAvg(FedAvg):
    """FedAvg (McMahan et al., AISTATS 2017) on the whole model, over cohorts of clients.

    Client side: load the received arrays over its own model, train all parameters for
    ``local-epochs``, reply with every received key. Subclasses share less by narrowing
    :meth:`shares`; keys the server does not send stay personal on the client.
    """

    node_sums = True
    """Whether nodes may reply with block sums of their clients' updates instead of the
    updates (:mod:`fedsim.summation`): only for the plain sample-weighted average. A
    subclass that overrides :meth:`average` or :meth:`aggregate_train` gets False unless
    it sets this itself (FedRep, which only post-processes the average, does)."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "node_sums" not in cls.__dict__ and {"average", "aggregate_train"} & cls.__dict__.keys():
            cls.node_sums = False

    def __init__(self, config: Config) -> None:
        super().__init__(
            fraction_train=config.fraction_train,
            fraction_evaluate=config.fraction_evaluate,
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=1,
        )
        self.config = config
        self.node_of: dict[int, int] = {}  # logical client -> Flower node id, set by the loop
        self.dtypes: dict[str, np.dtype] = {}  # of the arrays last sent for training
        self.positions: tuple[int, dict[int, int]] = (0, {})  # (round, client -> place in its list)
        self.gradnorm = (GradNormWeights(config.gradnorm_alpha, config.gradnorm_lr)
                         if config.aggregation == "gradnorm" else None)

    def shares(self, name: str) -> bool:
        """Whether parameter ``name`` is shared with (and averaged by) the server."""
        return True

    def average(self, weights: list[float], updates: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The server's new arrays from the clients' updates (in client order) and their
        training-set sizes: the sample-weighted average (FedAvg). The updates are
        read-only views of the replies' bytes: copy one to change it."""
        return weighted_average(weights, updates)

    def state_dict(self) -> dict:
        """JSON-able server-side state beyond the arrays (for checkpoints)."""
        return {"gradnorm": self.gradnorm.state_dict()} if self.gradnorm else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        if self.gradnorm and "gradnorm" in state:
            self.gradnorm.load_state_dict(state["gradnorm"])

    def initial_arrays(self, model: nn.Module) -> ArrayRecord:
        """The shared part of a freshly initialised model."""
        state = model.state_dict()
        return ArrayRecord({k: v for k, v in state.items() if self.shares(k)})

    def sample(self, server_round: int, fraction: float, stream: int) -> list[int]:
        """Clients for a round, from our own RNG seeded by (seed, round, stream). Training
        (stream 0) never samples a target client (its labels are not for training) nor a
        held-out one (``holdout-clients``); evaluation (stream 1) samples among the
        participating clients and adds every held-out one."""
        rng = np.random.default_rng([self.config.seed, server_round, stream])
        held = self.config.holdout()
        excluded = set(held) | (set(self.config.targets()) if stream == 0 else set())
        if not excluded:
            return sample_clients(self.config.num_clients, fraction, rng)
        pool = [c for c in range(self.config.num_clients) if c not in excluded]
        chosen = [pool[i] for i in sample_clients(len(pool), fraction, rng)]
        return chosen if stream == 0 else sorted(chosen + held)

    def configure_distill(
        self, server_round: int, arrays: ArrayRecord, replies: list[Message], config: ConfigRecord
    ) -> list[Message]:
        """Messages of a second phase after local training (KD3A's target distillation);
        their replies reach :meth:`aggregate_train` after the training replies."""
        return []

    def round_metrics(self) -> dict:
        """Extra per-round values for metrics.jsonl (e.g. KD3A's domain weights; with
        ``aggregation = "gradnorm"`` every weighted client's GradNorm weight)."""
        if not self.gradnorm:
            return {}
        return {"client_weights": {str(c): w for c, w in sorted(self.gradnorm.weights.items())}}

    def summary(self) -> dict:
        """Extra summary.json entries, as of the last round (e.g. fedrep-groups' groups)."""
        return {}

    @classmethod
    def advice(cls, config: Config, labels: list[np.ndarray]) -> list[str]:
        """Warnings worth giving before a run of ``config`` starts, from every client's
        training labels (``labels[c]``); none by default."""
        return []

    def cohort_messages(
        self, clients: list[int], arrays: ArrayRecord, config: ConfigRecord, message_type: str
    ) -> list[Message]:
        """One message per node, naming the node's clients among ``clients``."""
        by_node: dict[int, list[int]] = {}
        for client in clients:
            by_node.setdefault(self.node_of[client], []).append(client)
        messages = []
        for node_id, members in sorted(by_node.items(), key=lambda item: item[1][0]):
            node_config = ConfigRecord({**config, "clients": members})
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: node_config})
            messages.append(Message(content, dst_node_id=node_id, message_type=message_type))
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The round's train messages; with :meth:`sums_on_nodes`, each names the block
        its node sums every client in (``sum-blocks``; -1: the block is split between
        nodes and the client replies alone)."""
        config["server-round"] = server_round
        clients = self.sample(server_round, self.fraction_train, 0)
        self.dtypes = {name: np.dtype(array.dtype) for name, array in arrays.items()}
        self.positions = (server_round, {client: i for i, client in enumerate(clients)})
        messages = self.cohort_messages(clients, arrays, config, MessageType.TRAIN)
        if self.sums_on_nodes():
            blocks = self._node_blocks(clients)
            for message in messages:
                record = message.content[self.configrecord_key]
                record["sum-blocks"] = [blocks[int(c)] for c in record["clients"]]
        return messages

    def sums_on_nodes(self) -> bool:
        """Whether this round's nodes sum their clients' updates in blocks."""
        return self.node_sums and self.gradnorm is None

    def _node_blocks(self, clients: list[int]) -> dict[int, int]:
        """Every client's block (its position in ``clients`` // BLOCK), or -1 where the
        block's clients are not all on one node."""
        nodes: dict[int, set[int]] = {}
        for position, client in enumerate(clients):
            nodes.setdefault(block_of(position), set()).add(self.node_of[client])
        return {client: block_of(i) if len(nodes[block_of(i)]) == 1 else -1
                for i, client in enumerate(clients)}

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["server-round"] = server_round
        if self.config.holdout():
            config["unseen"] = self.config.holdout()
        clients = self.sample(server_round, self.fraction_evaluate, 1)
        return self.cohort_messages(clients, arrays, config, MessageType.EVALUATE)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sample-weighted average of the clients' updates, summed in blocks of the
        round's client order (:mod:`fedsim.summation`): the blocks a node summed arrive
        as sums, the others' clients alone."""
        # Replies carry different keys ("<client>/<param>"), so FedAvg's same-keys check
        # does not apply; every client must send back exactly the keys it received.
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        if not valid:
            return None, None
        updates: dict[int, dict[str, np.ndarray]] = {}  # clients that replied alone
        sums: dict[int, dict[str, np.ndarray]] = {}  # blocks summed on their node
        weights: dict[int, float] = {}
        losses: dict[int, float] = {}
        reports: dict[int, tuple[float, float]] = {}  # GradNorm: (loss, norm) at the received model
        for msg in valid:
            metrics = msg.content["metrics"]
            alone = metrics.get("sent-ids", metrics["client-ids"])
            updates.update(split_client_arrays(msg.content[self.arrayrecord_key], alone, copy=False))
            if "sums" in msg.content:
                sums.update(split_client_arrays(msg.content["sums"], metrics["block-ids"], copy=False))
            for client, n, loss in zip(
                metrics["client-ids"], metrics["client-examples"], metrics["train-loss"]
            ):
                weights[client], losses[client] = float(n), float(loss)
            if "client-grad-norm" in metrics:
                reports.update(zip(metrics["client-ids"],
                                   zip(metrics["client-start-loss"], metrics["client-grad-norm"])))
        order = sorted(weights)
        if not order:  # every sampled client dropped out or failed
            return None, None
        parts = [*((f"client {c}", updates[c]) for c in sorted(updates)),
                 *((f"block {b}", sums[b]) for b in sorted(sums))]
        expected = set(parts[0][1])
        for name, arrays in parts:
            if set(arrays) != expected:
                raise ValueError(f"{name} sent arrays {sorted(arrays)}, expected {sorted(expected)}")
        total = sum(weights.values())
        if self.sums_on_nodes():  # the nodes' block sums, the split blocks' clients, in block order
            sent_round, position = self.positions
            if sent_round != server_round or not set(weights) <= position.keys():  # not our messages
                position = {c: i for i, c in enumerate(order)}
            alone = sorted(updates)
            sums.update(block_sums([weights[c] for c in alone], [updates[c] for c in alone],
                                   [block_of(position[c]) for c in alone]))
            averaged = combine(sums, total, {k: self.dtypes.get(k, np.float32) for k in expected})
        else:
            averaging = [weights[c] for c in order]
            if self.gradnorm:  # average with the weights of this round, then take GradNorm's step
                averaging = self.gradnorm.of(order)
                scored = [c for c in order if c in reports]
                if scored:
                    self.gradnorm.update(scored, [reports[c][1] for c in scored],
                                         [reports[c][0] for c in scored])
            averaged = self.average(averaging, [updates[c] for c in order])
        train_loss = sum(weights[c] * losses[c] for c in order) / total
        metrics = MetricRecord({"train-loss": train_loss, "num-examples": int(total)})
        return ArrayRecord({k: to_array(v) for k, v in averaged.items()}), metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Sample-weighted mean accuracy and loss of the participating clients (with a
        target domain: of the targets), plus every client's values; the held-out clients'
        (``holdout-clients``) as ``unseen-accuracy``, the validation sets' (``val-fraction``)
        as ``val-accuracy``."""
        valid, _ = self._check_and_log_replies(replies, is_train=False, validate=False)
        rows, val = [], {}
        logme: dict[int, tuple[float, float]] = {}  # client -> (LogME, training examples)
        for msg in valid:
            m = msg.content["metrics"]
            rows += zip(m["client-ids"], m["client-examples"], m["client-accuracy"], m["client-loss"])
            if "client-val-accuracy" in m:
                val.update(zip(m["client-ids"], zip(m["client-val-examples"], m["client-val-accuracy"])))
            if "client-logme" in m:
                logme.update(zip(m["client-ids"], zip(m["client-logme"], m["client-train-examples"])))
        if not rows:
            return None
        rows.sort()
        held = set(self.config.holdout())
        unseen = [r for r in rows if r[0] in held]
        rows = [r for r in rows if r[0] not in held]
        targets = set(self.config.targets())
        scored = [r for r in rows if r[0] in targets] or rows  # with a target: its accuracy
        sources = [r for r in rows if r[0] not in targets]
        extra: dict = {}
        if targets and sources:
            extra["source-accuracy"] = _weighted(sources, 2)
        if unseen:
            extra.update({"unseen-accuracy": _weighted(unseen, 2),
                          "unseen-client-ids": [r[0] for r in unseen],
                          "unseen-client-accuracy": [r[2] for r in unseen]})
        scored_val = [(c, *val[c]) for c, *_ in scored if c in val]
        if scored_val:
            extra["val-accuracy"] = _weighted(scored_val, 2)
        if logme:
            extra.update(logme_metrics(logme))
        return MetricRecord({
            **extra,
            "accuracy": _weighted(scored, 2),
            "loss": _weighted(scored, 3),
            "client-ids": [c for c, _, _, _ in rows],
            "client-accuracy": [a for _, _, a, _ in rows],
            "client-loss": [loss for _, _, _, loss in rows],
            "num-examples": sum(n for _, n, *_ in scored),
        })


def _weighted(rows: list[tuple], column: int) -> float:
    """Mean of ``column`` over ``rows`` (client, examples, ...) weighted by the examples."""
    total = sum(r[1] for r in rows)
    return sum(r[1] * r[column] for r in rows) / total


def logme_metrics(logme: dict[int, tuple[float, float]]) -> dict:
    """``logme`` (the training-sample-weighted mean over the clients that have one; nan if
    none) and ``client-logme`` (every client's, in client order; nan for an unlabeled
    target) from client -> (LogME, training examples)."""
    order = sorted(logme)
    known = [(v, n) for v, n in (logme[c] for c in order) if v == v]
    total = sum(n for _, n in known)
    mean = sum(v * n for v, n in known) / total if total else float("nan")
    return {"logme": mean, "client-logme": [logme[c][0] for c in order],
            "client-logme-ids": order}
