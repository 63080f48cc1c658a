"""A grid of config values × seeds on one Ray start: runs.csv, table.md, curves.png and,
with ``select = "val"``, the grid point each strategy would pick by validation.

``fedsim compare`` is the grid ``strategy=…``.
"""

from __future__ import annotations

import csv
import itertools
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.config import Config, ConfigError, field_name
from fedsim.history import read_run

CSV_METRICS = ("final_accuracy", "best_accuracy", "final_accuracy_p10", "final_val_accuracy",
               "final_unseen_accuracy", "final_loss", "wall_seconds")


@dataclass(frozen=True)
class Point:
    """One grid point: the (key, value) pairs it sets, in grid order."""

    values: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        """Its directory name: ``strategy`` as its bare value, every other key as
        ``key=value``, joined by ``_`` (characters unsafe in a path become ``_``)."""
        parts = [v if k == "strategy" else f"{k}={v}" for k, v in self.values]
        return re.sub(r"[^A-Za-z0-9.=+,-]", "_", "_".join(parts)) or "run"

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values) or "config"


@dataclass
class Sweep:
    """What a sweep ran: its points, seeds, configs and where each run lives."""

    keys: list[str]
    points: list[Point]
    seeds: list[int]
    out: Path
    configs: dict[tuple[Point, int], Config] = field(default_factory=dict)

    def run_dir(self, point: Point, seed: int) -> Path:
        return self.out / "runs" / f"{point.name}-seed{seed}"


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """``--grid key=v1,v2`` arguments as (key, values); a key given twice, or without
    values, is a ConfigError."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, text = item.partition("=")
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not sep or not key.strip() or not values:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. --grid lr=0.01,0.05)")
        key = key.strip()
        if key == "seed":
            raise ConfigError("--grid seed=...: give seeds with --seeds 0,1,2")
        if any(k == key for k, _ in grid):
            raise ConfigError(f"--grid {key}: given twice; put all its values in one --grid {key}=V1,V2")
        grid.append((key, values))
    return grid


def plan(
    config_path: str | None, overrides: list[str], grid: list[tuple[str, list[str]]], seeds: list[int],
    out: str | Path,
) -> Sweep:
    """Every (point, seed) config, loaded and validated before anything runs (a bad
    value anywhere in the grid is a ConfigError naming it)."""
    from fedsim.validate import load_config

    check_keys(grid)
    check_overrides(overrides, grid)
    keys = [k for k, _ in grid]
    points = [Point(tuple(zip(keys, combo))) for combo in itertools.product(*(v for _, v in grid))]
    sweep = Sweep(keys, points, seeds, Path(out))
    names: dict[str, Point] = {}
    for point in points:
        if names.setdefault(point.name, point) != point:
            raise ConfigError(f"grid points {names[point.name].label()!r} and {point.label()!r} would share "
                              f"the run directory {point.name!r}")
        for seed in seeds:
            sets = [*overrides, *(f"{k}={v}" for k, v in point.values), f"seed={seed}"]
            sweep.configs[point, seed] = load_config(config_path, sets)
    return sweep


def execute(sweep: Sweep, progress: bool = False, select: str | None = None) -> list[str]:
    """Run what is not done yet (every run on one Ray start per resource layout; a
    completed run of the same config is reused), then write ``runs.csv``,
    ``table.md``, ``curves.png`` (and ``selection.md`` with ``select = "val"``).
    Returns the failed runs' descriptions (empty when all completed)."""
    from fedsim.simulation import completed, run_many

    if select not in (None, "val"):
        raise ConfigError(f"--select {select!r}: the allowed value is 'val'")
    if select == "val":
        without = sorted({c.strategy for c in sweep.configs.values() if not c.val_fraction})
        if without:
            raise ConfigError(f"--select val needs val-fraction > 0 (e.g. --set val-fraction=0.1); it is 0 "
                              f"for {', '.join(without)}")
    todo = [(c, sweep.run_dir(p, s)) for (p, s), c in sweep.configs.items()
            if not completed(c, sweep.run_dir(p, s))]
    total = len(sweep.configs)
    print(f"sweep: {total} run(s), {total - len(todo)} already completed, {len(todo)} to run"
          + (" on one Ray start" if todo else ""), file=sys.stderr, flush=True)
    for _, run_dir in todo:
        shutil.rmtree(run_dir, ignore_errors=True)  # a run cut short, or of another config

    def announce(index: int, config: Config, run_dir: Path) -> None:
        print(f"sweep: [{index + 1}/{len(todo)}] {run_dir.name}", file=sys.stderr, flush=True)

    summaries = run_many(todo, progress, announce) if todo else []
    failed = [f"{run_dir.name}: {s.get('error')}" for (_, run_dir), s in zip(todo, summaries)
              if s.get("status") != "completed"]
    write_reports(sweep, select)
    return failed


def collect(sweep: Sweep) -> list[dict[str, Any]]:
    """One record per run: the point's values, seed, status and the summary's metrics."""
    import json

    records = []
    for point in sweep.points:
        for seed in sweep.seeds:
            run_dir = sweep.run_dir(point, seed)
            try:
                summary = json.loads((run_dir / "summary.json").read_text())
            except (OSError, ValueError):
                summary = {"status": "missing"}
            record = {"run": run_dir.name, **dict(point.values), "seed": seed,
                      "status": summary.get("status"), "point": point}
            record.update({k: summary.get(k) for k in CSV_METRICS})
            record["error"] = summary.get("error") or ""
            records.append(record)
    return records


def write_reports(sweep: Sweep, select: str | None = None) -> None:
    records = collect(sweep)
    sweep.out.mkdir(parents=True, exist_ok=True)
    columns = ["run", *sweep.keys, "seed", "status", *CSV_METRICS, "error"]
    with open(sweep.out / "runs.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    (sweep.out / "table.md").write_text(table(sweep, records))
    done = [p for p in sweep.points if any(r["point"] == p and r["status"] == "completed" for r in records)]
    if done:
        plot_curves(sweep, done, sweep.out / "curves.png")
    if select == "val":
        (sweep.out / "selection.md").write_text(selection_table(sweep, records))


def _mean_std(values: list[float]) -> str:
    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}" if values else "–"


def table(sweep: Sweep, records: list[dict[str, Any]]) -> str:
    """Markdown, one row per grid point, over its completed seeds: final accuracy (mean
    of the last 10 evaluated rounds) mean ± std, the clients' 10th percentile, best
    accuracy, and validation / unseen-client accuracy where logged."""
    extra = [(k, title) for k, title in (("final_val_accuracy", "validation"),
                                          ("final_unseen_accuracy", "unseen clients"))
             if any(r[k] is not None for r in records)]
    head = [*(sweep.keys or ["config"]), "final accuracy", "clients p10", "best",
            *(t for _, t in extra), "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for point in sweep.points:
        ok = [r for r in records if r["point"] == point and r["status"] == "completed"]

        def values(key: str, ok: list[dict[str, Any]] = ok) -> list[float]:
            return [r[key] for r in ok if r[key] is not None]

        cells = [v for _, v in point.values] or ["config"]
        cells += [_mean_std(values("final_accuracy")), _mean_std(values("final_accuracy_p10")),
                  _mean_std(values("best_accuracy")), *(_mean_std(values(k)) for k, _ in extra),
                  f"{len(ok)}/{len(sweep.seeds)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def select_by_validation(
    points: list[Point], val: dict[Point, list[float]], group_of: dict[Point, str],
) -> dict[str, Point]:
    """For every group (strategy), the point with the highest mean validation accuracy
    over its seeds (ties: the first in grid order). Only validation accuracies are an
    input: test accuracy cannot influence the choice."""
    best: dict[str, tuple[float, Point]] = {}
    for point in points:
        if not val.get(point):
            continue
        score = float(np.mean(val[point]))
        group = group_of[point]
        if group not in best or score > best[group][0]:
            best[group] = (score, point)
    return {group: point for group, (_, point) in best.items()}


def selection_table(sweep: Sweep, records: list[dict[str, Any]]) -> str:
    """Markdown: per strategy, the grid point chosen by validation and its test accuracy
    over the seeds."""
    ok = [r for r in records if r["status"] == "completed"]
    val = {p: [r["final_val_accuracy"] for r in ok if r["point"] == p and r["final_val_accuracy"] is not None]
           for p in sweep.points}
    group_of = {p: sweep.configs[p, sweep.seeds[0]].strategy for p in sweep.points}
    chosen = select_by_validation(sweep.points, val, group_of)
    lines = ["| strategy | chosen by validation | validation | test accuracy | clients p10 | seeds |",
             "|---|---|---|---|---|---|"]
    for group, point in chosen.items():
        rows = [r for r in ok if r["point"] == point]
        setting = ", ".join(f"{k}={v}" for k, v in point.values if k != "strategy") or "(the config)"
        p10 = [r["final_accuracy_p10"] for r in rows if r["final_accuracy_p10"] is not None]
        lines.append(f"| {group} | {setting} | {_mean_std(val[point])} | "
                     f"{_mean_std([r['final_accuracy'] for r in rows])} | {_mean_std(p10)} | {len(rows)} |")
    return "\n".join(lines) + "\n"


def plot_curves(sweep: Sweep, points: list[Point], output: Path) -> None:
    """Accuracy vs round per grid point: mean over its completed seeds, shaded ± 1 std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedsim.plot import legend_below, save_figure

    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    for point in points:
        curves = []
        for seed in sweep.seeds:
            try:
                _, rows = read_run(sweep.run_dir(point, seed))
            except FileNotFoundError:
                continue
            curve = [(r["round"], r["accuracy"]) for r in rows if r.get("accuracy") is not None]
            if curve:
                curves.append(curve)
        if not curves:
            continue
        length = min(len(c) for c in curves)
        rounds = np.array([r for r, _ in curves[0][:length]])
        acc = np.array([[a for _, a in c[:length]] for c in curves])
        (line,) = ax.plot(rounds, acc.mean(0), label=point.label() if sweep.keys != ["strategy"]
                          else point.values[0][1])
        ax.fill_between(rounds, acc.mean(0) - acc.std(0), acc.mean(0) + acc.std(0),
                        color=line.get_color(), alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (mean over clients)")
    ax.set_title(f"mean over {len(sweep.seeds)} seed(s), shaded ± 1 std")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    legend_below(fig, ax)
    save_figure(fig, output)


def check_overrides(overrides: list[str], grid: list[tuple[str, list[str]]]) -> None:
    """A ``--set`` of a key the grid sets (or of ``seed``, which ``--seeds`` sets) would be
    dropped without a word: a ConfigError naming both."""
    gridded = {field_name(k): k for k, _ in grid}
    for item in overrides:
        key = item.partition("=")[0].strip()
        try:
            name = field_name(key)
        except ConfigError:
            continue  # load_config names the unknown key
        if name == "seed":
            raise ConfigError(f"--set {item!r}: a sweep's seeds come from --seeds (e.g. --seeds 0,1,2)")
        if name in gridded:
            source = f"--grid {gridded[name]}" + (" (compare: --strategies)" if name == "strategy" else "")
            raise ConfigError(f"--set {item!r}: {key} is set by {source} for every run; give its "
                              f"values there only")


def check_keys(grid: list[tuple[str, list[str]]]) -> None:
    """A grid key that is not a config key is a ConfigError naming ``--grid`` (before any
    loading)."""
    for key, _ in grid:
        try:
            field_name(key)
        except ConfigError as exc:
            raise ConfigError(f"--grid {key}: {exc}") from None
