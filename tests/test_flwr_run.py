"""`flwr run .` for real: a local simulation SuperLink (loopback, no runtime dependency
installation) started by the test, a 2-round run submitted with --run-config, the run
directory it wrote checked, and only that SuperLink (and its process group) stopped."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "the SuperLink exited at start-up"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the SuperLink did not listen on port {port} within {seconds} s")


@pytest.mark.ray
def test_flwr_run_on_a_local_superlink_writes_a_run_directory(tmp_path):
    port = free_port()
    home, work = tmp_path / "flwr-home", tmp_path / "superlink"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(  # the test's own Flower home, not ~/.flwr
        f'[superlink]\ndefault = "test"\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    log = (tmp_path / "superlink.log").open("w")
    superlink = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--simulation",
         "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(port)],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, superlink, 90)
        result = subprocess.run(
            [str(BIN / "flwr"), "run", str(ROOT), "test", "--run-config",
             "num-rounds=2 num-clients=4 fraction-train=0.5 head-epochs=2",
             "--federation-config", "num-supernodes=2", "--stream"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        runs = sorted((work / "runs").glob("flwr-fedrep-digits-*"))
        assert len(runs) == 1, (result.stdout, (tmp_path / "superlink.log").read_text()[-3000:])
        summary = json.loads((runs[0] / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["rounds_completed"] == 2
        assert summary["final_accuracy"] > 0
        assert set().union(*(p["clients"] for p in summary["placement"])) == {0, 1, 2, 3}
        config = json.loads((runs[0] / "config.json").read_text())
        assert (config["num-rounds"], config["num-clients"]) == (2, 4)
        assert len((runs[0] / "metrics.jsonl").read_text().splitlines()) == 2
    finally:
        os.killpg(superlink.pid, signal.SIGTERM)
        try:
            superlink.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(superlink.pid, signal.SIGKILL)
            superlink.wait()
        log.close()
