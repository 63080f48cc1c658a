"""The lean local Ray: which services it leaves out, and that Ray's own defaults come back."""

import logging
import os
import subprocess
import sys

import pytest
from ray._private import node, parameter, ray_constants, services

from fedsim.lean_ray import AGENT_SCRIPT, lean_local_ray, wait_for_registration


def test_a_lean_local_ray_leaves_out_the_monitors_and_the_api_server_only_while_starting():
    original, get_node = node.Node.start_api_server, services.get_node
    with lean_local_ray(keep_log_monitor=False):
        params = parameter.RayParams()
        assert params.no_monitor is True and params.include_log_monitor is False
        assert node.Node.start_api_server(None) is None  # not started
    with lean_local_ray(keep_log_monitor=True):  # verbose = true: worker logs reach the driver
        assert parameter.RayParams().include_log_monitor is None  # Ray's default: started
    params = parameter.RayParams()
    assert params.no_monitor is False and params.include_log_monitor is None
    assert node.Node.start_api_server is original and services.get_node is get_node


def test_only_the_dashboard_agent_starts_through_fedsims_script_and_only_while_starting():
    command = services._build_python_executable_command_memory_profileable
    agent, raylet = ray_constants.PROCESS_TYPE_DASHBOARD_AGENT, ray_constants.PROCESS_TYPE_RAYLET
    with lean_local_ray(keep_log_monitor=False):
        lean = services._build_python_executable_command_memory_profileable
        assert lean(agent, "/tmp/session") == [sys.executable, "-u", AGENT_SCRIPT]
        assert lean(agent, "/tmp/session", unbuffered=False) == [sys.executable, AGENT_SCRIPT]
        assert lean(raylet, "/tmp/session") == [sys.executable, "-u"]
    assert services._build_python_executable_command_memory_profileable is command
    assert command(agent, "/tmp/session") == [sys.executable, "-u"]


def test_the_lean_agent_finds_the_agent_modules_ray_finds_importing_fewer():
    code = ("import sys\n"
            "from ray.dashboard import utils\n"
            "from fedsim.ray_agent import _only_mentioning_modules\n"
            "def imported(): return len([m for m in sys.modules if m.startswith('ray.dashboard.modules.')])\n"
            "lean = _only_mentioning_modules(utils.get_all_modules)(utils.DashboardAgentModule)\n"
            "def subclasses(): return sorted(map(str, utils.DashboardAgentModule.__subclasses__()))\n"
            "lean_classes, lean_count = subclasses(), imported()\n"
            "full = utils.get_all_modules(utils.DashboardAgentModule)\n"
            "classes = subclasses()\n"
            "print(lean == full, lean_classes == classes, len(classes), lean_count < imported())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    same, same_classes, classes, fewer = out.split()
    # Ray 2.55 without its dashboard extras: one class (EventAgent) imports, none is kept
    assert same == same_classes == fewer == "True" and int(classes) >= 1


def test_a_local_ray_passes_one_model_inside_the_task_and_a_cluster_keeps_its_settings(monkeypatch):
    import ray

    from fedsim import load_config
    from fedsim.simulation import LOCAL_RAY_CONFIG, _init_ray

    calls = []
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # _init_ray sets it
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    _init_ray(load_config(None, []))
    _init_ray(load_config(None, ["ray-address=10.0.0.1:6379"]))
    assert calls[0]["address"] == "local" and calls[0]["_system_config"] is LOCAL_RAY_CONFIG
    # a digits model (104 KB) goes inline; a node's reply of 50 of them does not
    assert 110_000 < LOCAL_RAY_CONFIG["max_direct_call_object_size"] < 50 * 104_000
    assert LOCAL_RAY_CONFIG["task_events_report_interval_ms"] == 0  # unread; flushed at shutdown
    assert calls[1]["address"] == "10.0.0.1:6379" and "_system_config" not in calls[1]


@pytest.mark.ray
def test_a_lean_local_ray_starts_and_finds_its_node_by_polling_the_gcs():
    import ray

    from fedsim.simulation import LOCAL_RAY_CONFIG

    with lean_local_ray(keep_log_monitor=False):
        ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR,
                 _system_config=LOCAL_RAY_CONFIG)
    try:
        gcs = ray.get_runtime_context().gcs_address
        assert wait_for_registration(gcs, ray.get_runtime_context().get_node_id())
        assert not wait_for_registration(gcs, "ab" * 28, timeout_s=0.2)  # no such node
        assert ray.get(ray.remote(lambda: 7).remote()) == 7
    finally:
        ray.shutdown()
