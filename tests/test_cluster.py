"""A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``), attached with
``ray-address``: actors on both nodes, metrics equal to a run of the same apps in this
process, and GPUs placed per actor from *declared* (logical) GPUs, so no GPU is needed.
One cluster for the module; its teardown stops only the processes it started."""

import json
import shutil
import subprocess
import sys
import tempfile

import pytest
from inprocess import InProcessGrid

from clients.app import app
from fedsim.config import ConfigError
from fedsim.history import RunWriter
from fedsim.server import run_rounds
from fedsim.validate import load_config

pytestmark = pytest.mark.ray
SMALL = ["num-rounds=2", "num-clients=6", "fraction-train=0.5", "head-epochs=2"]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # its own temp dir: a plain `ray.init()` elsewhere on this machine cannot find it
    temp = tempfile.mkdtemp(prefix="fedsim-rc", dir="/tmp")
    # 2 CPUs a node (declared): Ray starts as many actor processes at once as a node has CPUs
    head = {"num_cpus": 2, "num_gpus": 0, "temp_dir": temp, "include_dashboard": False}
    started = Cluster(initialize_head=True, head_node_args=head)
    try:
        started.add_node(num_cpus=2, num_gpus=2)  # two declared GPUs this machine need not have
        started.wait_for_nodes()
        yield started
    finally:
        started.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def fedsim_on(cluster, out, *settings):
    args = [a for s in (*SMALL, f"ray-address={cluster.address}", *settings) for a in ("--set", s)]
    result = subprocess.run([sys.executable, "-m", "fedsim", "run", *args, "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return result.stderr, summary["placement"], [{k: v for k, v in r.items() if k != "round_seconds"}
                                                 for r in rows]


def test_two_nodes_run_actors_on_both_and_match_a_run_in_this_process(cluster, tmp_path):
    stderr, placement, rows = fedsim_on(cluster, tmp_path / "cluster", "client-num-cpus=2")
    nodes = {node.node_id for node in cluster.list_all_nodes()}
    assert len(placement) == 2 and {p["node_id"] for p in placement} == nodes
    assert all(p["num_cpus"] == 2.0 and p["gpu_ids"] == [] for p in placement)
    assert set().union(*(p["clients"] for p in placement)) == set(range(6))
    assert "placement: 2 actor(s) on 2 Ray node(s)" in stderr

    config = load_config(None, [*SMALL, "client-num-cpus=2"])  # the same torch threads
    writer = RunWriter(tmp_path / "here", config.to_dict())
    run_rounds(InProcessGrid(app, 2), config, writer, 2)
    assert rows == [{k: v for k, v in r.items() if k != "round_seconds"} for r in writer.rows]
    assert len(rows) == 2


def test_declared_gpus_are_shared_by_client_num_gpus(cluster, tmp_path):
    import torch

    stderr, placement, _ = fedsim_on(cluster, tmp_path / "gpu", "client-num-gpus=0.5",
                                     "client-num-cpus=0.25")
    gpu_node = [n.node_id for n in cluster.list_all_nodes() if not n.head]
    assert len(placement) == 4
    assert sorted(g for p in placement for g in p["gpu_ids"]) == ["0", "0", "1", "1"]
    assert all(len(p["gpu_ids"]) == 1 and [p["node_id"]] == gpu_node for p in placement)
    assert set().union(*(p["clients"] for p in placement)) == set(range(6))
    assert "GPU ids 0 x2, 1 x2" in stderr
    if not torch.cuda.is_available():  # said once, by the driver; the actors ran on the CPU
        assert all(p["device"] == "cpu" for p in placement)
        assert stderr.count("were assigned a GPU (client-num-gpus = 0.5) but find no CUDA device") == 1


def test_start_ray_counts_actors_per_node_against_declared_gpus(cluster, monkeypatch):
    import os

    from fedsim.simulation import _start_ray, _stop_ray

    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # _start_ray sets it
    expected = {0.5: 4, 1.0: 2, 0.3: 6}
    for gpus, actors in expected.items():
        config = load_config(None, ["num-clients=8", f"ray-address={cluster.address}",
                                    f"client-num-gpus={gpus}", "client-num-cpus=0.25"])
        try:
            assert _start_ray(config) == actors
        finally:
            _stop_ray()
    config = load_config(None, [f"ray-address={cluster.address}", "client-num-gpus=3"])
    with pytest.raises(ConfigError, match="no client actor fits"):
        try:
            _start_ray(config)
        finally:
            _stop_ray()
