"""The lean local Ray: which services it leaves out, and that Ray's own defaults come back."""

from ray._private import node, parameter

from fedsim.lean_ray import lean_local_ray


def test_a_lean_local_ray_leaves_out_the_monitors_and_the_api_server_only_while_starting():
    original = node.Node.start_api_server
    with lean_local_ray(keep_log_monitor=False):
        params = parameter.RayParams()
        assert params.no_monitor is True and params.include_log_monitor is False
        assert node.Node.start_api_server(None) is None  # not started
    with lean_local_ray(keep_log_monitor=True):  # verbose = true: worker logs reach the driver
        assert parameter.RayParams().include_log_monitor is None  # Ray's default: started
    params = parameter.RayParams()
    assert params.no_monitor is False and params.include_log_monitor is None
    assert node.Node.start_api_server is original
