"""Placement without Ray: actor counts per node, the placement table gathered from the
replies, and the no-CUDA rules (say so once and run on the CPU; refuse under require-gpu)."""

import itertools
import warnings

import pytest
from inprocess import InProcessGrid

from clients.app import app
from fedsim import placement as placement_module
from fedsim.config import ConfigError
from fedsim.history import RunWriter
from fedsim.placement import PlacedClientApp, choose_device, describe
from fedsim.server import ClientFailure, run_rounds
from fedsim.simulation import actors_that_fit
from fedsim.validate import load_config

NODES = [{"CPU": 2.0}, {"CPU": 2.0, "GPU": 2.0}]  # the two-node test cluster


@pytest.mark.parametrize("cpus, gpus, actors", [
    (2.0, 0.0, 2), (0.25, 0.5, 4), (0.25, 1.0, 2), (0.25, 0.3, 6), (1.0, 0.5, 2), (1.0, 3.0, 0),
])
def test_actors_are_counted_node_by_node(cpus, gpus, actors):
    assert actors_that_fit(cpus, gpus, NODES) == actors


def two_actors(monkeypatch):
    """Replies alternate between two fake actors on one node, GPU ids 0 and 1, no CUDA."""
    fakes = itertools.cycle([
        {"actor-id": f"a{g}", "node-id": "n1", "num-cpus": 0.5, "gpu-ids": [str(g)], "device": "cpu"}
        for g in (0, 1)])
    monkeypatch.setattr(placement_module, "actor_placement", lambda: next(fakes))


def run(tmp_path, *settings):
    config = load_config(None, ["num-rounds=1", "num-clients=4", "fraction-train=1.0", "head-epochs=1",
                                "client-num-gpus=0.5", *settings])
    writer = RunWriter(tmp_path / "run", config.to_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the actor's own no-CUDA warning
        run_rounds(InProcessGrid(PlacedClientApp(app), 2), config, writer, 2)
    return writer.extra["placement"]


def test_placement_gathers_each_actors_node_gpus_and_clients(tmp_path, monkeypatch, capsys):
    two_actors(monkeypatch)
    table = run(tmp_path)
    assert [(e["actor_id"], e["node_id"], e["num_cpus"], e["gpu_ids"]) for e in table] == [
        ("a0", "n1", 0.5, ["0"]), ("a1", "n1", 0.5, ["1"])]
    assert set(table[0]["clients"]) | set(table[1]["clients"]) == {0, 1, 2, 3}
    err = capsys.readouterr().err
    assert err.count("2 of 2 Ray actor(s) were assigned a GPU") == 1 and "run on the CPU" in err
    line = describe(table)
    assert line.startswith("placement: 2 actor(s) on 1 Ray node(s) (n1: 2); GPU ids 0 x1, 1 x1")


def test_require_gpu_refuses_actors_without_cuda(tmp_path, monkeypatch):
    two_actors(monkeypatch)
    with pytest.raises(ClientFailure, match="find no CUDA device; require-gpu = true"):
        run(tmp_path, "require-gpu=true")


def test_require_gpu_needs_client_num_gpus():
    with pytest.raises(ConfigError, match="require-gpu = true needs client-num-gpus > 0"):
        load_config(None, ["require-gpu=true"])


def test_an_actor_without_cuda_warns_once_or_refuses():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    placement_module._warn_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="finds no CUDA device; running on the CPU") as caught:
        assert choose_device(0.5, False) == torch.device("cpu")
        assert choose_device(0.5, False) == torch.device("cpu")
    assert len(caught) == 1
    with pytest.raises(RuntimeError, match="and require-gpu = true"):
        choose_device(0.5, True)
    assert choose_device(0.0, True) == torch.device("cpu")
