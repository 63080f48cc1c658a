"""KD3A: decentralized multi-source domain adaptation by knowledge distillation."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsim.wire import pack_client_arrays, split_client_arrays, to_array
from strategies.aggregate import weighted_average
from strategies.base import CohortFedAvg
from strategies.consensus import domain_weights, ema_momentum, smooth_weights

BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


class KD3A(CohortFedAvg):
    """KD3A (Feng et al., ICML 2021), federated, on the body/head split as in the
    reference code (FengHZ/KD3A): only the body is aggregated; every client, the
    unlabeled targets included, keeps its own head (``kd3a-share-head = true``: whole
    models, heads included).

    Each round the sources train on their labels (the whole model; their train replies
    carry their heads in a separate record ``personal`` that aggregation never reads);
    the server then sends every source's full model (body + head) to the target clients'
    nodes (message ``train.distill``; the models are used there and never stored; a
    target's head starts from their mean at its first vote, ``kd3a-warm-head``). Each
    target runs the knowledge vote on its unlabeled data with the sources in train mode
    (BatchNorm normalises with the target batches' statistics), trains its body and head
    on the one-hot consensus with mixup, scores the sources by consensus focus (Shapley
    values; exact up to ``kd3a-exact-up-to`` sources, sampled beyond) and replies with
    its body, the sources' target-adapted BatchNorm statistics, its confident fraction
    and the scores. The server averages the bodies with KD3A's domain weights: target j
    ∝ its confident fraction/(K + T), sources ∝ consensus focus (summed over targets;
    equal with ``kd3a-focus = false``), smoothed by an EMA over the whole weight vector
    (``kd3a-ema``, scaled to the run length by ``kd3a-ema-rounds``, starting from uniform
    weights or, as the reference, from the first round's: ``kd3a-ema-start``).
    BatchNorm running statistics are averaged with the weights, the sources' ones as
    adapted by the vote (``kd3a-bn = false``: they stay with each client). Only model
    weights cross client boundaries.
    """

    def __init__(self, config) -> None:
        super().__init__(config)
        self.weights: dict[str, float] = {}  # EMA of every model's domain weight (client id -> weight)
        self._last: dict = {}
        self._warned = False

    def shares(self, name: str) -> bool:
        if not self.config.kd3a_share_head and not name.startswith("body."):
            return False
        return self.config.kd3a_bn or not name.endswith(BN_STATS)

    @classmethod
    def advice(cls, config, labels: list[np.ndarray]) -> list[str]:
        """Personal heads on label-skewed sources: each source's head knows only its own
        classes and the knowledge vote on the targets is mostly wrong (README, KD3A in the
        federated personalized setting)."""
        targets = set(config.targets())
        sources = [labels[c] for c in range(len(labels)) if c not in targets and len(labels[c])]
        if config.kd3a_share_head or not sources or sources[0].dtype.kind == "f":
            return []
        held = float(np.mean([len(np.unique(y)) for y in sources]))
        union = len(np.unique(np.concatenate(sources)))
        if held > union / 2:
            return []
        return [f"kd3a: the source clients hold {held:.1f} of {union} classes on average and keep "
                f"personal heads (kd3a-share-head = false): each source's head knows only its own "
                f"classes, so the knowledge vote on the targets is mostly wrong. Measured with 20 "
                f"sources of 3 classes and 2 mnistm targets (3 seeds, 30 rounds): target accuracy "
                f"56.5 against 75.7 for source-only FedAvg; with kd3a-share-head = true 77.1, and "
                f"kd3a-finetune = true gives the labeled clients fine-tuned personal heads (README, KD3A "
                f"in the federated personalized setting)."]

    def state_dict(self) -> dict:
        return {"weights": dict(self.weights)}

    def load_state_dict(self, state: dict) -> None:
        self.weights = {str(k): float(v) for k, v in state.get("weights", {}).items()}

    def configure_train(self, server_round, arrays, config, grid):
        config["send-personal"] = True  # the sources' heads, for the targets' vote only
        return super().configure_train(server_round, arrays, config, grid)

    def configure_distill(
        self, server_round: int, arrays: ArrayRecord, replies: list[Message], config: ConfigRecord
    ) -> list[Message]:
        states = {}
        for reply in replies:
            ids = reply.content["metrics"]["client-ids"]
            shared = split_client_arrays(reply.content["arrays"], ids)
            heads = reply.content["personal"] if "personal" in reply.content else ArrayRecord()
            personal = split_client_arrays(heads, ids) if len(heads) else {}
            for client in ids:
                states[int(client)] = {**shared.get(int(client), {}), **personal.get(int(client), {})}
        source_ids = sorted(states)
        if not source_ids:  # every source dropped out or failed: nothing to distill
            return []
        sources = pack_client_arrays({c: states[c] for c in source_ids})
        by_node: dict[int, list[int]] = {}
        for target in self.config.targets():
            by_node.setdefault(self.node_of[target], []).append(target)
        messages = []
        for node, targets in sorted(by_node.items(), key=lambda item: item[1][0]):
            node_config = ConfigRecord({**config, "server-round": server_round, "clients": targets,
                                        "source-ids": source_ids})
            content = RecordDict({"arrays": arrays, "sources": sources, "config": node_config})
            messages.append(Message(content, dst_node_id=node, message_type="train.distill"))
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
        fedavg, source_metrics = super().aggregate_train(server_round, trained)
        if not distilled or not sources:  # no vote this round: the sources' sample-weighted average
            return fedavg, source_metrics
        ids = [int(c) for c in distilled[0].content["metrics"]["source-ids"]]
        present = [c for c in ids if c in sources]
        focus = torch.zeros(len(ids), dtype=torch.float64)
        targets, fractions, adapted = {}, {}, {c: [] for c in present}
        for reply in distilled:
            metrics = reply.content["metrics"]
            mine = [int(c) for c in metrics["client-ids"]]
            targets.update(split_client_arrays(reply.content["arrays"], mine))
            focus += torch.tensor(metrics["focus"], dtype=torch.float64).reshape(len(mine), len(ids)).sum(0)
            fractions.update(zip(mine, map(float, metrics["confident-fraction"])))
            for target in mine:
                if f"adapted-{target}" in reply.content:
                    for c, stats in split_client_arrays(reply.content[f"adapted-{target}"], ids).items():
                        if c in adapted:
                            adapted[c].append(stats)
        target_ids = sorted(targets) if self.config.kd3a_distill else []  # AdaBN: no target model
        index = {c: i for i, c in enumerate(ids)}
        scores = focus[[index[c] for c in present]]
        if not self.config.kd3a_focus:
            scores = torch.zeros_like(scores)
        target_w, source_w = domain_weights(scores, torch.tensor([fractions[t] for t in target_ids]))
        current = {**{str(t): float(w) for t, w in zip(target_ids, target_w)},
                   **{str(c): float(w) for c, w in zip(present, source_w)}}
        momentum = ema_momentum(self.config.kd3a_ema, self.config.kd3a_ema_rounds, self.config.num_rounds)
        smoothed = smooth_weights(self.weights, current, momentum, self.config.kd3a_ema_start)
        self.weights.update(smoothed)
        models = [targets[t] for t in target_ids]
        for c in present:  # the sources' BatchNorm statistics as adapted to the targets by the vote
            stats = {name: np.mean([a[name] for a in adapted[c]], axis=0).astype(sources[c][name].dtype)
                     for name in (adapted[c][0] if adapted[c] else {})}
            models.append({**sources[c], **stats})
        averaged = weighted_average([smoothed[str(c)] for c in [*target_ids, *present]], models)
        confident = float(np.mean(list(fractions.values())))
        self._last = {
            "target_weight": sum(smoothed[str(t)] for t in target_ids),
            "target_weights": {str(t): smoothed[str(t)] for t in target_ids},
            "source_weights": {str(c): smoothed[str(c)] for c in present},
            "consensus_focus": {str(c): float(v) for c, v in zip(ids, focus.tolist())},
            "confident_fraction": confident,
        }
        if confident == 0.0:
            gate = float(distilled[0].content["metrics"]["gate"])
            self._last["notice"] = f"vote accepted no target sample (gate {gate:.3f})"
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"KD3A round {server_round}: the knowledge vote accepted no target sample: no "
                    f"source's top probability exceeded the confidence gate {gate:.3f} "
                    f"(kd3a-gate-start = {self.config.kd3a_gate_start}, kd3a-gate-end = "
                    f"{self.config.kd3a_gate_end}), so the targets learned nothing this round and the "
                    f"sources got equal weights. Train the sources more (num-rounds, lr, "
                    f"synth-per-class) or lower the gate.", stacklevel=2)
        return ArrayRecord({k: to_array(v) for k, v in averaged.items()}), source_metrics

    def round_metrics(self) -> dict:
        return self._last
