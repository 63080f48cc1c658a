"""Faster message passing for Flower 1.41's simulation engine: events instead of
polling, and the ClientApp pickled once per run instead of once per message."""

from __future__ import annotations

import contextlib
import functools
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
    :func:`fedsim.server.send_and_receive` on ``REPLY_IN``; Ray backends built meanwhile
    send their ClientApp :class:`PickledOnce` (all restored after)."""
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
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

    def build(self: Any, app_fn: Any) -> None:
        return original_build(self, PickledOnce(app_fn))

    original_queue, original_build = vce_api.Queue, RayBackend.build
    vce_api.Queue = PromptQueue
    RayBackend.build = build
    vce_api.add_messages_to_queue = pump
    InMemoryLinkState.store_message_ins = store_message_ins
    InMemoryLinkState.store_message_res = store_message_res
    SIGNALLED.set()
    try:
        yield
    finally:
        SIGNALLED.clear()
        vce_api.Queue, RayBackend.build = original_queue, original_build
        (vce_api.add_messages_to_queue, InMemoryLinkState.store_message_ins,
         InMemoryLinkState.store_message_res) = original


class PickledOnce:
    """A backend's ``app_fn``, pickled once. Flower's Ray backend sends its ``app_fn`` (a
    closure over the ClientApp and the run) to an actor with every message, and Ray's
    cloudpickle pickles a closure by value: 2.2 KB and 140-720 µs of the driver's time per
    message (fourteenth session), and the actor rebuilt the ClientApp each time. Here it
    is pickled once, when the backend is built; an actor unpickles it once per process
    (:func:`unpickled_once`) and reuses that ClientApp, as Flower's deployment runtime
    does."""

    def __init__(self, app_fn: Any) -> None:
        from ray import cloudpickle

        self.app_fn = app_fn
        self.blob = cloudpickle.dumps(app_fn)

    def __call__(self) -> Any:
        return self.app_fn()

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return unpickled_once, (self.blob,)


@functools.lru_cache(maxsize=8)
def unpickled_once(blob: bytes) -> Any:
    """The ``app_fn`` pickled in ``blob``, unpickled once per process."""
    from ray import cloudpickle

    return cloudpickle.loads(blob)
