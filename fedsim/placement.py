"""Where a run's client work ran: one entry per Ray actor.

Flower's Ray backend keeps a pool of actors and hands each message to whichever actor is
idle, so a Flower node is not pinned to an actor. Every reply therefore says which actor
produced it (:class:`PlacedClientApp`), and the server gathers, per actor, its Ray node,
CPU share, GPU ids and the logical clients whose messages it ran (:class:`Placement`,
``summary.json["placement"]``). An actor that never ran a message is not listed; in
practice each runs one of the start-up ``identify`` queries (one per node, one node per
actor by default, all sent at once while every actor is still starting), which
``tests/test_cluster.py`` relies on.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

RECORD = "placement"


@functools.lru_cache(maxsize=1)
def actor_placement() -> dict[str, Any]:
    """This process's Ray actor: ``actor-id``, ``node-id``, ``num-cpus``, ``gpu-ids`` (the
    ids Ray assigned it) and ``device`` (``cuda`` or ``cpu``, what fedsim computes on).
    Outside a Ray actor (a run in this process) the ids are empty."""
    import ray

    gpu_ids: list[str] = []
    actor_id = node_id = ""
    num_cpus = 0.0
    if ray.is_initialized():
        context = ray.get_runtime_context()
        actor_id, node_id = context.get_actor_id() or "", context.get_node_id()
        gpu_ids = [str(g) for g in context.get_accelerator_ids().get("GPU", [])]
        num_cpus = float(context.get_assigned_resources().get("CPU", 0.0))
    return {"actor-id": actor_id, "node-id": node_id, "num-cpus": num_cpus, "gpu-ids": gpu_ids,
            "device": "cuda" if gpu_ids and _cuda_available() else "cpu"}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_device(num_gpus: float, require_gpu: bool):
    """The torch device of an actor given ``client-num-gpus``: ``cuda`` (the GPU Ray
    assigned, through ``CUDA_VISIBLE_DEVICES``) when asked for and present; otherwise the
    CPU, with one warning per process, or a RuntimeError under ``require-gpu``."""
    import torch

    if num_gpus <= 0:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    ids = actor_placement()["gpu-ids"]
    text = (f"client-num-gpus = {num_gpus} (Ray GPU ids {ids or 'none'}) but this actor finds "
            f"no CUDA device")
    if require_gpu:
        raise RuntimeError(f"{text} and require-gpu = true")
    _warn_once(text + "; running on the CPU")
    return torch.device("cpu")


@functools.cache
def _warn_once(text: str) -> None:
    warnings.warn(text, RuntimeWarning, stacklevel=3)


class PlacedClientApp(ClientApp):
    """``app`` whose every reply also carries this actor's :func:`actor_placement` (a
    ConfigRecord ``placement``, which no strategy reads) and the clients it ran."""

    def __init__(self, app: ClientApp) -> None:
        super().__init__()
        self.app = app

    def __call__(self, message: Message, context: Context) -> Message:
        reply = self.app(message, context)
        if not reply.has_error():
            record = dict(actor_placement())
            config = message.content["config"] if "config" in message.content else {}
            record["clients"] = [int(c) for c in config.get("clients", [])]
            reply.content[RECORD] = ConfigRecord(record)
        return reply


class Placement:
    """The actors seen in the replies of a run, in order of first reply."""

    def __init__(self) -> None:
        self.actors: dict[str, dict[str, Any]] = {}

    def observe(self, replies: list[Message]) -> None:
        for reply in replies:
            if reply.has_error() or RECORD not in reply.content:
                continue
            record = reply.content[RECORD]
            entry = self.actors.setdefault(str(record["actor-id"]), {
                "node_id": str(record["node-id"]), "num_cpus": float(record["num-cpus"]),
                "gpu_ids": [str(g) for g in record["gpu-ids"]], "device": str(record["device"]),
                "clients": [],
            })
            entry["clients"] = sorted(set(entry["clients"]) | {int(c) for c in record["clients"]})

    def table(self) -> list[dict[str, Any]]:
        """``summary.json["placement"]``: one entry per actor."""
        return [{"actor_id": actor, **entry} for actor, entry in self.actors.items()]

    def without_cuda(self) -> list[dict[str, Any]]:
        """The actors that were assigned a GPU but compute on the CPU (no CUDA device)."""
        return [e for e in self.table() if e["gpu_ids"] and e["device"] == "cpu"]


def describe(table: list[dict[str, Any]]) -> str:
    """One line for ``summary.json["placement"]``: actors per Ray node, GPU ids, clients."""
    if not table:
        return "placement: no Ray actor reported"
    nodes: dict[str, int] = {}
    gpus: dict[str, int] = {}
    for entry in table:
        nodes[entry["node_id"]] = nodes.get(entry["node_id"], 0) + 1
        for gpu in entry["gpu_ids"]:
            gpus[gpu] = gpus.get(gpu, 0) + 1
    parts = [f"placement: {len(table)} actor(s) on {len(nodes)} Ray node(s) ("
             + ", ".join(f"{node[:8]}: {n}" for node, n in nodes.items()) + ")"]
    if gpus:
        parts.append("GPU ids " + ", ".join(f"{g} x{n}" for g, n in sorted(gpus.items())))
    cpu_only = sum(1 for e in table if e["gpu_ids"] and e["device"] == "cpu")
    if cpu_only:
        parts.append(f"{cpu_only} actor(s) assigned a GPU found no CUDA device and ran on the CPU")
    parts.append(f"{len({c for e in table for c in e['clients']})} client(s) served")
    return "; ".join(parts)
