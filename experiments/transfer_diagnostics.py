"""The transfer-learning tools of issue 20 on small runs, over seeds:

    logme      LogME of the received body over rounds for FedRep, FedAvg and Local on digits
               (2-class shards and Dirichlet 0.3), and Spearman's correlation between each
               client's last LogME and its personal accuracy
    gradnorm   FedAvg and FedRep with GradNorm client weights against sample weights (the
               logme grid's runs) and against uniform weights (GradNorm's starting point,
               its step size 1e-12), same splits
    patch      FedRep with model patches (BatchNorm γ/β personal) against FedRep and FedBN on
               the feature-shift digits (digit5-synth, domain partitioner, cnn32bn; the
               config of experiments/compare_domains.toml), with the bytes each client
               sends per round and keeps

    python experiments/transfer_diagnostics.py --seeds 0,1,2 --out runs/transfer
    python experiments/transfer_diagnostics.py --parts patch --seeds 0 --out runs/transfer

Every run goes through ``fedsim.run`` (Flower + Ray); completed runs are reused. Writes
``transfer_*.md`` tables and ``transfer_*.png`` figures into ``--results``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fedsim import load_config
from fedsim.cli import int_list
from fedsim.evidence import spearman
from fedsim.history import read_run
from fedsim.plot import save_figure
from fedsim.simulation import run_once

ROOT = Path(__file__).resolve().parent
SPLITS = {  # digits, 20 clients, every client trains every round
    "shards": ["partitioner=shards", "classes-per-client=2"],
    "dirichlet": ["partitioner=dirichlet", "dirichlet-alpha=0.3"],
}
DIGITS = ["dataset=digits", "num-clients=20", "fraction-train=1.0", "logme=true"]
STRATEGIES = ("fedrep", "fedavg", "local")
GRADNORM = ("fedavg", "fedrep")
PATCH = ("fedrep", "fedrep-patch", "fedbn")


def runs_of(part: str, rounds: int) -> dict[tuple[str, str, str], tuple[str | None, list[str]]]:
    """(split, strategy, weighting) -> (config file, overrides) of one part's grid."""
    out = {}
    if part in ("logme", "gradnorm"):
        for split, keys in SPLITS.items():
            for strategy in STRATEGIES:
                out[(split, strategy, "samples")] = (None, [*DIGITS, *keys, f"strategy={strategy}",
                                                            f"num-rounds={rounds}"])
        if part == "gradnorm":
            for split, keys in SPLITS.items():
                for strategy in GRADNORM:
                    keys_gn = [*DIGITS, *keys, f"strategy={strategy}", f"num-rounds={rounds}",
                               "aggregation=gradnorm"]
                    out[(split, strategy, "gradnorm")] = (None, keys_gn)
                    # control: GradNorm's weights frozen at 1 = a plain unweighted mean of the updates
                    out[(split, strategy, "uniform")] = (None, [*keys_gn, "gradnorm-lr=1e-12"])
    if part == "patch":
        for strategy in PATCH:
            out[("domains", strategy, "samples")] = (str(ROOT / "compare_domains.toml"),
                                                     [f"strategy={strategy}", "logme=true"])
    return out


def run_dir(out: Path, key: tuple[str, str, str], seed: int) -> Path:
    split, strategy, weighting = key
    return out / f"{split}-{strategy}-{weighting}-seed{seed}"


def execute(grid: dict, seeds: list[int], out: Path) -> None:
    configs = {(key, seed): load_config(path, [*keys, f"seed={seed}"])
               for seed in seeds for key, (path, keys) in grid.items()}  # all checked first; seed by seed
    for (key, seed), config in configs.items():
        print(f"transfer: {'/'.join(key)} seed {seed}", file=sys.stderr, flush=True)
        run_once(config, run_dir(out, key, seed))


def final(rows: list[dict], key: str, window: int = 10) -> float:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values[-window:]))


def last_spearman(rows: list[dict]) -> float:
    last = [r for r in rows if r.get("clients_logme")][-1]
    clients = [c for c, v in last["clients_logme"].items() if v is not None]
    return spearman([last["clients_logme"][c] for c in clients], [last["clients"][c] for c in clients])


def pooled(rows: list[dict]) -> tuple[list[float], list[float]]:
    last = [r for r in rows if r.get("clients_logme")][-1]
    clients = [c for c, v in last["clients_logme"].items() if v is not None]
    return [last["clients_logme"][c] for c in clients], [last["clients"][c] for c in clients]


def ms(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    return f"{scale * np.mean(values):.{digits}f} ± {scale * np.std(values):.{digits}f}"


def table(grid: dict, seeds: list[int], out: Path, patch: bool = False) -> str:
    head = ("| split | strategy | weighting | final accuracy % | final LogME | Spearman(LogME, accuracy) "
            "last round |")
    lines = [head + (" bytes sent / kept per client |" if patch else ""),
             "|---|---|---|---|---|---|" + ("---|" if patch else "")]
    for key in grid:
        runs = [read_run(run_dir(out, key, s))[1] for s in seeds]
        rhos = [last_spearman(rows) for rows in runs]
        cells = [*key, ms([final(r, "accuracy") for r in runs], 100),
                 ms([final(r, "logme") for r in runs], 1, 3), ms([v for v in rhos if v == v], 1, 2)]
        if patch:
            import json

            summary = json.loads((run_dir(out, key, seeds[0]) / "summary.json").read_text())
            sizes = summary["bytes_per_client"]
            cells.append(f"{sizes['shared']:,} / {sizes['personal']:,}")
        lines.append("| " + " | ".join(cells) + " |")
    note = f"mean ± std over seeds {seeds}; final = mean of the last 10 evaluated rounds"
    return "\n".join(lines) + f"\n\n{note}.\n"


def ranking_table(grid: dict, seeds: list[int], out: Path) -> str:
    """LogME as the reference uses it, to rank models for a task: per client, Spearman's
    correlation across the strategies between the LogME of each strategy's body and the
    client's accuracy under it (last round), averaged over the clients that have one."""
    lines = ["| split | strategies ranked | mean per-client Spearman(LogME, accuracy) across strategies | "
             "clients with a defined correlation |", "|---|---|---|---|"]
    for split in SPLITS:
        keys = [k for k in grid if k[0] == split and k[2] == "samples"]
        if len(keys) < 2:
            continue
        rhos = []
        for seed in seeds:
            lasts = [[r for r in read_run(run_dir(out, k, seed))[1] if r.get("clients_logme")][-1]
                     for k in keys]
            for client in lasts[0]["clients_logme"]:
                rho = spearman([last["clients_logme"][client] for last in lasts],
                               [last["clients"][client] for last in lasts])
                if rho == rho:
                    rhos.append(rho)
        lines.append(f"| {split} | {', '.join(k[1] for k in keys)} | {ms(rhos)} | {len(rhos)} of "
                     f"{20 * len(seeds)} |")
    return "\n".join(lines) + f"\n\nseeds {seeds}; ± is the std over clients and seeds.\n"


def plot_logme(grid: dict, seeds: list[int], out: Path, output: Path, weighting: str = "samples") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = sorted({k[0] for k in grid}, key=list(SPLITS).index)
    fig, axes = plt.subplots(2, len(splits), figsize=(5.5 * len(splits), 7), squeeze=False)
    for col, split in enumerate(splits):
        for key in [k for k in grid if k[0] == split and k[2] == weighting]:
            for row, metric in enumerate(("logme", "accuracy")):
                curves = []
                for seed in seeds:
                    rows = [r for r in read_run(run_dir(out, key, seed))[1] if r.get(metric) is not None]
                    curves.append([r[metric] for r in rows])
                first = read_run(run_dir(out, key, seeds[0]))[1]
                rounds = [r["round"] for r in first if r.get(metric) is not None]
                curves = np.array(curves)
                ax = axes[row, col]
                (line,) = ax.plot(rounds, curves.mean(0), label=key[1])
                ax.fill_between(rounds, curves.mean(0) - curves.std(0), curves.mean(0) + curves.std(0),
                                color=line.get_color(), alpha=0.2)
                ax.set(xlabel="round", ylabel="LogME of the received body" if metric == "logme" else
                       "personal test accuracy", title=f"digits, {split}")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
    save_figure(fig, output)


def plot_scatter(grid: dict, seeds: list[int], out: Path, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in grid if k[2] == "samples"]
    splits = sorted({k[0] for k in keys}, key=list(SPLITS).index)
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4), squeeze=False)
    for col, split in enumerate(splits):
        ax = axes[0, col]
        for key in [k for k in keys if k[0] == split]:
            xs, ys = [], []
            for seed in seeds:
                a, b = pooled(read_run(run_dir(out, key, seed))[1])
                xs += a
                ys += b
            ax.scatter(xs, ys, s=10, alpha=0.6, label=key[1])
        ax.set(xlabel="client's LogME (last round)", ylabel="client's personal accuracy",
               title=f"digits, {split}: one dot per client and seed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="logme,gradnorm,patch")
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=30, help="rounds of the digits runs")
    parser.add_argument("--out", default="runs/transfer")
    parser.add_argument("--results", default=str(ROOT / "results"))
    args = parser.parse_args(argv)
    out, results = Path(args.out), Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for part in parts:
        grid = runs_of(part, args.rounds)
        execute(grid, args.seeds, out)
        shown = {k: v for k, v in grid.items() if part != "gradnorm" or k[1] in GRADNORM}
        text = table(shown, args.seeds, out, patch=part == "patch")
        (results / f"transfer_{part}_table.md").write_text(text)
        print(text)
        if part == "logme":
            ranking = ranking_table(grid, args.seeds, out)
            (results / "transfer_logme_ranking.md").write_text(ranking)
            print(ranking)
            plot_logme(grid, args.seeds, out, results / "transfer_logme_curves.png")
            plot_scatter(grid, args.seeds, out, results / "transfer_logme_scatter.png")
        if part == "patch":
            plot_logme_domains(grid, args.seeds, out, results / "transfer_patch_curves.png")
    return 0


def plot_logme_domains(grid: dict, seeds: list[int], out: Path, output: Path) -> None:
    """Accuracy and LogME vs round of the patch comparison (one panel each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in grid:
        for ax, metric in zip(axes, ("accuracy", "logme")):
            runs = [[r for r in read_run(run_dir(out, key, s))[1] if r.get(metric) is not None]
                    for s in seeds]
            curves = np.array([[r[metric] for r in rows] for rows in runs])
            rounds = [r["round"] for r in runs[0]]
            (line,) = ax.plot(rounds, curves.mean(0), label=key[1])
            ax.fill_between(rounds, curves.mean(0) - curves.std(0), curves.mean(0) + curves.std(0),
                            color=line.get_color(), alpha=0.2)
            ax.set(xlabel="round", ylabel=metric, title=f"digit5-synth, domain split, cnn32bn: {metric}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    save_figure(fig, output)


if __name__ == "__main__":
    sys.exit(main())
