"""How a run stops early: the first SIGINT (Ctrl-C) or SIGTERM sets :data:`STOP`, the round
loop leaves at its next grid call (:class:`Stopped`), actors still busy with a task are
killed, and the run ends as ``interrupted`` (:class:`RunInterrupted`, exit code 130 or 143)."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped the run; summary.json says ``interrupted`` and how
    far it got. ``exit_code``: 130 after SIGINT, 143 after SIGTERM (128 + the signal)."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Stopped(Exception):
    """Raised in the ServerApp thread at its next grid call once STOP is set (an
    ``Exception``, so Flower hands it back to the main thread)."""


STOP = threading.Event()  # set by Ctrl-C (or SIGTERM) during a run
_SIGNALLED: list[int] = []  # the signal that set STOP
_BACKENDS: list[Any] = []  # Flower's Ray backends of the simulation in progress
_HANDLER: list[Any] = []  # the handler of stop_on_signals, while it is active
BUSY_ACTORS_GRACE = 1.0  # seconds after a stop before actors still running a task are killed


def stopped_by() -> str:
    return "SIGTERM" if _SIGNALLED == [signal.SIGTERM] else "Ctrl-C"


def exit_code() -> int:
    return 128 + (_SIGNALLED[0] if _SIGNALLED else signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """For the run, the first SIGINT or SIGTERM sets ``STOP`` instead of raising in the
    main thread (KeyboardInterrupt, or Ray's SIGTERM handler's SystemExit): that left
    Flower's ServerApp thread waiting for replies up to ``round-timeout`` and the process
    alive. The round loop stops at its next call to the grid (it polls every 0.1 s while it
    waits); actors still running a task :data:`BUSY_ACTORS_GRACE` s later are killed, since
    Flower waits for every task in flight before it stops (a long round took 76-81 s to end
    after Ctrl-C). Flower then stops its workers and Ray. A second signal raises
    KeyboardInterrupt. Signal handlers can only be set in the main thread; elsewhere this
    does nothing. ``ray.init`` sets its own SIGTERM handler: :func:`_init_ray` re-arms ours."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = ("get_node_ids", "push_messages", "pull_messages")
    original = {name: getattr(InMemoryGrid, name) for name in names}

    def stoppable(method: Any) -> Any:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if STOP.is_set():
                raise Stopped("interrupted")
            return method(self, *args, **kwargs)

        return call

    def on_signal(signum: int, frame: Any) -> None:
        if STOP.is_set():
            raise KeyboardInterrupt
        _SIGNALLED[:] = [signum]
        STOP.set()
        threading.Thread(target=kill_busy_actors, args=(BUSY_ACTORS_GRACE,), daemon=True).start()

    STOP.clear()
    _SIGNALLED.clear()
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    _HANDLER[:] = [on_signal]
    for name in names:
        setattr(InMemoryGrid, name, stoppable(original[name]))
    try:
        yield
    finally:
        for name in names:
            setattr(InMemoryGrid, name, original[name])
        _HANDLER.clear()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def rearm_sigterm() -> None:
    """Our SIGTERM handler again, after ``ray.init`` replaced it with one that exits."""
    if _HANDLER and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _HANDLER[0])


def kill_busy_actors(grace: float) -> None:
    """Kill the actors that still run a task ``grace`` seconds after a stop: Flower's
    workers wait for those tasks (``ray.get``) and the run would only end after them."""
    time.sleep(grace)
    import ray

    for backend in list(_BACKENDS):
        busy = getattr(getattr(backend, "pool", None), "_future_to_actor", {})
        for actor in list(busy.values()):
            with contextlib.suppress(Exception):  # already gone, or Ray already shut down
                ray.kill(actor, no_restart=True)


@contextlib.contextmanager
def tracked_backends() -> Iterator[None]:
    """Flower's Ray backends built while inside, in :data:`_BACKENDS` (for a stop)."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    original = RayBackend.build

    def build(self: Any, app_fn: Any) -> None:
        _BACKENDS.append(self)
        return original(self, app_fn)

    RayBackend.build = build
    try:
        yield
    finally:
        RayBackend.build = original
        _BACKENDS.clear()
