"""A local Ray started without the services a simulation never uses.

``ray.init()`` on one machine also starts the autoscaler's monitor, the log monitor and
the dashboard's API server: three more Python processes that import Ray while the
client actors import torch, on the same cores, and that Ray waits for at shutdown.
Measured on the 2-core box (Ray 2.55, start + 2 actors importing torch + shutdown,
alternating runs): 16.0–16.7 s with them, 8.7–12.1 s without. A fixed local cluster
never scales, nothing queries the dashboard's REST API, and worker logs are forwarded
only with ``verbose = true`` (which keeps the log monitor).

Ray has no public switch for these, so the two private hooks are patched only for the
duration of ``ray.init`` and restored after; attaching to a cluster (``ray-address``)
is left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def lean_local_ray(keep_log_monitor: bool) -> Iterator[None]:
    """While active, a local head node starts without the autoscaler monitor, the
    dashboard API server and (unless ``keep_log_monitor``) the log monitor."""
    from ray._private import node, parameter

    original_init, original_api = parameter.RayParams.__init__, node.Node.start_api_server

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.no_monitor = True
        if not keep_log_monitor:
            self.include_log_monitor = False

    def no_api_server(self: Any, **kwargs: Any) -> None:
        return None

    parameter.RayParams.__init__ = init  # type: ignore[method-assign]
    node.Node.start_api_server = no_api_server  # type: ignore[method-assign]
    try:
        yield
    finally:
        parameter.RayParams.__init__ = original_init  # type: ignore[method-assign]
        node.Node.start_api_server = original_api  # type: ignore[method-assign]
