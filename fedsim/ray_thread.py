"""``ray.init`` on a thread of its own, so that Ray starts while the driver loads torch.

The driver's first ~2 s are spent on one core: torch (1.1–1.5 s on the 2-core box), the
engine's checks and ``import ray``; ``ray.init`` (1.8–2.1 s, mostly Ray's own processes
starting) only came after, and the second core idled meanwhile. Started on a thread once
``ray`` is imported, the two overlap: process start to exit of a 3-round FedAvg digits
run fell from 7.53 to 7.18 s (medians of 8 alternating pairs; README, Performance). Less
than the idle core promised: Ray's start is itself CPU-bound (its agents and pre-started
workers), and the driver's imports took ~2.7 s instead of ~1.5 s beside it.
``import ray`` stays on the calling thread: two threads importing at once fight for the
GIL, and Ray then started 1.3 s later than from an idle thread.

The thread lives until :meth:`RayThread.release`, after ``ray.shutdown()``: Ray's
processes are started with ``PR_SET_PDEATHSIG`` and die when the *thread* that started
them ends, not only the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class _NoSigtermNote(logging.Filter):
    """Without Ray's warning that ``ray.init`` off the main thread sets no SIGTERM handler
    (shown with ``verbose = true``): fedsim's own handler stays (:mod:`fedsim.stopping`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


class RayThread:
    """Runs ``init`` (which starts Ray) on a daemon thread, then keeps the thread alive
    until :meth:`release`."""

    def __init__(self, init: Callable[[], None]) -> None:
        self.error: BaseException | None = None
        self._done, self._release = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(init,), name="fedsim-ray-init", daemon=True)
        self._thread.start()

    def _run(self, init: Callable[[], None]) -> None:
        ray_worker, note = logging.getLogger("ray._private.worker"), _NoSigtermNote()
        ray_worker.addFilter(note)
        try:
            init()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            self.error = exc
        finally:
            ray_worker.removeFilter(note)
            self._done.set()
        self._release.wait()

    def wait(self, reraise: bool = True) -> None:
        """Block until ``init`` has returned; raise what it raised (if ``reraise``)."""
        self._done.wait()
        if reraise and self.error is not None:
            raise self.error

    def release(self) -> None:
        """Let the thread end (call after ``ray.shutdown()``); waits for ``init`` first."""
        self._done.wait()
        self._release.set()
        self._thread.join()
