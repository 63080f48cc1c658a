"""Real simulations through Flower's engine on Ray, driven by the CLI (slow: marked)."""

import json
import subprocess
import sys
import textwrap

import pytest

SMALL = ["--set", "num-rounds=3", "--set", "num-clients=6", "--set", "fraction-train=0.5",
         "--set", "head-epochs=2", "--quiet"]


def fedsim(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "fedsim", *args], capture_output=True,
                          text=True, timeout=timeout)


def rows(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "round_seconds"} for line in lines]


@pytest.mark.ray
def test_repeat_run_with_other_node_count_gives_identical_metrics(tmp_path):
    a = fedsim("run", *SMALL, "--out", str(tmp_path / "a"))
    b = fedsim("run", *SMALL, "--set", "num-nodes=3", "--out", str(tmp_path / "b"))
    assert a.returncode == 0, a.stderr
    assert b.returncode == 0, b.stderr
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert len(rows(tmp_path / "a")) == 3
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["wall_seconds"] > 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["num-rounds"] == 3 and config["strategy"] == "fedrep"


PROBE = textwrap.dedent('''
    """Probe algorithm: the head's bias goes up by one per local update and is reported as
    the loss, so the loss rises by exactly 1 per round only if heads persist in client
    state; the server refuses any non-body array."""
    import torch
    from strategies.fedrep import FedRep
    from clients.phases import ClientSpec, Phase, Routine
    from fedsim.algorithms import ALGORITHMS, Algorithm

    def count_up(model, x, y, config, generator):
        with torch.no_grad():
            model.head.bias += 1.0
        return float(model.head.bias[0])

    class BodyOnly(FedRep):
        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            for reply in replies:
                for key in reply.content["arrays"].keys():
                    if not key.startswith("body."):
                        raise AssertionError(f"server received {key}")
            return super().aggregate_train(server_round, replies)

    ALGORITHMS["probe"] = Algorithm(BodyOnly, ClientSpec(train=(Phase("count", "head.", "local_epochs",
                                                                       routine=Routine(count_up)),)))
''')


@pytest.mark.ray
def test_heads_persist_on_ray_actors_and_only_bodies_reach_the_server(tmp_path):
    plugin = tmp_path / "probe_plugin.py"
    plugin.write_text(PROBE)
    result = fedsim("run", *SMALL, "--set", "fraction-train=1.0", "--set", "num-rounds=4",
                    "--set", f"plugins={plugin}", "--set", "strategy=probe",
                    "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    losses = [r["train_loss"] for r in rows(tmp_path / "run")]
    steps = [round(b - a, 5) for a, b in zip(losses, losses[1:])]
    assert steps == [1.0, 1.0, 1.0]


FAILING = textwrap.dedent('''
    from clients.phases import ClientSpec, Phase, Routine
    from fedsim.algorithms import ALGORITHMS, Algorithm
    from strategies.fedrep import FedRep

    def explode(model, x, y, config, generator):
        raise ValueError("client-side failure for the test")

    ALGORITHMS["explode"] = Algorithm(FedRep, ClientSpec(train=(Phase("explode", "", "local_epochs",
                                                                      routine=Routine(explode)),)))
''')


@pytest.mark.ray
def test_client_exception_ends_the_run_with_nonzero_exit_and_its_message(tmp_path):
    plugin = tmp_path / "failing_plugin.py"
    plugin.write_text(FAILING)
    out = tmp_path / "run"
    result = fedsim("run", *SMALL, "--set", f"plugins={plugin}", "--set", "strategy=explode",
                    "--out", str(out))
    assert result.returncode == 1
    assert "ValueError: client-side failure for the test" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "client-side failure" in summary["error"]


@pytest.mark.parametrize(
    "setting, message",
    [("client-num-gpus=0.5", "no CUDA GPU"), ("client-num-cpus=4096", "exceeds the")],
)
def test_impossible_resources_fail_fast_before_ray(tmp_path, setting, message):
    import torch

    if "gpus" in setting and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = fedsim("run", *SMALL, "--set", setting, "--out", str(tmp_path / "run"), timeout=60)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_bad_config_exits_2_with_the_key_named(tmp_path):
    result = fedsim("run", "--set", "num-rouns=5", timeout=60)
    assert result.returncode == 2
    assert "unknown config key 'num-rouns'; did you mean 'num-rounds'?" in result.stderr


@pytest.mark.ray
def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path):
    import os
    import signal
    import time

    args = [*SMALL, "--set", "num-rounds=8", "--set", "checkpoint-every=2", "--set", "head-epochs=10"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "fedsim", "run", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    metrics = killed / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(metrics.read_text().splitlines()) < 8
    resumed = fedsim("resume", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    whole = fedsim("run", *args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    assert rows(killed) == rows(tmp_path / "whole")
    assert json.loads((killed / "summary.json").read_text())["status"] == "completed"


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num-rounds": 3}))
    (tmp_path / "metrics.jsonl").write_text("")
    result = fedsim("resume", str(tmp_path), timeout=60)
    assert result.returncode == 2 and "no checkpoint in" in result.stderr


def test_resuming_a_completed_run_leaves_it_as_it_is(tmp_path):
    """No checkpoint is needed when nothing is left to run: the summary comes back as it was
    (before, "no checkpoint in ..." and exit 2 for a run that had simply finished)."""
    from fedsim import load_config
    from fedsim.history import RunWriter
    from fedsim.simulation import resume

    config = load_config(None, ["num-rounds=2"])
    writer = RunWriter(tmp_path / "done", config.to_dict())
    for r in (1, 2):
        writer.log_round({"round": r, "accuracy": 0.5 * r, "loss": 1.0 / r, "round_seconds": 0.1})
    summary = writer.finish()
    before = {f.name: f.read_bytes() for f in (tmp_path / "done").iterdir()}
    assert resume(tmp_path / "done", progress=False) == summary
    assert {f.name: f.read_bytes() for f in (tmp_path / "done").iterdir()} == before
    older = json.loads((tmp_path / "done" / "config.json").read_text())
    del older["kd3a-finetune"]  # finished by a fedsim that had no such key yet
    (tmp_path / "done" / "config.json").write_text(json.dumps(older))
    assert resume(tmp_path / "done", progress=False) == summary
    writer = RunWriter(tmp_path / "cut", config.to_dict())
    writer.log_round({"round": 1, "accuracy": 0.5, "loss": 1.0, "round_seconds": 0.1})
    writer.finish(error="killed")
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):  # not completed: as before
        resume(tmp_path / "cut", progress=False)


@pytest.mark.parametrize(
    "address, message",
    [("127.0.0.1:9", "nothing answers at 127.0.0.1:9"), ("no-port", "expected HOST:PORT")],
)
def test_unreachable_ray_address_fails_fast(tmp_path, address, message):
    result = fedsim("run", *SMALL, "--set", f"ray-address={address}", "--out", str(tmp_path / "r"),
                    timeout=60)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "r").exists()


FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.ray
@pytest.mark.skipif(not __import__("os").path.isdir(FASHION),
                    reason="apt-get install dataset-fashion-mnist (.ci/run does)")
def test_real_experiment_on_fashion_mnist(tmp_path):
    result = fedsim("run", "--set", "dataset=fashion-mnist", "--set", "num-clients=100",
                    "--set", "fraction-train=0.05", "--set", "fraction-evaluate=0.2",
                    "--set", "num-rounds=3", "--set", "head-epochs=2", "--quiet",
                    "--out", str(tmp_path / "fmnist"), timeout=400)
    assert result.returncode == 0, result.stderr
    import numpy as np

    from strategies.aggregate import sample_clients

    rows_ = rows(tmp_path / "fmnist")
    assert len(rows_) == 3 and len(rows_[-1]["clients"]) == 20
    trained = {c for r in (1, 2, 3) for c in sample_clients(100, 0.05, np.random.default_rng([0, r, 0]))}
    seen = [a for c, a in rows_[-1]["clients"].items() if int(c) in trained]
    unseen = [a for c, a in rows_[-1]["clients"].items() if int(c) not in trained]
    assert seen and unseen
    # 2 classes per client: a trained head is far above chance, an untrained one is not
    assert np.mean(seen) > 0.7 > np.mean(unseen)
