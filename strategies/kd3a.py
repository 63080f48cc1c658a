"""KD3A: decentralized multi-source domain adaptation by knowledge distillation."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsim.wire import pack_client_arrays, split_client_arrays
from strategies.aggregate import weighted_average
from strategies.base import CohortFedAvg
from strategies.consensus import domain_weights

BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


class KD3A(CohortFedAvg):
    """KD3A (Feng et al., ICML 2021), federated: sources train on their labels; the server
    then sends every source model to the target client (message ``train.distill``),
    which runs knowledge vote on its unlabeled data, trains on the consensus labels
    (mixup), scores the sources by consensus focus (Shapley values of their contribution
    to the consensus; exact up to ``kd3a-exact-up-to`` sources, sampled beyond) and
    replies with its model, its confident fraction and the scores. The server averages
    the target and source models with KD3A's domain weights: target ∝ its confident
    fraction, sources ∝ consensus focus, smoothed by an EMA (``kd3a-ema``).

    The whole model is shared. BatchNorm running statistics are averaged with the
    weights ("BatchNorm MMD" of the reference code) unless ``kd3a-bn = false``, in which
    case they stay with each client. Only model weights cross client boundaries.
    """

    def __init__(self, config) -> None:
        super().__init__(config)
        self.focus: dict[int, float] = {}  # EMA of each source's consensus focus
        self._last: dict = {}

    def shares(self, name: str) -> bool:
        return self.config.kd3a_bn or not name.endswith(BN_STATS)

    def state_dict(self) -> dict:
        return {"focus": {str(k): v for k, v in self.focus.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.focus = {int(k): float(v) for k, v in state.get("focus", {}).items()}

    def configure_distill(
        self, server_round: int, arrays: ArrayRecord, replies: list[Message], config: ConfigRecord
    ) -> list[Message]:
        states = {}
        for reply in replies:
            states.update(split_client_arrays(reply.content["arrays"],
                                              reply.content["metrics"]["client-ids"]))
        source_ids = sorted(states)
        sources = pack_client_arrays({c: states[c] for c in source_ids})
        if not source_ids:  # every source dropped out or failed: nothing to distill
            return []
        messages = []
        for target in self.config.targets():
            node_config = ConfigRecord({**config, "server-round": server_round, "clients": [target],
                                        "source-ids": source_ids})
            content = RecordDict({"arrays": arrays, "sources": sources, "config": node_config})
            messages.append(Message(content, dst_node_id=self.node_of[target],
                                    message_type="train.distill"))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._last = {}
        distilled = [r for r in replies if "focus" in r.content["metrics"]]
        trained = [r for r in replies if r not in distilled]
        sources = {}
        for reply in trained:
            sources.update(split_client_arrays(reply.content["arrays"],
                                               reply.content["metrics"]["client-ids"]))
        if not distilled or not sources:
            return super().aggregate_train(server_round, trained)
        reply = distilled[0]
        metrics = reply.content["metrics"]
        ids = [int(c) for c in metrics["source-ids"]]
        for client, value in zip(ids, metrics["focus"]):
            old = self.focus.get(client)
            self.focus[client] = value if old is None else self.config.kd3a_ema * old + (
                1 - self.config.kd3a_ema) * value
        present = [c for c in ids if c in sources]
        target_weight, source_weights = domain_weights(
            torch.tensor([self.focus[c] for c in present], dtype=torch.float64),
            float(metrics["confident-fraction"]),
        )
        target = {name: stack.numpy()[0, ...] for name, stack in reply.content["arrays"].items()}
        weights = [target_weight, *source_weights.tolist()]
        averaged = weighted_average(weights, [target, *(sources[c] for c in present)])
        self._last = {
            "target_weight": target_weight,
            "source_weights": {str(c): w for c, w in zip(present, source_weights.tolist())},
            "consensus_focus": {str(c): float(v) for c, v in zip(ids, metrics["focus"])},
            "confident_fraction": float(metrics["confident-fraction"]),
        }
        _, source_metrics = super().aggregate_train(server_round, trained)
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in averaged.items()}), source_metrics

    def round_metrics(self) -> dict:
        return self._last
