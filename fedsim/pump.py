"""Event-driven message passing for Flower 1.41's simulation engine (instead of polling)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from queue import Queue
from typing import Any

MESSAGE_IN = threading.Event()  # set when the server stores a message for a node
REPLY_IN = threading.Event()  # set when a node's reply is stored
SIGNALLED = threading.Event()  # set while the two above are wired into Flower's link state


@contextlib.contextmanager
def fast_message_pump() -> Iterator[None]:
    """Flower 1.41's simulation engine polls for work every 0.1 s: a thread moves
    messages from its link state to the actor queue (``vce_api.add_messages_to_queue``)
    and the grid looks for replies (``InMemoryGrid.pull_interval``). That costs ~0.1 s
    per message phase, most of a round with small local work, and polling faster burns
    driver CPU the actors need. For the run, the link state signals both events when a
    message or a reply is stored; the mover thread waits on ``MESSAGE_IN`` and
    :func:`fedsim.server.send_and_receive` on ``REPLY_IN`` (restored after)."""
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    original = (vce_api.add_messages_to_queue, InMemoryLinkState.store_message_ins,
                InMemoryLinkState.store_message_res)

    def store_message_ins(self: Any, message: Any) -> Any:
        result = original[1](self, message)
        MESSAGE_IN.set()
        return result

    def store_message_res(self: Any, message: Any) -> Any:
        result = original[2](self, message)
        REPLY_IN.set()
        return result

    def pump(state: Any, queue: Any, nodes_mapping: dict[int, int], f_stop: Any) -> None:
        while not f_stop.is_set():
            MESSAGE_IN.clear()  # before looking: a message stored meanwhile sets it again
            moved = False
            for node_id in nodes_mapping:
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
                    moved = True
            if not moved:
                MESSAGE_IN.wait(0.1)

    class PromptQueue(Queue):
        """Flower's worker and reply threads wait on their queues in 1 s slices and see
        the stop event only between them: ~1 s at every shutdown. 50 ms slices instead."""

        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            return super().get(block, None if timeout is None else min(timeout, 0.05))

    original_queue = vce_api.Queue
    vce_api.Queue = PromptQueue
    vce_api.add_messages_to_queue = pump
    InMemoryLinkState.store_message_ins = store_message_ins
    InMemoryLinkState.store_message_res = store_message_res
    SIGNALLED.set()
    try:
        yield
    finally:
        SIGNALLED.clear()
        vce_api.Queue = original_queue
        (vce_api.add_messages_to_queue, InMemoryLinkState.store_message_ins,
         InMemoryLinkState.store_message_res) = original
