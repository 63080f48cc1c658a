"""Ray started on a thread while the driver loads torch (fedsim/ray_thread.py)."""

import logging
import subprocess
import sys
import threading
import time

import pytest

from fedsim import load_config
from fedsim.config import ConfigError
from fedsim.ray_thread import RayThread


def test_checking_a_config_imports_no_torch():
    code = ("import sys; import fedsim.simulation as s; from fedsim import load_config; "
            "c = load_config(None, ['strategy=ditto', 'model=mlp']); s._check_values(c); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'clients', 'strategies')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_thread_outlives_its_start_until_released_and_hands_back_the_error():
    started, records = [], _Records()
    ray_worker = logging.getLogger("ray._private.worker")  # Ray's: may not propagate; a run sets its level
    level = ray_worker.level
    ray_worker.addHandler(records)
    ray_worker.setLevel(logging.WARNING)

    def init():
        started.append(threading.current_thread().name)
        ray_worker.warning("SIGTERM handler is not set because current thread is not the main thread.")
        ray_worker.warning("another note")
        time.sleep(0.05)
        raise ConfigError("no Ray here")

    thread = RayThread(init)
    try:
        with pytest.raises(ConfigError, match="no Ray here"):
            thread.wait()
        thread.wait(reraise=False)
        assert started == ["fedsim-ray-init"] and thread._thread.is_alive()  # Ray's processes live with it
        assert records.messages == ["another note"]  # fedsim keeps its SIGTERM handler
    finally:
        ray_worker.removeHandler(records)
        ray_worker.setLevel(level)
        thread.release()
    assert not thread._thread.is_alive()


@pytest.mark.parametrize("overrides, early", [
    ([], True), (["strategy=fedbabu"], True), (["vectorize=off"], True),
    (["vectorize=on"], False), (["strategy=fedala"], False), (["plugins=json"], False),
])
def test_ray_starts_early_only_where_the_engine_checks_cannot_refuse(overrides, early):
    from fedsim.simulation import _engine_cannot_refuse

    assert _engine_cannot_refuse(load_config(None, overrides)) is early


def test_a_check_refused_while_ray_starts_stops_it_and_names_the_value(monkeypatch, tmp_path):
    import fedsim.simulation as sim

    ran = []

    def check_engine(config, data, splits):
        raise ConfigError("refused while Ray started")

    monkeypatch.setattr(sim, "_ray_init", lambda config: lambda: ran.append(time.sleep(0.1)))
    monkeypatch.setattr(sim, "_check_engine", check_engine)
    with pytest.raises(ConfigError, match="refused while Ray started"):
        sim.run(load_config(None, ["num-rounds=1"]), tmp_path / "run", progress=False)
    assert ran == [None]  # the start ran to its end, then the thread was let go
    assert not [t for t in threading.enumerate() if t.name == "fedsim-ray-init"]
    assert '"status": "failed"' in (tmp_path / "run" / "summary.json").read_text()


def test_a_ctrl_c_before_the_run_starts_still_lets_the_ray_thread_go(monkeypatch, tmp_path):
    import fedsim.simulation as sim

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(sim, "_ray_init", lambda config: lambda: time.sleep(0.1))
    monkeypatch.setattr(sim, "stop_on_signals", interrupted)  # e.g. while Flower imports
    with pytest.raises(KeyboardInterrupt):
        sim.run(load_config(None, ["num-rounds=1"]), tmp_path / "run", progress=False)
    assert not [t for t in threading.enumerate() if t.name == "fedsim-ray-init"]
