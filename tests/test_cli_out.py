"""An output directory that cannot be written is refused before Ray starts, exit code 2,
naming --out, the path and the reason (issue 16, item 3). Honest as root too: the check
creates the directory and writes into it."""

import pytest

from fedsim.cli import main

SMALL = ["--set", "num-rounds=1", "--set", "num-clients=2", "--quiet"]


def _cases(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    return {"sysfs": "/sys/fedsim-x", "procfs": "/proc/fedsim-x", "under-a-file": str(a_file / "sub")}


@pytest.mark.parametrize("case", ["sysfs", "procfs", "under-a-file"])
def test_an_unwritable_out_is_refused_before_ray_starts(tmp_path, capsys, case):
    import ray

    out = _cases(tmp_path)[case]
    assert main(["run", *SMALL, "--out", out]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    prefix = f"fedsim: error: --out {out!r}: cannot write the run directory: "
    assert message.startswith(prefix) and len(message) > len(prefix)  # ... and the reason
    assert not ray.is_initialized()


def test_an_out_holding_a_run_is_refused(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("")
    assert main(["run", *SMALL, "--out", str(tmp_path)]) == 2
    assert f"--out {str(tmp_path)!r} already holds a run" in capsys.readouterr().err


def test_the_command_exits_quickly_with_its_code_its_output_flushed_and_the_exit_handlers_run(tmp_path):
    """``fedsim`` ends with os._exit after main(): stdout redirected to a file (block-buffered)
    still holds the last line, the exit code is main's, and atexit handlers (Ray's shutdown
    among them) ran first."""
    import subprocess
    import sys

    marker = tmp_path / "atexit-ran"
    script = ("import atexit, sys\n"
              f"atexit.register(lambda: open({str(marker)!r}, 'w').write('yes'))\n"
              "from fedsim.cli import entry\n"
              "sys.argv = ['fedsim', *sys.argv[1:]]\n"
              "entry()\n")
    png = tmp_path / "split.png"
    with open(tmp_path / "out.txt", "w") as out:
        ok = subprocess.run([sys.executable, "-c", script, "split", "--set", "num-clients=4", "-o", str(png)],
                            stdout=out, stderr=subprocess.PIPE, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out.txt").read_text() == f"wrote {png}\n" and png.is_file()
    assert marker.read_text() == "yes"
    bad = subprocess.run([sys.executable, "-m", "fedsim", "run", "--set", "num-clients=0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("fedsim: error: num-clients"), bad.stderr
