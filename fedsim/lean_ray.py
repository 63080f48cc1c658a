"""A local Ray started without the services a simulation never uses.

``ray.init()`` on one machine also starts the autoscaler's monitor, the log monitor and
the dashboard's API server: three more Python processes that import Ray while the
client actors import torch, on the same cores, and that Ray waits for at shutdown.
Measured on the 2-core box (Ray 2.55, start + 2 actors importing torch + shutdown,
alternating runs): 16.0–16.7 s with them, 8.7–12.1 s without. A fixed local cluster
never scales, nothing queries the dashboard's REST API, and worker logs are forwarded
only with ``verbose = true`` (which keeps the log monitor).

It also waits for its raylet promptly. ``ray.init`` asks Ray's C++ ``GetNode`` whether
the raylet it just started has registered with the GCS, and ``GetNode`` retries once a
second; the raylet registers only once its dashboard agent is up (~1 s of CPU on the
2-core box), so the driver found it a second late in most starts (``ray.init`` took
2.0, 3.2 or 4.2 s). Here the driver first polls the GCS for the node every 20 ms with one
non-blocking query, and asks ``GetNode`` once it is there.

Its dashboard agent imports only the dashboard modules that can define an agent module
(:mod:`fedsim.ray_agent`): ~0.4 s less of the agent's CPU before the raylet registers.

Ray has no public switch for these, so the four private hooks are patched only for the
duration of ``ray.init`` and restored after; attaching to a cluster (``ray-address``)
is left alone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

AGENT_SCRIPT = str(Path(__file__).with_name("ray_agent.py"))  # the dashboard agent's lean start
POLL_S = 0.02  # between two queries of the GCS for the raylet's registration


@contextlib.contextmanager
def lean_local_ray(keep_log_monitor: bool) -> Iterator[None]:
    """While active, a local head node starts without the autoscaler monitor, the
    dashboard API server and (unless ``keep_log_monitor``) the log monitor, and the
    driver waits for its raylet with :func:`wait_for_registration`."""
    from ray._private import node, parameter, ray_constants, services

    original_init, original_api = parameter.RayParams.__init__, node.Node.start_api_server
    original_get_node = services.get_node
    original_command = services._build_python_executable_command_memory_profileable

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.no_monitor = True
        if not keep_log_monitor:
            self.include_log_monitor = False

    def no_api_server(self: Any, **kwargs: Any) -> None:
        return None

    def get_node(gcs_address: str, node_id: str) -> Any:
        wait_for_registration(gcs_address, node_id)
        return original_get_node(gcs_address, node_id)

    def python_command(component: str, *args: Any, **kwargs: Any) -> list[str]:
        command = original_command(component, *args, **kwargs)
        plain = command[1:] in ([], ["-u"])  # not under Ray's memory profiler
        if component == ray_constants.PROCESS_TYPE_DASHBOARD_AGENT and plain:
            command.append(AGENT_SCRIPT)
        return command

    parameter.RayParams.__init__ = init  # type: ignore[method-assign]
    node.Node.start_api_server = no_api_server  # type: ignore[method-assign]
    services.get_node = get_node
    services._build_python_executable_command_memory_profileable = python_command
    try:
        yield
    finally:
        parameter.RayParams.__init__ = original_init  # type: ignore[method-assign]
        node.Node.start_api_server = original_api  # type: ignore[method-assign]
        services.get_node = original_get_node
        services._build_python_executable_command_memory_profileable = original_command


def wait_for_registration(gcs_address: str, node_id: str, timeout_s: float = 30.0) -> bool:
    """Whether node ``node_id`` registered with the GCS at ``gcs_address`` as alive within
    ``timeout_s``, asked every :data:`POLL_S` (one query each, never a blocking one)."""
    from ray._raylet import GcsClient, NodeID
    from ray.core.generated.gcs_pb2 import GcsNodeInfo
    from ray.core.generated.gcs_service_pb2 import GetAllNodeInfoRequest

    client = GcsClient(address=gcs_address)
    wanted = [GetAllNodeInfoRequest.NodeSelector(node_id=NodeID.from_hex(node_id).binary())]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.get_all_node_info(timeout=1, node_selectors=wanted,
                                        state_filter=GcsNodeInfo.GcsNodeState.ALIVE):
                return True
        except Exception:  # noqa: BLE001 - the GCS may not answer yet: ask again
            pass
        time.sleep(POLL_S)
    return False
