"""A Flower Grid that runs the real ClientApp in this process (no Ray): messages are
handled one by one, each node's Context is pickled to and from the call as the
simulation engine does, and a client exception becomes an error reply as in Flower."""

from __future__ import annotations

import pickle
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class InProcessGrid(Grid):
    def __init__(self, client_app: ClientApp, num_nodes: int) -> None:
        # what the simulation engine sets for the ServerApp's process
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.client_app = client_app
        self.contexts = {
            1000 + i: Context(
                run_id=1, node_id=1000 + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(), run_config={},
            )
            for i in range(num_nodes)
        }
        self.sent: list[Message] = []
        self.replies: list[Message] = []

    def set_run(self, run):  # noqa: D102 - not needed in process
        pass

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        replies = []
        for msg in messages:
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            context = pickle.loads(pickle.dumps(self.contexts[node]))
            try:
                reply = self.client_app(msg, context)
                self.contexts[node] = context
            except Exception as exc:  # noqa: BLE001 - mirrors Flower's error reply
                reply = Message(Error(code=0, reason=f"Message: {exc}"), reply_to=msg)
            replies.append(reply)
        self.replies += replies
        return replies


class Killed(Exception):
    """Raised by :func:`cut_and_resume`'s progress callback: the run dies mid-way."""


def cut_and_resume(run_dir, config, die_in: int = 3):
    """Run ``config`` into ``run_dir`` on 2 in-process nodes, killed as round ``die_in``
    ends (after the checkpoint before it), then resume it as a new process would: fresh
    node contexts on another layout (3 nodes). Returns the checkpoint it resumed from;
    ``run_dir`` then holds the resumed run."""
    import pytest

    from clients.app import app
    from fedsim.checkpoint import load_checkpoint
    from fedsim.history import RunWriter
    from fedsim.server import run_rounds

    def die(row, _):
        if row["round"] == die_in:
            raise Killed

    with pytest.raises(Killed):
        run_rounds(InProcessGrid(app, 2), config, RunWriter(run_dir, config.to_dict()), 2, progress=die)
    checkpoint = load_checkpoint(run_dir)
    resumed = RunWriter(run_dir, config.to_dict(), resume_after=checkpoint.round)
    run_rounds(InProcessGrid(app, 3), config, resumed, 3, resume=checkpoint)
    resumed.finish()
    return checkpoint
