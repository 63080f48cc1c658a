"""FedRep within groups of clients found by TAG's inter-client affinity."""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsim.affinity import adjusted_rand_index, find_groups, running_mean
from fedsim.rotated import planted_groups
from fedsim.wire import pack_client_arrays, split_client_arrays
from strategies.aggregate import weighted_average
from strategies.base import CohortFedAvg


class FedRepGroups(CohortFedAvg):
    """FedRep (personal heads, shared body) with one body per group of clients; the groups
    come from TAG's lookahead affinity (Fifty et al., NeurIPS 2021) between clients.

    Every ``affinity-every`` rounds up to ``group-after``, after local training, the
    server sends every participating client j the body updates Δᵢ = θᵢ' − θ of up to
    ``affinity-peers`` other participants (message ``train.affinity``); j replies
    Z_{i→j} = 1 − L_j(θ + Δᵢ)/L_j(θ), its loss on a fixed local batch with its own head
    (scalars only). The server keeps the running mean Ẑ. After round ``group-after`` it
    partitions the clients into ``num-groups`` groups maximising TAG's objective (exact
    search up to 10 clients, clustering beyond: :func:`fedsim.affinity.find_groups`) and
    every group starts from the current body; from then on bodies are averaged within
    groups. The server's arrays hold every body along a leading group axis (one group
    before the grouping) and each message names its clients' groups."""

    def __init__(self, config) -> None:
        super().__init__(config)
        n = config.num_clients
        self.group_of = [0] * n
        self.groups = 1
        self.method = ""
        self.total = np.zeros((n, n))
        self.count = np.zeros((n, n), dtype=np.int64)
        self._theta: ArrayRecord | None = None
        self._order: list[int] = []
        self._started: float | None = None
        self._last: dict = {}

    def shares(self, name: str) -> bool:
        return name.startswith("body.")

    def initial_arrays(self, model):
        arrays = super().initial_arrays(model)
        return ArrayRecord({k: Array(v.numpy()[None]) for k, v in arrays.items()})

    def state_dict(self) -> dict:
        return {"group_of": list(self.group_of), "groups": self.groups, "method": self.method,
                "total": self.total.tolist(), "count": self.count.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.group_of = [int(g) for g in state["group_of"]]
        self.groups, self.method = int(state["groups"]), str(state["method"])
        self.total = np.asarray(state["total"], dtype=np.float64)
        self.count = np.asarray(state["count"], dtype=np.int64)

    def cohort_messages(self, clients, arrays, config, message_type):
        messages = super().cohort_messages(clients, arrays, config, message_type)
        for message in messages:
            record = message.content["config"]
            record["client-groups"] = [self.group_of[c] for c in record["clients"]]
        return messages

    def configure_train(self, server_round, arrays, config, grid):
        self._theta = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def affinity_round(self, server_round: int) -> bool:
        every = self.config.affinity_every
        return bool(every) and server_round % every == 0 and server_round <= self.config.group_after

    def peers_of(self, server_round: int, client: int, participants: list[int]) -> list[int]:
        """The participants whose updates ``client`` scores: all others, or a seeded
        ``affinity-peers`` of them."""
        others = [c for c in participants if c != client]
        k = self.config.affinity_peers
        if not k or k >= len(others):
            return others
        rng = np.random.default_rng([self.config.seed, server_round, client, 8])
        return sorted(int(c) for c in rng.choice(others, size=k, replace=False))

    def configure_distill(
        self, server_round: int, arrays: ArrayRecord, replies: list[Message], config: ConfigRecord
    ) -> list[Message]:
        """The affinity phase's messages (one per node with participants)."""
        self._started = None
        if not self.affinity_round(server_round):
            return []
        self._started = time.perf_counter()
        theta = {name: value.numpy() for name, value in arrays.items()}
        deltas = {}
        for reply in replies:
            ids = reply.content["metrics"]["client-ids"]
            for client, update in split_client_arrays(reply.content["arrays"], ids).items():
                g = self.group_of[client]
                deltas[client] = {name: update[name] - theta[name][g] for name in theta}
        participants = sorted(deltas)
        by_node: dict[int, list[int]] = {}
        for client in participants:
            by_node.setdefault(self.node_of[client], []).append(client)
        messages = []
        for node, members in sorted(by_node.items(), key=lambda item: item[1][0]):
            peers = [self.peers_of(server_round, j, participants) for j in members]
            needed = sorted({i for p in peers for i in p})
            if not needed:
                continue
            record = ConfigRecord({
                **config, "server-round": server_round, "clients": members,
                "client-groups": [self.group_of[c] for c in members],
                "peers": [i for p in peers for i in p], "peer-counts": [len(p) for p in peers],
                "delta-ids": needed})
            sent = pack_client_arrays({i: deltas[i] for i in needed})
            content = RecordDict({"arrays": arrays, "deltas": sent, "config": record})
            messages.append(Message(content, dst_node_id=node, message_type="train.affinity"))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        measured = [r for r in replies if "affinity" in r.content["metrics"]]
        trained = [r for r in replies if r not in measured]
        self._last = {}
        if self._started is not None:
            self._last["affinity_seconds"] = round(time.perf_counter() - self._started, 4)
        if measured:
            self._last["affinity"] = self.record_affinities(measured)
        self._order = sorted(int(c) for r in trained for c in r.content["metrics"]["client-ids"])
        arrays, metrics = super().aggregate_train(server_round, trained)
        arrays = arrays if arrays is not None else self._theta
        if server_round == self.config.group_after and self.config.group_after < self.config.num_rounds:
            arrays = self.make_groups(arrays)
            self._last["grouping_method"] = self.method
        self._last["groups"] = list(self.group_of)
        return arrays, metrics

    def record_affinities(self, replies: list[Message]) -> list[list]:
        """Add the replies' Z_{i→j} to the running sums; returns them as [i, j, Z] rows."""
        rows = []
        for reply in sorted(replies, key=lambda r: r.content["metrics"]["client-ids"][0]):
            m = reply.content["metrics"]
            peers, values = list(m["peer-ids"]), list(m["affinity"])
            start = 0
            for j, count in zip(m["client-ids"], m["peer-counts"]):
                for i, z in zip(peers[start:start + count], values[start:start + count]):
                    self.total[i, j] += z
                    self.count[i, j] += 1
                    rows.append([int(i), int(j), float(z)])
                start += count
        return rows

    def average(self, weights, updates):
        """Sample-weighted average of the updates within each group (clients in
        ``self._order``); a group with no update keeps its body."""
        stacked = {name: value.numpy().copy() for name, value in self._theta.items()}
        for g in range(self.groups):
            members = [k for k, c in enumerate(self._order) if self.group_of[c] == g]
            if not members:
                continue
            averaged = weighted_average([weights[k] for k in members], [updates[k] for k in members])
            for name, value in averaged.items():
                stacked[name][g] = value
        return stacked

    def make_groups(self, arrays: ArrayRecord) -> ArrayRecord:
        """Partition the clients by Ẑ; every group's body starts from the current one."""
        labels, self.method = find_groups(self.affinity(), self.config.num_groups, self.config.seed)
        self.group_of = [int(g) for g in labels]
        self.groups = self.config.num_groups
        return ArrayRecord({name: Array(np.repeat(value.numpy()[:1], self.groups, axis=0))
                            for name, value in arrays.items()})

    def affinity(self) -> np.ndarray:
        """The running mean Ẑ (nan where a pair was never measured)."""
        return running_mean(self.total, self.count)

    def round_metrics(self) -> dict:
        return self._last

    def summary(self) -> dict:
        out = {"groups": list(self.group_of), "grouping_method": self.method or None,
               "affinity_mean": [[None if np.isnan(v) else round(float(v), 6) for v in row]
                                 for row in self.affinity()]}
        if self.config.partitioner == "rotated":
            out["group_ari"] = adjusted_rand_index(self.group_of, planted_groups(self.config))
        return out
