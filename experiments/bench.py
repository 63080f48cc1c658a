"""fedsim vs a plain PyTorch loop doing exactly the same work; prints a markdown table.

The reference is one process, no framework: the same data, split, model, sampling,
local routine, generator seeds, averaging and evaluation as a fedsim run, in a for loop.
fedsim runs the same config through Flower + Ray. Runs alternate (reference, fedsim, ...)
and each figure is the median over ``--repeats``; ratios are fedsim / reference measured
in this invocation. Memory is the peak resident set of the process tree (driver, Ray
daemons and actors; read from /proc, so Linux only).

    python experiments/bench.py                 # FedRep and FedAvg digits, 100 clients, 3 repeats
    python experiments/bench.py --workload fmnist --rounds 50   # FedRep Fashion-MNIST, 1000 clients, 10%
    python experiments/bench.py --workload cnn   # cnn28 on Fashion-MNIST, 100 clients, 10%
    python experiments/bench.py --scaling --clients 1000,10000,100000 --fraction 0.01   # Synthetic(1, 1)

``--set KEY=VALUE`` changes every workload's config (e.g. ``--set vectorize=off``).
"fixed cost" is fedsim's wall time minus the sum of its rounds (start-up and shutdown) in
this process, whose imports are warm; "from process start" is the same for ``fedsim run``
in a new process, from its start to its exit (imports included);
"max gap" is the largest per-round difference of accuracy (or loss) from the plain loop
(0 when fedsim runs the same arithmetic client by client: ``vectorize = "off"``); a gap
above ``GAP_WARNING`` (the engine's stated tolerance, 0.5 points) is reported on stderr:
float summation order alone stays far below it (the fifteenth session's CNN bug showed 0.10).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from clients.engine import train_one
from clients.phases import submodule
from clients.routines import evaluate
from clients.seeds import client_seed
from fedsim import load_config, run
from fedsim.algorithms import ALGORITHMS, client_model, strategy_class
from fedsim.cli import int_list
from fedsim.config import Config
from fedsim.data import load_dataset, make_split
from fedsim.history import read_run
from strategies.aggregate import sample_clients, weighted_average


def reference_loop(config: Config) -> tuple[float, list[float], list[float]]:
    """The plain loop: (wall seconds, per-round seconds, per-round accuracy or loss)."""
    start = time.perf_counter()
    data = load_dataset(config)
    splits = make_split(config, data)
    tensors = [
        tuple(torch.from_numpy(a[idx]) for idx in (s.train, s.test) for a in (data.x, data.y))
        for s in splits
    ]
    spec = ALGORITHMS[config.strategy].client
    shares = strategy_class(config.strategy)(config).shares
    model = client_model(config, data)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    shared = {k: v.clone() for k, v in initial.items() if shares(k)}
    personal: dict[int, dict[str, torch.Tensor]] = {}
    round_seconds, scores = [], []
    for server_round in range(1, config.num_rounds + 1):
        t0 = time.perf_counter()
        sampled = sample_clients(config.num_clients, config.fraction_train,
                                 np.random.default_rng([config.seed, server_round, 0]))
        weights, updates = [], []
        for c in sampled:
            x, y, _, _ = tensors[c]
            model.load_state_dict({**initial, **personal.get(c, {}), **shared})
            generator = torch.Generator().manual_seed(client_seed(config.seed, server_round, c))
            train_one(model, spec.train, x, y, config, generator)
            state = model.state_dict()
            updates.append({k: state[k].numpy().copy() for k in shared})
            weights.append(len(y))
            personal[c] = {k: v.clone() for k, v in state.items() if k not in shared}
        shared = {k: torch.from_numpy(v) for k, v in weighted_average(weights, updates).items()}
        if server_round % config.eval_every and server_round != config.num_rounds:
            round_seconds.append(time.perf_counter() - t0)
            continue
        evaluated = sample_clients(config.num_clients, config.fraction_evaluate,
                                   np.random.default_rng([config.seed, server_round, 1]))
        total, score = 0, 0.0
        for c in evaluated:
            x_train, y_train, x, y = tensors[c]
            model.load_state_dict({**initial, **personal.get(c, {}), **shared})
            generator = torch.Generator().manual_seed(client_seed(config.seed, server_round, c, stream=1))
            train_one(model, spec.finetune, x_train, y_train, config, generator)
            accuracy, loss = evaluate(submodule(model, spec.evaluates), x, y)
            score += len(y) * (loss if np.isnan(accuracy) else accuracy)
            total += len(y)
        scores.append(score / total)
        round_seconds.append(time.perf_counter() - t0)
    return time.perf_counter() - start, round_seconds, scores


class PeakMemory:
    """Peak summed RSS of this process and all its descendants, sampled every 0.2 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(os.getpid()))
            self._stop.wait(0.2)


def _tree_rss(root: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid = int(entry)
        children.setdefault(int(fields["PPid"]), []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def measure(config: Config, repeats: int, overrides: list[str]) -> dict[str, float]:
    """Alternate reference and fedsim runs; medians of each figure. The reference runs
    single-threaded: for these small models that beats torch's default thread count
    (and an oversubscribed machine makes multi-threaded tiny ops collapse). Each repeat
    also runs ``fedsim run`` (``overrides`` as --set) in a new process: its fixed cost
    counts from process start (imports included) to its exit."""
    torch.set_num_threads(1)
    ref_wall, ref_round, ref_mem, sim_wall, sim_round, sim_mem, gaps, fixed = [], [], [], [], [], [], [], []
    cold = []
    for _ in range(repeats):
        with PeakMemory() as mem:
            wall, rounds, scores = reference_loop(config)
        ref_wall.append(wall)
        ref_round.append(statistics.median(rounds[2:] or rounds))
        ref_mem.append(mem.peak)
        with tempfile.TemporaryDirectory() as tmp, PeakMemory() as mem:
            start = time.perf_counter()
            run(config, Path(tmp) / "run", progress=False)
            sim_wall.append(time.perf_counter() - start)
            rows = read_run(Path(tmp) / "run")[1]
        fixed.append(sim_wall[-1] - sum(r["round_seconds"] for r in rows))
        cold.append(command_fixed_cost(overrides))
        sim_mem.append(mem.peak)
        sim_round.append(statistics.median([r["round_seconds"] for r in rows][2:] or [0.0]))
        sim_scores = [r["accuracy"] if r["accuracy"] is not None else r["loss"]
                      for r in rows if "loss" in r]
        gaps.append(float(np.max(np.abs(np.subtract(sim_scores, scores)))))
    updates = max(1, round(config.fraction_train * config.num_clients))
    m = statistics.median
    return {
        "ref_wall": m(ref_wall), "sim_wall": m(sim_wall), "ref_round": m(ref_round),
        "sim_round": m(sim_round), "ref_mem": m(ref_mem), "sim_mem": m(sim_mem),
        "overhead_ms": 1000 * (m(sim_round) - m(ref_round)) / updates, "gap": max(gaps),
        "fixed": m(fixed), "cold": m(cold),
    }


def command_fixed_cost(overrides: list[str]) -> float:
    """``fedsim run`` in a new process: its wall time (process start to exit) minus the
    sum of its rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        sets = [arg for o in overrides for arg in ("--set", o)]
        start = time.perf_counter()
        command = [sys.executable, "-m", "fedsim", "run", *sets, "--quiet", "--out", f"{tmp}/run"]
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"fedsim run failed ({done.returncode}): {done.stderr}")
        return wall - sum(r["round_seconds"] for r in read_run(Path(tmp) / "run")[1])


def table(rows: list[tuple[str, dict[str, float]]]) -> str:
    lines = [
        "| workload | plain loop wall | fedsim wall | wall ratio | plain round | fedsim round | "
        "round ratio | fixed cost | fixed cost from process start | overhead per client update | "
        "peak memory ratio | max gap |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['ref_wall']:.1f} s | {r['sim_wall']:.1f} s | "
            f"{r['sim_wall'] / r['ref_wall']:.2f}x | {1000 * r['ref_round']:.0f} ms | "
            f"{1000 * r['sim_round']:.0f} ms | {r['sim_round'] / r['ref_round']:.2f}x | "
            f"{r['fixed']:.1f} s | {r['cold']:.1f} s | {r['overhead_ms']:+.1f} ms | "
            f"{r['sim_mem'] / r['ref_mem']:.1f}x "
            f"({r['sim_mem'] / 2**30:.2f} GiB) | {r['gap']:.4f} |"
        )
    return "\n".join(lines)


GAP_WARNING = 0.005  # per-round accuracy: the tolerance the engine's tests pin

WORKLOADS = {
    "digits": [
        ("FedRep digits, 100 clients, all per round", ["num-clients=100", "fraction-train=1.0"]),
        ("FedAvg digits, 100 clients, all per round",
         ["strategy=fedavg", "num-clients=100", "fraction-train=1.0"]),
    ],
    "fmnist": [("FedRep Fashion-MNIST (MLP), 1000 clients, 10% per round", [
        "dataset=fashion-mnist", "model=mlp", "partitioner=iid", "num-clients=1000",
        "fraction-train=0.1", "fraction-evaluate=0.1"])],
    "cnn": [("FedRep Fashion-MNIST (cnn28), 100 clients, 10% per round", [
        "dataset=fashion-mnist", "model=cnn28", "partitioner=iid", "num-clients=100",
        "fraction-train=0.1", "fraction-evaluate=0.1"])],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="digits")
    parser.add_argument("--scaling", action="store_true")
    parser.add_argument("--clients", type=int_list, default="10,100,1000,10000",
                        help="client counts of the --scaling workloads (comma-separated)")
    parser.add_argument("--fraction", type=float, default=0.1, help="--scaling: clients per round")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config value for every workload")
    args = parser.parse_args()
    workloads = [(name, o + [f"num-rounds={args.rounds}"]) for name, o in WORKLOADS[args.workload]]
    if args.scaling:  # FedProx's Synthetic(1, 1): any number of clients, 20 samples each
        workloads = [
            (f"FedRep synthetic (MLP), {n} clients, {args.fraction:.0%} per round", [
                "dataset=synthetic", "samples-per-client=20", f"num-clients={n}", "head-epochs=1",
                f"fraction-train={args.fraction}", f"num-rounds={args.rounds}", f"eval-every={args.rounds}"])
            for n in args.clients
        ]
    results = []
    for name, overrides in workloads:
        print(f"bench: {name}", flush=True)
        results.append((name, measure(load_config(None, overrides + args.set), args.repeats,
                                      overrides + args.set)))
        print(table(results[-1:]), flush=True)
    print()
    print(table(results))
    for name, result in results:
        if result["gap"] > GAP_WARNING:
            print(f"bench: warning: {name}: fedsim's per-round scores are up to {result['gap']:.4f} "
                  f"from the plain loop's (tolerance {GAP_WARNING}); the vectorized engine should "
                  "agree with the loop up to float summation order", file=sys.stderr)


if __name__ == "__main__":
    main()
