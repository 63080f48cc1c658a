"""A grid of strategies × seeds on one split: a markdown table and an overlay plot."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fedsim.history import read_run
from fedsim.plot import save_figure


def compare(
    config_path: str | None, overrides: list[str], strategies: list[str], seeds: list[int],
    out: str | Path, progress: bool = False,
) -> Path:
    """Run every (strategy, seed) into ``out/runs/<strategy>-seed<seed>`` (skipping runs
    already completed there), then write ``out/table.md`` and ``out/curves.png``."""
    from fedsim.simulation import run_once
    from fedsim.validate import load_config

    out = Path(out)
    configs = {
        (s, seed): load_config(config_path, [*overrides, f"strategy={s}", f"seed={seed}"])
        for s in strategies for seed in seeds
    }  # every config is validated before the first run starts
    for (strategy, seed), config in configs.items():
        print(f"compare: {strategy} seed {seed}", file=sys.stderr, flush=True)
        run_once(config, out / "runs" / f"{strategy}-seed{seed}", progress)
    table = comparison_table(out / "runs", strategies, seeds)
    (out / "table.md").write_text(table)
    plot_comparison(out / "runs", strategies, seeds, out / "curves.png")
    return out


def comparison_table(runs: Path, strategies: list[str], seeds: list[int]) -> str:
    """Markdown: final accuracy mean ± std over seeds, and the spread across clients
    (10th–90th percentile of client accuracy at the last round, averaged over seeds)."""
    lines = [
        "| strategy | final accuracy (mean ± std over seeds) | clients p10–p90 (last round) | seeds |",
        "|---|---|---|---|",
    ]
    for strategy in strategies:
        finals, lows, highs = [], [], []
        for seed in seeds:
            _, rows = read_run(runs / f"{strategy}-seed{seed}")
            evaluated = [r for r in rows if "accuracy" in r]
            finals.append(np.mean([r["accuracy"] for r in evaluated[-10:]]))
            low, high = np.percentile(list(evaluated[-1]["clients"].values()), [10, 90])
            lows.append(low)
            highs.append(high)
        lines.append(
            f"| {strategy} | {100 * np.mean(finals):.2f} ± {100 * np.std(finals):.2f} | "
            f"{100 * np.mean(lows):.1f}–{100 * np.mean(highs):.1f} | {len(seeds)} |"
        )
    return "\n".join(lines) + "\n"


def plot_comparison(runs: Path, strategies: list[str], seeds: list[int], output: Path) -> None:
    """Accuracy vs round per strategy: mean over seeds, shaded ± one std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for strategy in strategies:
        curves = []
        for seed in seeds:
            _, rows = read_run(runs / f"{strategy}-seed{seed}")
            curves.append([(r["round"], r["accuracy"]) for r in rows if "accuracy" in r])
        rounds = np.array([r for r, _ in curves[0]])
        acc = np.array([[a for _, a in c] for c in curves])
        (line,) = ax.plot(rounds, acc.mean(0), label=strategy)
        ax.fill_between(rounds, acc.mean(0) - acc.std(0), acc.mean(0) + acc.std(0),
                        color=line.get_color(), alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (mean over clients)")
    ax.set_title(f"mean over {len(seeds)} seed(s), shaded ± 1 std")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, output)
