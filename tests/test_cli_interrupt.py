"""One Ctrl-C ends a run within seconds: exit 130, one line, no traceback, Ray's
processes gone, summary.json says interrupted, and `fedsim resume` finishes the run
(issue 16, item 2). Real subprocesses in their own session, signalled as a terminal does."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

ROUNDS = 20
RUN = [sys.executable, "-m", "fedsim", "run", "--set", f"num-rounds={ROUNDS}", "--set", "num-clients=4",
       "--set", "checkpoint-every=1", "--set", "round-timeout=60"]


def _interrupt_after_first_round(out, whole_group, sig=signal.SIGINT):
    proc = subprocess.Popen([*RUN, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    watchdog = threading.Timer(180, lambda: os.killpg(proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        for line in proc.stderr:
            if line.startswith("round"):
                break
        if whole_group:
            os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does
        else:
            proc.send_signal(sig)
        start = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
        return proc, time.monotonic() - start, stderr
    finally:
        watchdog.cancel()


def _group_is_gone(pgid, wait=10.0):
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.ray
@pytest.mark.parametrize("whole_group", [True, False], ids=["process-group", "process"])
def test_ctrl_c_ends_the_run_and_resume_completes_it(tmp_path, whole_group):
    out = tmp_path / "run"
    proc, seconds, stderr = _interrupt_after_first_round(out, whole_group)
    assert proc.returncode == 130, stderr
    assert seconds < 20
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("fedsim: interrupted after round ")
    assert f"fedsim resume {out}" in stderr
    assert _group_is_gone(proc.pid), "Ray processes outlived the run"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 1 <= summary["rounds_completed"] < ROUNDS
    if not whole_group:
        return  # one resume is enough
    done = subprocess.run([sys.executable, "-m", "fedsim", "resume", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["rounds_completed"]) == ("completed", ROUNDS)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))


@pytest.mark.ray
def test_sigterm_stops_the_run_like_ctrl_c(tmp_path):
    """A scheduler's or `timeout`'s SIGTERM (to fedsim alone): exit 143, summary.json
    says interrupted by SIGTERM, no traceback (Ray's own handler made it SystemExit 15)."""
    out = tmp_path / "run"
    proc, seconds, stderr = _interrupt_after_first_round(out, whole_group=False, sig=signal.SIGTERM)
    assert proc.returncode == 143, stderr
    assert seconds < 20
    assert "Traceback" not in stderr and "SystemExit" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("fedsim: interrupted after round ")
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["error"]) == ("interrupted", "interrupted (SIGTERM)")
    assert _group_is_gone(proc.pid), "Ray processes outlived the run"


def test_a_stop_kills_only_the_actors_that_still_run_a_task(monkeypatch):
    """Flower waits for every task in flight before it stops: a long round kept a stopped
    run alive for 76-81 s. The actors still busy after the grace are killed, idle ones
    are left to Flower's own shutdown."""
    import ray

    from fedsim import stopping

    class Pool:
        _future_to_actor = {"future-1": "busy-actor"}
        pool = ["idle-actor"]

    class Backend:
        pool = Pool()

    killed = []
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: killed.append((actor, no_restart)))
    monkeypatch.setattr(stopping, "_BACKENDS", [Backend()])
    stopping.kill_busy_actors(0.0)
    assert killed == [("busy-actor", True)]
