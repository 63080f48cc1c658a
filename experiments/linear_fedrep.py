"""FedRep's linear-representation experiment through the simulator (Collins et al.,
ICML 2021, Fig. 2): principal-angle distance ‖(I − B̂B̂ᵀ)B*‖₂² per round on a log scale,
FedRep vs FedAvg for m ∈ {5, 10, 20} samples per client (d = 20, k = 2, 100 clients, all
clients every round), the test MSE of FedRep, FedAvg and local-only least squares, and
FedRep with d = 10, m = 5, 10% participation for 10 / 100 / 1000 clients.

    python experiments/linear_fedrep.py [--rounds 300] [--out runs/linear]

Every run goes through `fedsim.run` (Flower + Ray), like `fedsim run`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fedsim import load_config
from fedsim.data import load_dataset, make_split
from fedsim.simulation import run_once


def simulate(out: Path, name: str, overrides: list[str]) -> list[dict]:
    config = load_config(None, ["dataset=linear-regression", *overrides])
    return run_once(config, out / "runs" / name)


def local_least_squares_mse(overrides: list[str]) -> float:
    """Each client fits y ≈ xᵀv alone (minimum-norm least squares), tested on its own
    test samples: the local-only baseline of the paper, no federation involved."""
    config = load_config(None, ["dataset=linear-regression", *overrides])
    data = load_dataset(config)
    errors, counts = [], []
    for split in make_split(config, data):
        v = np.linalg.lstsq(data.x[split.train], data.y[split.train], rcond=None)[0]
        residual = data.x[split.test] @ v - data.y[split.test]
        errors.append(float(np.sum(residual**2)))
        counts.append(len(split.test))
    return sum(errors) / sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--out", default="runs/linear")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    summary: dict[str, dict] = {}
    for m, color in zip((5, 10, 20), ("tab:red", "tab:blue", "tab:green")):
        base = [f"samples-per-client={m}", f"num-rounds={args.rounds}"]
        summary[f"m={m}"] = {}
        for strategy, style in (("fedrep", "-"), ("fedavg", "--")):
            rows = simulate(out, f"{strategy}-m{m}", [*base, f"strategy={strategy}"])
            distance = [r["distance"] for r in rows]
            axes[0].semilogy([r["round"] for r in rows], distance, style, color=color,
                             label=f"{strategy}, m={m}")
            first = next((r["round"] for r in rows if r["distance"] <= 1e-5), None)
            summary[f"m={m}"][strategy] = {
                "final_distance": distance[-1], "first_round_below_1e-5": first,
                "test_mse": rows[-1]["loss"],
            }
        summary[f"m={m}"]["local"] = {"test_mse": local_least_squares_mse(base)}
    axes[0].set(xlabel="round", ylabel="‖(I − B̂B̂ᵀ)B*‖₂²", title="d=20, k=2, n=100, all clients")
    axes[0].legend(fontsize=7)

    labels = list(summary)
    width = 0.27
    for i, method in enumerate(("fedrep", "fedavg", "local")):
        values = [summary[label][method]["test_mse"] for label in labels]
        axes[1].bar(np.arange(len(labels)) + (i - 1) * width, values, width, label=method)
    axes[1].set_yscale("log")
    axes[1].set(xticks=range(len(labels)), xticklabels=labels, ylabel="test MSE",
                title="local test MSE after training")
    axes[1].legend(fontsize=7)

    for n in (10, 100, 1000):
        name = f"fedrep-d10-n{n}"
        rows = simulate(out, name, [
            "linear-dim=10", "samples-per-client=5", f"num-clients={n}", "fraction-train=0.1",
            f"num-rounds={args.rounds}", "strategy=fedrep",
        ])
        axes[2].semilogy([r["round"] for r in rows], [r["distance"] for r in rows], label=f"n={n}")
        summary[name] = {"final_distance": rows[-1]["distance"]}
    axes[2].set(xlabel="round", ylabel="‖(I − B̂B̂ᵀ)B*‖₂²", title="d=10, k=2, m=5, 10% participation")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "linear_fedrep.png", dpi=120)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out / 'linear_fedrep.png'}")


if __name__ == "__main__":
    main()
