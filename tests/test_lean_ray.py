"""The lean local Ray: which services it leaves out, and that Ray's own defaults come back."""

import logging
import os

import pytest
from ray._private import node, parameter, services

from fedsim.lean_ray import lean_local_ray, wait_for_registration


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
