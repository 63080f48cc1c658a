"""Convergence plots: accuracy (or LogME) vs round, one curve per run, a band for the client spread."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.config import ConfigError, field_name, key_of
from fedsim.history import EmptyRun, read_run

BAND = (10, 90)  # percentiles of per-client accuracy shown as the shaded band
LEGEND_WIDTH = 90  # characters per legend line; longer run labels wrap


METRICS = {  # --metric: (row key, per-client key, y-axis label)
    "accuracy": ("accuracy", "clients", "test accuracy (sample-weighted mean over clients)"),
    "logme": ("logme", "clients_logme", "LogME of the received body (sample-weighted mean over clients)"),
}


def plot_runs(
    run_dirs: list[str], output: str, label_keys: list[str] | None = None, metric: str = "accuracy"
) -> Path:
    """Write a PNG of ``metric`` (accuracy, or logme with ``logme = true``) vs round for
    ``run_dirs``; legends name each run by the config keys in ``label_keys`` (default: the
    keys whose values differ between runs). Raises EmptyRun, naming the run, if one has
    nothing of ``metric`` to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, per_client, ylabel = METRICS[metric]
    runs = [read_run(d) for d in run_dirs]
    for run_dir, (_, rows) in zip(run_dirs, runs):
        _check_plottable(run_dir, rows, key)
    keys = [_config_key(k) for k in label_keys] if label_keys else None
    labels = run_labels([cfg for cfg, _ in runs], keys)
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for (_, rows), label in zip(runs, labels):
        rows = [r for r in rows if r.get(key) is not None]
        rounds = np.array([r["round"] for r in rows])
        mean = np.array([r[key] for r in rows])
        spread = np.array([np.percentile([v for v in r[per_client].values() if v is not None], BAND)
                           for r in rows])
        (line,) = ax.plot(rounds, mean, label=label)
        ax.fill_between(rounds, spread[:, 0], spread[:, 1], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(f"shaded: {BAND[0]}th-{BAND[1]}th percentile of client {metric}")
    if metric == "accuracy":
        ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    legend_below(fig, ax)
    return save_figure(fig, output)


def _config_key(key: str) -> str:
    """``--label`` ``key`` as config.json spells it (kebab-case); unknown: a ConfigError."""
    try:
        return key_of(field_name(key.replace("_", "-")))
    except ConfigError as exc:
        raise ConfigError(f"--label {key}: {exc}") from None


def legend_below(fig, ax) -> None:
    """The legend of ``ax``'s curves below it (``fig`` made with ``layout="constrained"``),
    labels wrapped and the figure made taller for them, so that many runs, or runs that
    differ in many keys, never cover a curve; whole-number rounds on the x axis."""
    from matplotlib.ticker import MaxNLocator

    handles, labels = ax.get_legend_handles_labels()
    labels = [textwrap.fill(text, LEGEND_WIDTH, break_on_hyphens=False) for text in labels]
    longest = max((len(line) for text in labels for line in text.splitlines()), default=0)
    ncols = 1 if longest > 30 else 2 if longest > 15 else 4
    lines = [text.count("\n") + 1 for text in labels]
    rows = sum(max(lines[i:i + ncols]) for i in range(0, len(lines), ncols))
    fig.legend(handles, labels, loc="outside lower center", fontsize="small", ncols=ncols)
    fig.set_figheight(fig.get_figheight() + 0.2 * rows + 0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers


def _check_plottable(run_dir: str, rows: list[dict[str, Any]], key: str = "accuracy") -> None:
    if any(r.get(key) is not None for r in rows):
        return
    if not rows:
        reason = "its metrics.jsonl is empty (the run stopped before finishing a round)"
    elif key == "logme" and any(r.get("accuracy") is not None or r.get("loss") is not None for r in rows):
        reason = "no round has a LogME (run with logme = true)"
    elif any(r.get("loss") is not None for r in rows):
        reason = "accuracy is null in every round (a regression run: see loss and distance in metrics.jsonl)"
    else:
        reason = "no round has been evaluated yet (eval-every)"
    raise EmptyRun(f"nothing to plot in {str(run_dir)!r}: {reason}")


def save_figure(fig, output: str | Path, dpi: int = 120) -> Path:
    """Lay out, write ``output`` (creating its folder) and close ``fig``."""
    import matplotlib.pyplot as plt

    if fig.get_layout_engine() is None:  # a figure made with its own layout keeps it
        fig.tight_layout()
    path = Path(output)
    if not path.suffix:  # what matplotlib would write, and the name to report
        path = path.with_suffix(".png")
    formats = fig.canvas.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        plt.close(fig)
        raise ConfigError(f"-o {str(output)!r}: cannot write a {path.suffix!r} image; use one of "
                          f"{', '.join('.' + f for f in sorted(formats))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def run_labels(configs: list[dict[str, Any]], keys: list[str] | None = None) -> list[str]:
    """Legend text per run: ``key=value`` for the chosen keys, or for every key that
    differs between the runs (``strategy`` alone when nothing differs)."""
    if keys is None:
        keys = [k for k in configs[0] if len({str(c.get(k)) for c in configs}) > 1] or ["strategy"]
    return [", ".join(f"{k}={c.get(k)}" for k in keys) for c in configs]


def plot_split(config, output: str) -> Path:
    """Picture of a split before a run: clients × classes heat map of training samples
    and the train/test size per client."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedsim.data import load_dataset, make_split

    data = load_dataset(config)
    splits = make_split(config, data)
    classes = max(data.num_classes, 1)
    counts = np.array([np.bincount(data.y[s.train].astype(np.int64), minlength=classes)
                       if data.num_classes else [len(s.train)] for s in splits])
    fig, (heat, sizes) = plt.subplots(
        1, 2, figsize=(11, max(3.5, min(0.18 * len(splits), 14))), width_ratios=[3, 1], sharey=True
    )
    image = heat.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    heat.set(xlabel="class", ylabel="client", title=f"{config.dataset}: training samples per class "
             f"({config.partitioner})")
    fig.colorbar(image, ax=heat, fraction=0.04)
    rows = np.arange(len(splits))
    sizes.barh(rows, [len(s.train) for s in splits], label="train")
    sizes.barh(rows, [len(s.test) for s in splits], left=[len(s.train) for s in splits], label="test")
    sizes.set(xlabel="samples", title="client sizes")
    sizes.legend(fontsize=8)
    return save_figure(fig, output, dpi=110)
