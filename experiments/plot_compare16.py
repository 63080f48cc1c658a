"""Accuracy curves of a 16-strategy `fedsim compare` grid in two readable panels: the
eight original strategies and the eight baselines of issue 17 (FedAvg drawn in both).

    python experiments/plot_compare16.py runs/issue17-shards -o shards.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fedsim.history import read_run
from fedsim.plot import save_figure

ORIGINAL = ["fedavg", "fedavg-ft", "fedper", "lg-fedavg", "fedrep", "fedbabu", "ditto", "local"]
BASELINES = ["fedavg", "fedprox", "fedbn", "pfedme", "perfedavg", "apfl", "fedrod", "fedala", "fedproto"]


def curves(runs: Path, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """(rounds, accuracy per seed × round) of every seed's run of ``strategy``."""
    rows = [read_run(d)[1] for d in sorted(runs.glob(f"{strategy}-seed*"))]
    evaluated = [[r for r in seed if "accuracy" in r] for seed in rows]
    return (np.array([r["round"] for r in evaluated[0]]),
            np.array([[r["accuracy"] for r in seed] for seed in evaluated]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, help="the --out directory of fedsim compare")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colours = plt.get_cmap("tab10").colors
    for ax, group, title in zip(axes, (ORIGINAL, BASELINES), ("original eight", "baselines of issue 17")):
        for i, strategy in enumerate(group):
            rounds, acc = curves(args.grid / "runs", strategy)
            style = dict(color=colours[i % 10], linestyle="-")
            if strategy == "fedavg":
                style = dict(color="black", linestyle="--")
            ax.plot(rounds, acc.mean(0), label=strategy, **style)
            ax.fill_between(rounds, acc.mean(0) - acc.std(0), acc.mean(0) + acc.std(0), alpha=0.15,
                            color=style["color"])
        ax.set_title(f"{title} (mean over seeds, ± 1 std)")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("test accuracy (mean over clients)")
    axes[0].set_ylim(0, 1.02)
    save_figure(fig, args.output)


if __name__ == "__main__":
    main()
