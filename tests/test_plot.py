"""Convergence plots a new user makes: runs that differ in many keys."""

import warnings

import numpy as np

import fedsim.plot
from fedsim.config import Config
from fedsim.history import RunWriter


def _run(path, **changes):
    writer = RunWriter(path, Config(num_rounds=3, **changes).to_dict())
    for r in (1, 2, 3):
        writer.log_round({"round": r, "accuracy": 0.2 * r, "loss": 1.0, "round_seconds": 0.1,
                          "clients": {"0": 0.1 * r, "1": 0.3 * r}})
    writer.finish()
    return str(path)


def test_a_long_legend_sits_below_the_axes_and_rounds_are_whole_numbers(tmp_path, monkeypatch):
    runs = [_run(tmp_path / "a"),
            _run(tmp_path / "b", strategy="fedavg", lr=0.05, batch_size=32, momentum=0.9, seed=3,
                 num_clients=40, fraction_train=0.5, weight_decay=5e-4, classes_per_client=4)]
    shown = {}
    save = fedsim.plot.save_figure

    def keep(fig, output, dpi=120):
        fig.canvas.draw()
        axes = fig.axes[0]
        shown["axes"] = axes.get_window_extent()
        shown["legend"] = fig.legends[0].get_window_extent()
        shown["ticks"] = [t for t in axes.get_xticks() if 1 <= t <= 3]
        shown["figure"] = fig.bbox
        return save(fig, output, dpi)

    monkeypatch.setattr(fedsim.plot, "save_figure", keep)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib's "Tight layout not applied"
        path = fedsim.plot.plot_runs(runs, str(tmp_path / "curves.png"))
    assert path.stat().st_size > 0
    assert shown["legend"].y1 <= shown["axes"].y0  # the legend covers no curve
    assert shown["legend"].x0 >= 0 and shown["legend"].x1 <= shown["figure"].x1  # and fits the figure
    assert np.array_equal(shown["ticks"], [1, 2, 3])
