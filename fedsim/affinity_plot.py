"""``fedsim affinity RUN_DIR -o FILE.png``: the running mean Ẑ of a run's measured
inter-client affinities as a clients × clients heat map, ordered by group."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedsim.affinity import running_mean
from fedsim.history import EmptyRun, read_run
from fedsim.plot import save_figure


def affinity_matrix(rows: list[dict], num_clients: int) -> np.ndarray:
    """Ẑ from the rows' ``affinity`` entries ([i, j, Z_{i→j}] each): the mean of every
    pair's measurements (nan where never measured), as the server keeps it."""
    total = np.zeros((num_clients, num_clients))
    count = np.zeros((num_clients, num_clients), dtype=np.int64)
    for row in rows:
        for i, j, z in row.get("affinity", []):
            total[i, j] += z
            count[i, j] += 1
    return running_mean(total, count)


def client_order(summary: dict, num_clients: int) -> tuple[list[int], list[int], str]:
    """(order, group of each client in that order, which grouping): the found groups if
    the run grouped its clients, else the planted ones, else one group."""
    if summary.get("grouping_method"):
        groups, name = summary["groups"], f"found groups ({summary['grouping_method']})"
    elif summary.get("planted_groups"):
        groups, name = summary["planted_groups"], "planted groups"
    else:
        groups, name = [0] * num_clients, "client id"
    order = sorted(range(num_clients), key=lambda c: (groups[c], c))
    return order, [groups[c] for c in order], name


def plot_affinity(run_dir: str | Path, output: str | Path) -> Path:
    """Write the heat map of ``run_dir``'s Ẑ to ``output``; EmptyRun if it measured none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config, rows = read_run(run_dir)
    if not any(row.get("affinity") for row in rows):
        raise EmptyRun(f"{str(run_dir)!r} measured no affinity (strategy = 'fedrep-groups' with "
                       f"affinity-every > 0 measures it)")
    n = int(config["num-clients"])
    summary_path = Path(run_dir) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    z = affinity_matrix(rows, n)
    order, groups, name = client_order(summary, n)
    shown = z[np.ix_(order, order)]
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    limit = np.nanmax(np.abs(shown)) if np.isfinite(shown).any() else 1.0
    image = ax.imshow(shown, cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.colorbar(image, ax=ax, label="Ẑ(i→j) = 1 − L_j(θ+Δ_i)/L_j(θ), mean over rounds")
    for k in range(1, n):
        if groups[k] != groups[k - 1]:
            ax.axhline(k - 0.5, color="black", lw=1)
            ax.axvline(k - 0.5, color="black", lw=1)
    labels = [str(c) for c in order]
    ax.set_xticks(range(n), labels, fontsize=6, rotation=90)
    ax.set_yticks(range(n), labels, fontsize=6)
    ax.set_xlabel("client j (whose loss is measured)")
    ax.set_ylabel("client i (whose update is applied)")
    measured = sum(1 for row in rows if row.get("affinity"))
    title = f"inter-client affinity, {measured} round(s), ordered by {name}"
    if summary.get("group_ari") is not None and summary.get("grouping_method"):
        title += f"\nARI vs planted {summary['group_ari']:.3f}"
    ax.set_title(title, fontsize=9)
    return save_figure(fig, output)
