"""The round loop, written once, and the ServerApp that runs it."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsim.algorithms import client_model, engine_paths, strategy_class
from fedsim.checkpoint import Checkpoint, save_checkpoint
from fedsim.config import Config
from fedsim.data import client_splits, load_dataset
from fedsim.history import RunWriter
from fedsim.placement import Placement
from fedsim.pump import REPLY_IN, SIGNALLED
from fedsim.rotated import planted_groups
from strategies.aggregate import principal_angle_distance

Progress = Callable[[dict[str, Any], Config], None]


class ClientFailure(RuntimeError):
    """A client raised, or did not answer in time. The message names the clients."""


def run_rounds(
    grid: Grid, config: Config, writer: RunWriter, num_nodes: int, progress: Progress | None = None,
    resume: Checkpoint | None = None,
) -> None:
    """Train for ``num-rounds`` rounds (continuing after ``resume`` if given), evaluate
    every ``eval-every`` rounds, log one row per round and checkpoint every
    ``checkpoint-every`` rounds. Raises ClientFailure beyond ``max-failures``."""
    strategy = strategy_class(config.strategy)(config)
    if hasattr(grid, "pull_interval"):  # Flower's in-memory grid polls for replies every 0.1 s
        grid.pull_interval = 0.002
    placement = Placement()
    node_by_pid = _identify_nodes(grid, num_nodes, config.round_timeout, placement)
    _check_devices(placement, config)
    writer.extra["placement"] = placement.table()
    data = load_dataset(config)
    nodes = assign_nodes([len(s.train) for s in client_splits(config)], len(node_by_pid))
    strategy.node_of = {c: node_by_pid[n] for c, n in enumerate(nodes)}
    model = client_model(config, data)
    arrays = strategy.initial_arrays(model)
    writer.extra["bytes_per_client"] = model_bytes(model, set(arrays.keys()))
    writer.extra["engine"] = engine_paths(config, data)
    if config.partitioner == "rotated":  # the planted groups of the rotated benchmark
        writer.extra["planted_groups"] = planted_groups(config)
    first = 1
    _clear_clients(grid, node_by_pid, config.round_timeout)  # earlier runs of a sweep left state there
    if resume is not None:
        arrays = ArrayRecord({k: Array(v) for k, v in resume.server.items()})
        strategy.load_state_dict(resume.strategy_state)
        _restore_clients(grid, strategy.node_of, resume.clients, config.round_timeout)
        first = resume.round + 1
    run_config = {"run-config": config.to_json()}

    deferred: Deferred | None = None  # an evaluation that travels with the next round's training

    def finish(row: dict[str, Any], seconds: float) -> None:
        row["round_seconds"] = round(seconds, 4)
        writer.extra["placement"] = placement.table()
        writer.extra.update(strategy.summary())
        writer.log_round(row)
        if config.checkpoint_every and row["round"] % config.checkpoint_every == 0:
            save_checkpoint(writer.dir, Checkpoint(
                row["round"], {k: v.numpy() for k, v in arrays.items()},
                _export_clients(grid, node_by_pid, config.round_timeout), strategy.state_dict(),
            ))
        if progress:
            progress(row, config)

    for server_round in range(first, config.num_rounds + 1):
        start = time.perf_counter()
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(run_config), grid))
        if deferred is None:
            replies, failed = _exchange(grid, messages, config.round_timeout, tolerate=True,
                                        placement=placement)
        else:
            messages, alone = deferred.attach(messages)
            answers = send_and_receive(grid, messages + alone, config.round_timeout)
            placement.observe(answers)
            replies, failed = _sort_replies(messages, answers, config.round_timeout, tolerate=True)
            evaluations = _sort_replies(alone, answers, config.round_timeout)[0]
            carried, again = deferred.collect(replies)
            if again:
                evaluations += _exchange(grid, again, config.round_timeout, placement=placement)[0]
            deferred.row.update(evaluated_row(strategy.aggregate_evaluate(
                deferred.row["round"], carried + evaluations)))
            finish(deferred.row, deferred.seconds)
            deferred = None
        dropped = [c for r in replies for c in r.content["failures"]["dropped"]]
        for reply in replies:
            report = reply.content["failures"]
            failed.update(zip(report["failed"], report["errors"]))
        if len(failed) > config.max_failures:
            details = "\n  ".join(f"client {c}: {e}" for c, e in sorted(failed.items()))
            raise ClientFailure(
                f"round {server_round}: {len(failed)} client(s) failed "
                f"(max-failures = {config.max_failures})\n  {details}"
            )
        distill = strategy.configure_distill(server_round, arrays, replies, ConfigRecord(run_config))
        extra = _exchange(grid, distill, config.round_timeout, placement=placement)[0] if distill else []
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies + extra)
        arrays = new_arrays if new_arrays is not None else arrays
        row: dict[str, Any] = {
            "round": server_round,
            "train_loss": _number(train_metrics["train-loss"]) if train_metrics else None,
            "clients_trained": sum(len(r.content["metrics"]["client-ids"]) for r in replies),
            "failures": len(failed),
            "dropped": len(dropped),
        }
        row.update(strategy.round_metrics())
        if data.true_body is not None and "body.weight" in arrays:
            estimate = arrays["body.weight"].numpy().T  # B̂: dim × rank
            row["distance"] = principal_angle_distance(estimate, data.true_body)
        if server_round % config.eval_every == 0 or server_round == config.num_rounds:
            messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(run_config), grid))
            if server_round < config.num_rounds and not (
                    config.checkpoint_every and server_round % config.checkpoint_every == 0):
                deferred = Deferred(row, messages, time.perf_counter() - start)
                continue
            metrics = strategy.aggregate_evaluate(
                server_round, _exchange(grid, messages, config.round_timeout, placement=placement)[0]
            )
            assert metrics is not None
            row.update(evaluated_row(metrics))
        finish(row, time.perf_counter() - start)


class Deferred:
    """A round's evaluation sent with the next round's training messages: a node that
    trains then evaluates the previous round's clients first (same arrays, same personal
    state, the same seeds), and one message exchange per round is saved (each costs the
    driver, Ray and the actors ~10 ms of CPU). Nodes that train nothing next round get
    the evaluate message on its own. The round's row is logged once the next round's
    replies are in (never for a last round or a checkpointed one, which evaluate at once);
    its ``round_seconds`` then counts the evaluation in the next round."""

    def __init__(self, row: dict[str, Any], messages: list[Message], seconds: float) -> None:
        self.row, self.messages, self.seconds = row, messages, seconds
        self.carried: dict[int, list[int]] = {}  # node -> clients it evaluates in its train message

    def attach(self, train: list[Message]) -> tuple[list[Message], list[Message]]:
        """The train messages (those to evaluating nodes carrying their evaluate config)
        and the evaluate messages of nodes that train nothing."""
        by_node = {m.metadata.dst_node_id: m for m in self.messages}
        for message in train:
            evaluate = by_node.pop(message.metadata.dst_node_id, None)
            if evaluate is not None and evaluate.content["arrays"] is message.content["arrays"]:
                message.content["evaluate"] = evaluate.content["config"]
                self.carried[message.metadata.dst_node_id] = list(evaluate.content["config"]["clients"])
            elif evaluate is not None:  # different arrays (never with the built-in strategies)
                by_node[message.metadata.dst_node_id] = evaluate
        return train, list(by_node.values())

    def collect(self, replies: list[Message]) -> tuple[list[Any], list[Message]]:
        """The evaluations carried back by ``replies``, and the evaluate messages to send
        again, on their own, for nodes whose train message failed (whether they fail
        again decides, as without this)."""
        out = [_Evaluation(r.content["evaluation"]) for r in replies
               if r.metadata.src_node_id in self.carried and "evaluation" in r.content]
        answered = {r.metadata.src_node_id for r in replies if "evaluation" in r.content}
        again = [m for m in self.messages
                 if m.metadata.dst_node_id in self.carried and m.metadata.dst_node_id not in answered]
        return out, again  # never sent: their config travelled inside the train messages


class _Evaluation:
    """An evaluation that came back inside a train reply, shaped like an evaluate reply
    for ``aggregate_evaluate``."""

    def __init__(self, metrics: Any) -> None:
        self.content = {"metrics": metrics}

    def has_error(self) -> bool:
        return False


def evaluated_row(metrics: Any) -> dict[str, Any]:
    """The metrics.jsonl entries of an evaluation: the (sample-weighted) ``accuracy`` and
    ``loss``, every client's accuracy (``clients``), their spread (``accuracy_std``,
    ``accuracy_p10``, ``accuracy_min``: unweighted, over the clients), and where present
    ``source_accuracy``, ``val_accuracy``, ``unseen_accuracy`` (+ ``clients_unseen``),
    ``logme`` (+ ``clients_logme``)."""
    row: dict[str, Any] = {"accuracy": _number(metrics["accuracy"])}
    for key in ("source-accuracy", "val-accuracy", "unseen-accuracy"):
        if key in metrics:  # with a target domain, accuracy is the target's
            row[key.replace("-", "_")] = _number(metrics[key])
    row["loss"] = _number(metrics["loss"])
    ids = [str(c) for c in metrics["client-ids"]]
    row["clients"] = dict(zip(ids, map(_number, metrics["client-accuracy"])))
    accuracies = [a for a in row["clients"].values() if a is not None]
    if accuracies:
        row.update(spread(accuracies))
    if row["accuracy"] is None:  # regression: per-client test MSE instead
        row["clients_loss"] = dict(zip(ids, map(_number, metrics["client-loss"])))
    if "unseen-client-ids" in metrics:
        row["clients_unseen"] = dict(zip(map(str, metrics["unseen-client-ids"]),
                                         map(_number, metrics["unseen-client-accuracy"])))
    if "logme" in metrics:  # logme = true: LogME of the received body per client
        row["logme"] = _number(metrics["logme"])
        row["clients_logme"] = dict(zip(map(str, metrics["client-logme-ids"]),
                                        map(_number, metrics["client-logme"])))
    return row


def spread(accuracies: list[float]) -> dict[str, float]:
    """How unequal the clients' accuracies are: population std, 10th percentile (numpy's
    linear interpolation) and minimum."""
    values = np.asarray(accuracies, dtype=np.float64)
    return {"accuracy_std": float(values.std()), "accuracy_p10": float(np.percentile(values, 10)),
            "accuracy_min": float(values.min())}


def model_bytes(model, shared: set[str]) -> dict[str, int]:
    """Bytes of a client's model that the server sends and receives each round (``shared``,
    one way) and that stay with the client (``personal``: parameters and buffers)."""
    sizes = {name: v.numel() * v.element_size() for name, v in model.state_dict().items()}
    return {"shared": sum(b for n, b in sizes.items() if n in shared),
            "personal": sum(b for n, b in sizes.items() if n not in shared)}


def assign_nodes(loads: list[int], nodes: int) -> list[int]:
    """The node (0 … ``nodes`` - 1) of every client, given its load (training samples):
    consecutive clients to one node, so that a node holds whole blocks of a round's
    client list and sums them (:mod:`fedsim.summation`), balanced by load: client c goes
    to the node whose equal share of the total load holds the middle of c's, and every
    node gets a client when there are enough. With lognormal client sizes, client
    ``c % nodes`` left one node's cohort up to 1.5x longer than the other's, and the
    round waits for the slowest node."""
    count = len(loads)
    if count <= nodes:
        return list(range(count))
    total = float(sum(loads)) or 1.0
    out, done, node = [], 0.0, 0
    for client, load in enumerate(loads):
        share = min(nodes - 1, int((done + load / 2) * nodes / total))
        if client:  # one node further at most, and far enough on to leave one client per node
            node = max(nodes - (count - client), min(node + 1, max(node, share)))
        out.append(node)
        done += load
    return out


def _export_clients(grid: Grid, node_by_pid: dict[int, int], timeout: float) -> dict[str, np.ndarray]:
    """Every node's personal arrays, gathered with one query per node."""
    queries = [Message(RecordDict(), dst_node_id=node, message_type=f"{MessageType.QUERY}.export")
               for node in node_by_pid.values()]
    replies, _ = _exchange(grid, queries, timeout)
    return {k: v.numpy() for r in replies for k, v in r.content["arrays"].items()}


def _clear_clients(grid: Grid, node_by_pid: dict[int, int], timeout: float) -> None:
    """Every node forgets the personal arrays it holds."""
    _exchange(grid, [Message(RecordDict(), dst_node_id=node, message_type=f"{MessageType.QUERY}.reset")
                     for node in node_by_pid.values()], timeout)


def _restore_clients(
    grid: Grid, node_of: dict[int, int], clients: dict[str, np.ndarray], timeout: float
) -> None:
    """Send each node the personal arrays of its clients (the layout may have changed)."""
    by_node: dict[int, dict[str, Array]] = {node: {} for node in set(node_of.values())}
    for key, value in clients.items():
        by_node[node_of[int(key.partition("/")[0])]][key] = Array(value)
    messages = [
        Message(RecordDict({"arrays": ArrayRecord(entries)}), dst_node_id=node,
                message_type=f"{MessageType.QUERY}.restore")
        for node, entries in by_node.items()
    ]
    _exchange(grid, messages, timeout)


def _number(value: Any) -> float | None:
    """A float for metrics.jsonl; nan (not applicable, e.g. accuracy of a regression) -> None."""
    value = float(value)
    return None if math.isnan(value) else value


def make_server_app(
    config: Config, writer: RunWriter, num_nodes: int, progress: Progress | None = None,
    resume: Checkpoint | None = None,
) -> ServerApp:
    """A ServerApp bound to one run (the ``run_simulation`` path)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_rounds(grid, config, writer, num_nodes, progress, resume)

    return app


def _identify_nodes(
    grid: Grid, expected: int, timeout: float, placement: Placement | None = None
) -> dict[int, int]:
    """Wait for the nodes to connect (start-up race), then ask each its partition id
    (the replies also say which Ray actor answered: ``placement``).
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
    replies, _ = _exchange(grid, queries, timeout, placement=placement)
    return {
        int(r.content["metrics"]["partition-id"]): r.metadata.src_node_id for r in replies
    }


def _check_devices(placement: Placement, config: Config) -> None:
    """Actors assigned a GPU that find no CUDA device: refused under ``require-gpu``,
    else said once (they run on the CPU)."""
    lost = placement.without_cuda()
    if not lost:
        return
    text = (f"{len(lost)} of {len(placement.actors)} Ray actor(s) were assigned a GPU "
            f"(client-num-gpus = {config.client_num_gpus}) but find no CUDA device")
    if config.require_gpu:
        raise ClientFailure(f"{text}; require-gpu = true, so the run stops")
    print(f"fedsim: {text}; they run on the CPU", file=sys.stderr, flush=True)


def _reason(text: str) -> str:
    """The client's own message out of Ray's wrapped traceback."""
    marker = "Message: "
    if marker in text:
        text = text[text.rindex(marker) + len(marker):]
    return text.strip().removesuffix("'>").strip()


def send_and_receive(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """``grid.send_and_receive``, but inside :func:`fedsim.simulation.run` woken by each
    stored reply instead of polling every ``pull_interval``."""
    if not SIGNALLED.is_set():
        return list(grid.send_and_receive(messages, timeout=timeout))
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        REPLY_IN.clear()  # before looking: a reply stored meanwhile sets it again
        got = list(grid.pull_messages(pending))
        replies += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            break
        REPLY_IN.wait(min(remaining, 0.1))
    return replies


def _exchange(
    grid: Grid, messages: list[Message], timeout: float, tolerate: bool = False,
    placement: Placement | None = None,
) -> tuple[list[Message], dict[int, str]]:
    """send_and_receive that never hides a failure: returns the good replies and, per
    client of a failed or missing reply, the reason. Unless ``tolerate``, any failure
    raises ClientFailure naming the clients. ``placement`` notes which actor answered."""
    replies = send_and_receive(grid, messages, timeout)
    if placement is not None:
        placement.observe(replies)
    return _sort_replies(messages, replies, timeout, tolerate)


def _sort_replies(
    messages: list[Message], replies: list[Message], timeout: float, tolerate: bool = False,
) -> tuple[list[Message], dict[int, str]]:
    """The good replies to ``messages`` among ``replies`` (at most one message per node)
    and the reason per client of a failed or missing one; see :func:`_exchange`."""
    clients_of = {
        m.metadata.dst_node_id: list(m.content["config"]["clients"]) if "config" in m.content else []
        for m in messages
    }
    replies = [r for r in replies if r.metadata.src_node_id in clients_of]
    failed: dict[int, str] = {}
    problems: list[str] = []
    for reply in replies:
        if reply.has_error():
            node_clients = clients_of.get(reply.metadata.src_node_id, [])
            reason = _reason(reply.error.reason)
            failed.update((c, reason) for c in node_clients)
            problems.append(reason if node_clients else f"node {reply.metadata.src_node_id}: {reason}")
    answered = {r.metadata.src_node_id for r in replies}
    for node, node_clients in clients_of.items():
        if node not in answered:
            reason = f"no reply within round-timeout = {timeout} s"
            failed.update((c, reason) for c in node_clients)
            problems.append(f"clients {node_clients or '?'} (node {node}): {reason}")
    if problems and not tolerate:
        raise ClientFailure("client failure\n  " + "\n  ".join(problems))
    return [r for r in replies if not r.has_error()], failed
