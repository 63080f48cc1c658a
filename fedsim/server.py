"""The round loop, written once, and the ServerApp that runs it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsim.config import Config
from fedsim.data import load_dataset
from fedsim.history import RunWriter
from strategies.aggregate import principal_angle_distance
from strategies.registry import ALGORITHMS, client_model

Progress = Callable[[dict[str, Any], Config], None]


class ClientFailure(RuntimeError):
    """A client raised, or did not answer in time. The message names the clients."""


def run_rounds(
    grid: Grid, config: Config, writer: RunWriter, num_nodes: int, progress: Progress | None = None
) -> None:
    """Train for ``num-rounds`` rounds, evaluating every ``eval-every`` rounds, and log
    one row per round. Raises ClientFailure when any client fails."""
    strategy = ALGORITHMS[config.strategy].strategy(config)
    node_by_pid = _identify_nodes(grid, num_nodes, config.round_timeout)
    strategy.node_of = {c: node_by_pid[c % len(node_by_pid)] for c in range(config.num_clients)}
    data = load_dataset(config)
    arrays = strategy.initial_arrays(client_model(config, data))
    run_config = {"run-config": config.to_json()}

    for server_round in range(1, config.num_rounds + 1):
        start = time.perf_counter()
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(run_config), grid)
        replies = _exchange(grid, list(messages), config.round_timeout)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is None or train_metrics is None:
            raise ClientFailure(f"round {server_round}: no client update came back")
        arrays = new_arrays
        row: dict[str, Any] = {
            "round": server_round,
            "train_loss": _number(train_metrics["train-loss"]),
            "clients_trained": sum(len(m.content["config"]["clients"]) for m in messages),
        }
        if data.true_body is not None and "body.weight" in arrays:
            estimate = arrays["body.weight"].numpy().T  # B̂: dim × rank
            row["distance"] = principal_angle_distance(estimate, data.true_body)
        if server_round % config.eval_every == 0 or server_round == config.num_rounds:
            messages = strategy.configure_evaluate(server_round, arrays, ConfigRecord(run_config), grid)
            metrics = strategy.aggregate_evaluate(
                server_round, _exchange(grid, list(messages), config.round_timeout)
            )
            assert metrics is not None
            row["accuracy"] = _number(metrics["accuracy"])
            row["loss"] = _number(metrics["loss"])
            ids = [str(c) for c in metrics["client-ids"]]
            row["clients"] = dict(zip(ids, map(_number, metrics["client-accuracy"])))
            if row["accuracy"] is None:  # regression: per-client test MSE instead
                row["clients_loss"] = dict(zip(ids, map(_number, metrics["client-loss"])))
        row["round_seconds"] = round(time.perf_counter() - start, 4)
        writer.log_round(row)
        if progress:
            progress(row, config)


def _number(value: Any) -> float | None:
    """A float for metrics.jsonl; nan (not applicable, e.g. accuracy of a regression) -> None."""
    value = float(value)
    return None if math.isnan(value) else value


def make_server_app(
    config: Config, writer: RunWriter, num_nodes: int, progress: Progress | None = None
) -> ServerApp:
    """A ServerApp bound to one run (the ``run_simulation`` path)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_rounds(grid, config, writer, num_nodes, progress)

    return app


def _identify_nodes(grid: Grid, expected: int, timeout: float) -> dict[int, int]:
    """Wait for the nodes to connect (start-up race), then ask each its partition id.
    ``expected`` = 0 waits until the node count has been stable for 3 s."""
    deadline = time.monotonic() + min(timeout, 120.0)
    seen, stable_since = -1, time.monotonic()
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) != seen:
            seen, stable_since = len(node_ids), time.monotonic()
        if (expected and seen >= expected) or (
            not expected and seen and time.monotonic() - stable_since > 3
        ):
            break
        if time.monotonic() > deadline:
            raise ClientFailure(f"only {seen} of {expected or 'some'} nodes connected in time")
        time.sleep(0.05)
    queries = [
        Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in node_ids
    ]
    replies = _exchange(grid, queries, timeout)
    return {
        int(r.content["metrics"]["partition-id"]): r.metadata.src_node_id for r in replies
    }


def _reason(text: str) -> str:
    """The client's own message out of Ray's wrapped traceback."""
    marker = "Message: "
    if marker in text:
        text = text[text.rindex(marker) + len(marker):]
    return text.strip().removesuffix("'>").strip()


def _exchange(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """send_and_receive that fails loudly: any error reply or missing reply raises."""
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    failed = [r for r in replies if r.has_error()]
    if failed or len(replies) < len(messages):
        clients_of = {
            m.metadata.dst_node_id: list(m.content["config"]["clients"])
            if "config" in m.content else "?" for m in messages
        }
        lines = [_reason(r.error.reason) for r in failed]
        answered = {r.metadata.src_node_id for r in replies}
        lines += [
            f"clients {clients}: no reply within round-timeout"
            for node, clients in clients_of.items() if node not in answered
        ]
        raise ClientFailure("client failure\n  " + "\n  ".join(lines))
    return replies
