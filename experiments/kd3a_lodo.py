"""KD3A leave-one-domain-out on the offline Digit-5 stand-in (``digit5-synth``): each
domain in turn is the unlabeled target of 4 source clients (one per other domain);
target accuracy of KD3A vs source-only FedAvg (same rounds, no adaptation), as a table
like the paper's (mean ± standard deviation over ``--seeds``: with a few hundred target
test images one seed moves accuracy by ±2 points), plus every source's domain weight
over rounds (first seed). With ``--malicious`` a corrupted source is added to the chosen
target's run.

    python experiments/kd3a_lodo.py [--rounds 15] [--per-class 50] [--seeds 0,1,2] [--out runs/kd3a]
    python experiments/kd3a_lodo.py --targets mnistm --malicious shift
    python experiments/kd3a_lodo.py --targets mnistm --seeds 0 --set kd3a-mixup=2

Every run goes through `fedsim.run` (Flower + Ray).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from fedsim import load_config
from fedsim.cli import int_list
from fedsim.datasets import DIGIT5
from fedsim.simulation import run_once


def simulate(out: Path, name: str, overrides: list[str]) -> list[dict]:
    return run_once(load_config(None, overrides), out / "runs" / name)


def final(rows: list[dict], key: str = "accuracy") -> float:
    values = [r[key] for r in rows if r.get(key) is not None][-5:]
    return sum(values) / len(values)


def spread(values: list[float]) -> str:
    """``mean ± sd`` in percent (just the value for one seed)."""
    mean = 100 * statistics.mean(values)
    return f"{mean:.2f}" if len(values) < 2 else f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--seeds", type=int_list, default="0,1,2",
                        help="comma-separated seeds (table: mean ± sd)")
    parser.add_argument("--targets", default=",".join(DIGIT5))
    parser.add_argument("--malicious", choices=["shift", "noise"], help="add a corrupted 5th source")
    parser.add_argument("--out", default="runs/kd3a")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config value, for both strategies (repeatable)")
    args = parser.parse_args()
    out = Path(args.out)
    base = ["dataset=digit5-synth", "partitioner=domain", "num-clients=5", "fraction-train=1.0",
            f"synth-per-class={args.per_class}", f"num-rounds={args.rounds}", "batch-size=32",
            "lr=0.05", "momentum=0.9", "weight-decay=5e-4", *args.set]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in args.targets.split(",") if t]
    lines = ["| target | source-only FedAvg | KD3A | gain | gain per seed |", "|---|---|---|---|---|"]
    fig, axes = plt.subplots(1, len(targets), figsize=(4 * len(targets), 3.4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        setting = [*base, f"target-domain={target}"]
        if args.malicious:  # client 0 holds a copy of a source domain, corrupted
            setting[2] = "num-clients=6"
            setting += ["malicious-sources=0", f"malicious-mode={args.malicious}"]
        suffix = f"-{args.malicious}" if args.malicious else ""
        fedavg, kd3a, weights = [], [], None
        for seed in args.seeds:
            run, name = [*setting, f"seed={seed}"], f"{target}{suffix}-seed{seed}"
            fedavg.append(final(simulate(out, f"fedavg-{name}", [*run, "strategy=fedavg"])))
            rows = simulate(out, f"kd3a-{name}", [*run, "strategy=kd3a"])
            kd3a.append(final(rows))
            weights = weights or rows
        gains = [b - a for a, b in zip(fedavg, kd3a)]
        per_seed = " / ".join(f"{100 * g:+.2f}" for g in gains)
        lines.append(f"| {target} | {spread(fedavg)} | {spread(kd3a)} | "
                     f"{100 * statistics.mean(gains):+.2f} | {per_seed} |")
        for source in weights[0]["source_weights"]:
            ax.plot([r["round"] for r in weights], [r["source_weights"][source] for r in weights],
                    label=f"source {source}")
        ax.plot([r["round"] for r in weights], [r["target_weight"] for r in weights], "k--", label="target")
        ax.set(title=f"target {target}{suffix} (seed {args.seeds[0]})", xlabel="round",
               ylabel="domain weight")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"weights{'-' + args.malicious if args.malicious else ''}.png", dpi=110)
    table = "\n".join(lines) + "\n"
    (out / f"table{'-' + args.malicious if args.malicious else ''}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
