"""What a run reports when it ends (summary.json, the closing line) and `fedsim plot` on
runs with nothing to draw: issue 16, items 1 and 5."""

import json

import pytest
from inprocess import InProcessGrid

from clients.app import app
from fedsim.cli import _report, main
from fedsim.history import RunWriter, summarize
from fedsim.server import run_rounds
from fedsim.validate import load_config


def test_a_regression_run_summarises_its_loss_and_distance(tmp_path, capsys):
    """The README's linear experiment, shrunk, through the real round loop in process: it
    used to end in a TypeError formatting final_loss = None."""
    config = load_config(None, ["dataset=linear-regression", "num-clients=6", "num-rounds=3"])
    writer = RunWriter(tmp_path / "run", config.to_dict())
    run_rounds(InProcessGrid(app, 2), config, writer, 2)
    summary = writer.finish()
    rows = writer.rows
    assert summary["final_accuracy"] is None and summary["best_accuracy"] is None
    assert summary["final_loss"] == pytest.approx(sum(r["loss"] for r in rows) / 3)
    assert summary["final_distance"] == pytest.approx(sum(r["distance"] for r in rows) / 3)
    assert summary["rounds_averaged"] == 3
    assert _report(summary, "out") == 0
    line = capsys.readouterr().out
    assert line.startswith(f"final_loss {summary['final_loss']:.4g}, final_distance ")
    assert "(mean of the last 3 evaluated rounds)" in line


def test_summary_means_over_the_last_ten_evaluated_rounds_and_says_how_many():
    rows = [{"round": r, "accuracy": r / 100, "loss": 1.0 / r} for r in range(1, 13)]
    rows.append({"round": 13, "train_loss": 0.1})  # not evaluated (eval-every): not counted
    summary = summarize(rows)
    assert summary["rounds_completed"] == 13
    assert summary["final_accuracy"] == pytest.approx(sum(range(3, 13)) / 1000)
    assert summary["rounds_averaged"] == 10
    assert summary["final_distance"] is None
    assert summarize(rows[:2])["rounds_averaged"] == 2
    assert summarize([])["rounds_averaged"] == 0


@pytest.mark.parametrize("rows, window", [
    (5, "(mean of the last 5 evaluated rounds)"),
    (1, "(the last evaluated round)"),
    (0, "no evaluated round,"),
])
def test_the_closing_line_says_how_many_rounds_it_averaged(rows, window, capsys):
    summary = summarize([{"round": r, "accuracy": 0.5, "loss": 1.0} for r in range(1, rows + 1)])
    summary["wall_seconds"] = 1.0
    _report(summary, "out")
    line = capsys.readouterr().out
    assert window in line
    assert ("final_accuracy 0.5000, final_loss 1" in line) == (rows > 0)


def test_summary_json_always_has_error_and_status(tmp_path):
    done = RunWriter(tmp_path / "done", {}).finish()
    assert (done["status"], done["error"]) == ("completed", None)
    assert json.loads((tmp_path / "done" / "summary.json").read_text())["error"] is None
    failed = RunWriter(tmp_path / "failed", {}).finish(error="RuntimeError: boom")
    assert (failed["status"], failed["error"]) == ("failed", "RuntimeError: boom")
    stopped = RunWriter(tmp_path / "stopped", {}).finish(error="interrupted", status="interrupted")
    assert stopped["status"] == "interrupted"


def _run_dir(path, rows):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"strategy": "fedrep"}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("rows, reason", [
    ([], "its metrics.jsonl is empty"),
    ([{"round": 1, "accuracy": None, "loss": 0.5, "distance": 0.1}], "a regression run"),
    ([{"round": 1, "train_loss": 0.5}], "no round has been evaluated yet"),
])
def test_plot_of_a_run_with_nothing_to_draw_is_an_error(tmp_path, capsys, rows, reason):
    good = _run_dir(tmp_path / "good", [{"round": 1, "accuracy": 0.5, "clients": {"0": 0.5}}])
    empty = _run_dir(tmp_path / "empty", rows)
    out = tmp_path / "plot.png"
    assert main(["plot", good, empty, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"fedsim: error: nothing to plot in {empty!r}: " in err and reason in err
    assert not out.exists()
    assert main(["plot", good, "-o", str(out)]) == 0 and out.is_file()
