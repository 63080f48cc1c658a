"""KD3A leave-one-domain-out on the offline Digit-5 stand-in (``digit5-synth``): each
domain in turn is the unlabeled target of 4 source clients (one per other domain);
target accuracy of KD3A vs source-only FedAvg (same rounds, no adaptation), as a table
like the paper's, plus every source's domain weight over rounds. With
``--malicious`` a corrupted source is added to the chosen target's run.

    python experiments/kd3a_lodo.py [--rounds 20] [--per-class 100] [--out runs/kd3a]
    python experiments/kd3a_lodo.py --targets mnistm --malicious shift
    python experiments/kd3a_lodo.py --targets mnistm --set seed=1 --set kd3a-mixup=2

Every run goes through `fedsim.run` (Flower + Ray).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedsim import load_config
from fedsim.datasets import DIGIT5
from fedsim.simulation import run_once


def simulate(out: Path, name: str, overrides: list[str]) -> list[dict]:
    return run_once(load_config(None, overrides), out / "runs" / name)


def final(rows: list[dict], key: str = "accuracy") -> float:
    values = [r[key] for r in rows if r.get(key) is not None][-5:]
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=100)
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
    lines = ["| target | source-only FedAvg | KD3A | gain |", "|---|---|---|---|"]
    fig, axes = plt.subplots(1, len(targets), figsize=(4 * len(targets), 3.4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        setting = [*base, f"target-domain={target}"]
        if args.malicious:  # client 0 holds a copy of a source domain, corrupted
            setting[2] = "num-clients=6"
            setting += ["malicious-sources=0", f"malicious-mode={args.malicious}"]
        suffix = f"-{args.malicious}" if args.malicious else ""
        fedavg = simulate(out, f"fedavg-{target}{suffix}", [*setting, "strategy=fedavg"])
        kd3a = simulate(out, f"kd3a-{target}{suffix}", [*setting, "strategy=kd3a"])
        a, b = final(fedavg), final(kd3a)
        lines.append(f"| {target} | {100 * a:.2f} | {100 * b:.2f} | {100 * (b - a):+.2f} |")
        for source in kd3a[0]["source_weights"]:
            ax.plot([r["round"] for r in kd3a], [r["source_weights"][source] for r in kd3a],
                    label=f"source {source}")
        ax.plot([r["round"] for r in kd3a], [r["target_weight"] for r in kd3a], "k--", label="target")
        ax.set(title=f"target {target}{suffix}", xlabel="round", ylabel="domain weight")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"weights{'-' + args.malicious if args.malicious else ''}.png", dpi=110)
    table = "\n".join(lines) + "\n"
    (out / f"table{'-' + args.malicious if args.malicious else ''}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
