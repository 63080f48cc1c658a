"""Issue 21: do clients find who should share a body? fedrep-groups (TAG affinity) against
plain FedRep on the rotated-digits benchmark (4 planted groups rotated by 0/90/180/270°,
20 clients, 2 classes each) and on the ordinary 2-class split (no planted groups).

    python experiments/groups_rotated.py --seeds 0,1,2 --out runs/groups

Besides the two settings of the issue: ``rotated-2`` (two planted groups, 0° and 90°, two
groups), ``rotated-10class`` (the rotated benchmark without label skew: every client
holds all 10 classes, so the rotation alone decides who helps whom) and ``rotated-6class``
(6 classes per client: the least label skew at which the found grouping is the planted
one in every seed; ``experiments/affinity_variants.py`` scans the others).

Per seed and setting: the final accuracy (mean of the last 10 rounds) of both strategies,
the adjusted Rand index of the found grouping against the planted one, and the cost of an
affinity round (its affinity phase, in seconds) as a ratio to the median plain FedRep
round of the same setting and seed, and to the median round of the same run after the
grouping (one body per group, no affinity phase; same process, so less exposed to load).
Writes ``table.md`` and the heat map of seed 0 (``affinity_<setting>_seed0.png``) into
``--out``. Every run goes through ``fedsim.run``
(Flower + Ray); completed runs are reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from fedsim import load_config
from fedsim.affinity_plot import affinity_matrix, plot_affinity
from fedsim.cli import int_list
from fedsim.config import ConfigError
from fedsim.data import load_dataset, make_split
from fedsim.history import read_run
from fedsim.rotated import pairs_by_kind, planted_groups
from fedsim.simulation import run_once

COMMON = ["dataset=digits", "num-clients=20", "classes-per-client=2", "fraction-train=1.0",
          "num-rounds=40", "num-groups=4", "group-after=10", "affinity-every=1"]
SETTINGS = {
    "rotated": ["partitioner=rotated", "num-rotations=4"],
    "shards": ["partitioner=shards"],
    # two planted groups (0° and 90°), two groups
    "rotated-2": ["partitioner=rotated", "num-rotations=2", "num-groups=2"],
    # no label skew (every client all 10 classes): the rotation alone sets the groups
    "rotated-10class": ["partitioner=rotated", "num-rotations=4", "classes-per-client=10"],
    # the least label skew at which the found grouping is the planted one (ARI 1 in 3 seeds)
    "rotated-6class": ["partitioner=rotated", "num-rotations=4", "classes-per-client=6"],
}
STRATEGIES = ("fedrep", "fedrep-groups")


def run(out: Path, setting: str, strategy: str, seed: int) -> tuple[list[dict], dict]:
    overrides = [*COMMON, *SETTINGS[setting], f"strategy={strategy}", f"seed={seed}"]
    if strategy == "fedrep":
        overrides = [o for o in overrides if not o.startswith("affinity-every")]
    run_dir = out / "runs" / f"{setting}-{strategy}-seed{seed}"
    for attempt in range(3):  # Ray's start can time out on a loaded machine
        try:
            rows = run_once(load_config(None, overrides), run_dir)
            break
        except ConfigError as exc:
            if "cannot start or attach to Ray" not in str(exc) or attempt == 2:
                raise
            time.sleep(30)
    return rows, json.loads((run_dir / "summary.json").read_text())


def pair_means(run_dir: Path) -> list[float]:
    """Mean Ẑ over ordered client pairs by the angle between their rotations (0°: the
    same planted group; 90°; 180°) and whether they share a class: [0° shared, 0° not,
    90° shared, 90° not, 180° shared, 180° not] (nan where no pair is of that kind)."""
    config = load_config(None, [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in
                                json.loads((run_dir / "config.json").read_text()).items()])
    data = load_dataset(config)
    classes = [set(np.unique(data.y[s.train]).tolist()) for s in make_split(config, data)]
    z = affinity_matrix(read_run(run_dir)[1], config.num_clients)
    kinds = pairs_by_kind(z, planted_groups(config), config.num_rotations, classes)
    return [float(np.mean(k)) if k else float("nan") for k in kinds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2])
    parser.add_argument("--settings", default="rotated,shards,rotated-2,rotated-10class,rotated-6class")
    parser.add_argument("--out", default="runs/groups")
    args = parser.parse_args()
    out = Path(args.out)
    lines = ["| setting | seed | FedRep | fedrep-groups | gain | ARI vs planted | grouping | "
             "affinity phase / FedRep round | / own later round |", "|---|---|---|---|---|---|---|---|---|"]
    gains: dict[str, list[float]] = {}
    aris: list[float] = []
    ratios: list[float] = []
    same: list[float] = []  # the phase against the same run's rounds without it (less load noise)
    for setting in args.settings.split(","):
        for seed in args.seeds:
            plain_rows, plain = run(out, setting, "fedrep", seed)
            rows, grouped = run(out, setting, "fedrep-groups", seed)
            plain_round = statistics.median(r["round_seconds"] for r in plain_rows)
            phase = statistics.median(r["affinity_seconds"] for r in rows if "affinity_seconds" in r)
            ratio = phase / plain_round
            ratios.append(ratio)
            after = statistics.median(r["round_seconds"] for r in rows if "affinity_seconds" not in r)
            same.append(phase / after)
            gain = 100 * (grouped["final_accuracy"] - plain["final_accuracy"])
            gains.setdefault(setting, []).append(gain)
            ari = grouped.get("group_ari")
            if ari is not None:
                aris.append(ari)
            lines.append(
                f"| {setting} | {seed} | {100 * plain['final_accuracy']:.2f} | "
                f"{100 * grouped['final_accuracy']:.2f} | {gain:+.2f} | "
                f"{'—' if ari is None else f'{ari:.3f}'} | {grouped['grouping_method']} | {ratio:.2f} | "
                f"{same[-1]:.2f} |")
            if setting.startswith("rotated") and seed == args.seeds[0]:
                plot_affinity(out / "runs" / f"{setting}-fedrep-groups-seed{seed}",
                              out / f"affinity_{setting}_seed{seed}.png")
    lines.append("")
    for setting, values in gains.items():
        lines.append(f"- {setting}: mean gain {statistics.mean(values):+.2f} points "
                     f"(min {min(values):+.2f})")
    if aris:
        lines.append(f"- ARI over seeds: min {min(aris):.3f}, mean {statistics.mean(aris):.3f}")
    lines.append(f"- affinity phase / plain FedRep round (medians): {statistics.median(ratios):.2f}; / the "
                 f"same run's rounds without it: {statistics.median(same):.2f}")
    lines += ["", "Mean Ẑ(i→j) over ordered pairs (fedrep-groups runs, rounds 1..group-after), by the "
              "angle between the two clients' rotations and whether they share a class:", "",
              "| setting | seed | 0°, shared class | 0°, no shared class | 90°, shared | 90°, not | "
              "180°, shared | 180°, not |", "|---|---|---|---|---|---|---|---|"]
    for setting in args.settings.split(","):
        if setting.startswith("rotated"):
            for seed in args.seeds:
                means = pair_means(out / "runs" / f"{setting}-fedrep-groups-seed{seed}")
                cells = ("—" if np.isnan(m) else f"{m:.4f}" for m in means)
                lines.append(f"| {setting} | {seed} | " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
