"""KD3A leave-one-domain-out on the offline Digit-5 stand-in (``digit5-synth``): each
domain in turn is the unlabeled target of 4 source clients (one per other domain).
Target accuracy (mean of the last 5 rounds) of every variant as mean ± sd over seeds,
and each variant's gain over source-only FedAvg per seed:

    source-only   FedAvg of the sources, evaluated on the target (no adaptation)
    adabn         source-only + target BatchNorm statistics (the sources' statistics
                  re-estimated on the target's unlabeled batches, no target training)
    no-focus      KD3A with equal source weights (no consensus focus)
    kd3a          full KD3A, heads personal (the default)
    share-head    KD3A averaging whole models (kd3a-share-head = true)
    oracle        the target trained on its own labels (FedAvg over all five labeled
                  domains; the target domain's client): the headroom, for reference only

    python experiments/kd3a_lodo.py --seeds 0,1,2,3,4 --variants source-only,kd3a --out runs/lodo
    python experiments/kd3a_lodo.py --seeds 0,1,2 --variants adabn,no-focus,share-head,oracle
    python experiments/kd3a_lodo.py --malicious --targets mnistm --seeds 0,1,2
    python experiments/kd3a_lodo.py --personalized --seeds 0,1,2

``--malicious``: a 5th source (client 0, sharing its domain with client 4) corrupted by
label shift at ``malicious-fraction`` 1.0 and 0.5 (``--attacks``; also noise); its domain weight rank
and the target accuracy against the clean 5-source run. ``--personalized``: 20 labeled
clients over the 4 source domains (3 classes each) and 2 unlabeled target clients:
target accuracy of KD3A (personal heads; shared head; shared head with the labeled clients'
heads fine-tuned before they evaluate, ``kd3a-finetune``) vs source-only FedAvg, and the
labeled clients' accuracy vs FedRep without adaptation. Every run goes through `fedsim.run` (Flower + Ray);
completed runs are reused (also after config keys were added at their defaults), so a
grid can be filled across sessions.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import fields
from pathlib import Path

from fedsim import load_config
from fedsim.cli import int_list
from fedsim.config import Config, key_of
from fedsim.datasets import DIGIT5
from fedsim.history import read_run
from fedsim.simulation import run_once

VARIANTS = {
    "source-only": ["strategy=fedavg"],
    "adabn": ["strategy=kd3a", "kd3a-distill=false", "kd3a-share-head=true", "kd3a-focus=false"],
    "no-focus": ["strategy=kd3a", "kd3a-focus=false"],
    "kd3a": ["strategy=kd3a"],
    "share-head": ["strategy=kd3a", "kd3a-share-head=true"],
    "oracle": ["strategy=fedavg"],  # no target domain: every domain labeled
}


ATTACKS = {"shift-1.0": ["malicious-fraction=1.0"], "shift-0.5": ["malicious-fraction=0.5"],
           "noise": ["malicious-mode=noise"]}


EXECUTION = {"ray-address", "verbose", "round-timeout", "num-nodes"}  # where a run ran, not what it computed


def reusable(run_dir: Path, config: Config) -> bool:
    """A completed run of ``config``, keys added since it ran being at their defaults (and,
    for another strategy than kd3a, whatever its kd3a-* keys were: no other strategy reads them)."""
    try:
        stored = json.loads((run_dir / "config.json").read_text())
        done = json.loads((run_dir / "summary.json").read_text()).get("status") == "completed"
    except (OSError, json.JSONDecodeError):
        return False
    now = json.loads(json.dumps(config.to_dict()))
    defaults = {key_of(f.name): f.default for f in fields(Config)}
    unread = "" if config.strategy == "kd3a" else "kd3a-"  # KD3A's keys change no other strategy
    return done and all(stored[k] == v if k in stored else v == defaults[k]
                        for k, v in now.items()
                        if k not in EXECUTION and not (unread and k.startswith(unread)))


def simulate(out: Path, name: str, overrides: list[str], reuse_only: bool = False) -> list[dict]:
    """The rows of a completed run (reused) or of a new one ([] with ``reuse_only``)."""
    config = load_config(None, overrides)
    run_dir = out / "runs" / name
    if reusable(run_dir, config):
        return read_run(run_dir)[1]
    return [] if reuse_only else run_once(config, run_dir)


def final(rows: list[dict], key: str = "accuracy", client: str | None = None) -> float:
    values = [r["clients"][client] if client else r[key] for r in rows
              if (r.get("clients") if client else r.get(key)) is not None][-5:]
    return sum(values) / len(values)


def spread(values: list[float]) -> str:
    """``mean ± sd`` in percent (just the value for one seed)."""
    mean = 100 * statistics.mean(values)
    return f"{mean:.2f}" if len(values) < 2 else f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def base(args) -> list[str]:
    # both strategies get KD3A's reference optimiser (KD3A's strategy defaults), so the
    # source-only baseline differs from KD3A only by the adaptation
    return ["dataset=digit5-synth", "partitioner=domain", "num-clients=5", "fraction-train=1.0",
            f"synth-per-class={args.per_class}", f"num-rounds={args.rounds}", "batch-size=32",
            "lr=0.05", "momentum=0.9", "weight-decay=5e-4", "lr-schedule=cosine", "lr-min=0.001",
            "keep-optimizer-state=true", *args.set]


def lodo(args, out: Path) -> str:
    targets = [t for t in args.targets.split(",") if t]
    variants = [v for v in args.variants.split(",") if v]
    results: dict[str, dict[str, dict]] = {v: {} for v in variants}
    for seed in args.seeds:  # seed by seed: a grid cut short covers every target
        for target in targets:
            for variant in variants:
                if variant == "oracle":
                    run = [*base(args), f"seed={seed}", *VARIANTS[variant]]
                    rows = simulate(out, f"oracle-seed{seed}", run, args.reuse_only)
                    value = final(rows, client=str(DIGIT5.index(target))) if rows else None
                else:
                    run = [*base(args), f"target-domain={target}", f"seed={seed}", *VARIANTS[variant]]
                    rows = simulate(out, f"{variant}-{target}-seed{seed}", run, args.reuse_only)
                    value = final(rows) if rows else None
                results[variant].setdefault(target, {})[seed] = value
                print(f"{variant} {target} seed {seed}: {100 * value:.2f}" if rows else
                      f"{variant} {target} seed {seed}: not run", flush=True)
    # only the seeds every variant completed (--reuse-only may leave holes)
    for target in targets:
        done = [s for s in args.seeds if all(results[v][target][s] is not None
                                             for v in variants)]
        for v in variants:
            results[v][target] = [results[v][target][s] for s in done]
    targets = [t for t in targets if results[variants[0]][t]]
    if not targets:
        raise SystemExit(f"kd3a_lodo: no target has a seed that every variant completed in {out / 'runs'}"
                         + (" (--reuse-only runs nothing)" if args.reuse_only else ""))
    lines = [f"| target | seeds | {' | '.join(variants)} |", "|---|---|" + "---|" * len(variants)]
    for target in targets:
        lines.append(f"| {target} | {len(results[variants[0]][target])} | "
                     + " | ".join(spread(results[v][target]) for v in variants) + " |")
    if "source-only" in variants:
        lines += ["", "| target | variant | gain over source-only (mean) | per seed | seeds positive |",
                  "|---|---|---|---|---|"]
        for v in variants:
            if v == "source-only":
                continue
            for target in targets:
                pairs = list(zip(results["source-only"][target], results[v][target]))
                gains = [b - a for a, b in pairs]
                lines.append(f"| {target} | {v} | {100 * statistics.mean(gains):+.2f} | "
                             + " / ".join(f"{100 * g:+.2f}" for g in gains)
                             + f" | {sum(g > 0 for g in gains)}/{len(gains)} |")
            means = [statistics.mean(b - a for a, b in zip(results["source-only"][t], results[v][t]))
                     for t in targets]
            lines.append(f"| **mean over targets** | {v} | {100 * statistics.mean(means):+.2f} | | |")
    return "\n".join(lines) + "\n"


def malicious(args, out: Path) -> str:
    lines = ["| target | attack | KD3A clean | KD3A attacked | cost | malicious source smallest weight |",
             "|---|---|---|---|---|---|"]
    for target in [t for t in args.targets.split(",") if t]:
        setting = [*base(args), f"target-domain={target}", "num-clients=6", "strategy=kd3a"]
        attacks = {name: ATTACKS[name] for name in args.attacks.split(",") if name}
        clean = [final(simulate(out, f"clean6-{target}-seed{s}", [*setting, f"seed={s}"]))
                 for s in args.seeds]
        for attack, extra in attacks.items():
            accs, smallest, rounds = [], 0, 0
            for s in args.seeds:
                rows = simulate(out, f"mal-{attack}-{target}-seed{s}",
                                [*setting, f"seed={s}", "malicious-sources=0", *extra])
                accs.append(final(rows))
                for r in rows:
                    if r.get("source_weights"):
                        rounds += 1
                        w = r["source_weights"]
                        smallest += min(w, key=w.get) == "0"
            cost = [a - b for a, b in zip(clean, accs)]
            per_seed = " / ".join(f"{100 * c:+.2f}" for c in cost)
            lines.append(f"| {target} | {attack} | {spread(clean)} | {spread(accs)} | "
                         f"{100 * statistics.mean(cost):+.2f} ({per_seed}) | "
                         f"{smallest}/{rounds} rounds |")
            print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def personalized(args, out: Path) -> str:
    lines = ["| target | source-only target acc | KD3A target acc | KD3A shared head target acc | "
             "KD3A shared head + fine-tuned heads target acc | FedRep labeled acc | KD3A labeled acc | "
             "KD3A shared head labeled acc | KD3A shared head + fine-tuned heads labeled acc | "
             "source-only labeled acc | FedAvg-FT labeled acc |", "|---" * 11 + "|"]
    for target in [t for t in args.targets.split(",") if t]:
        setting = [*base(args), f"target-domain={target}", "num-clients=22", "target-clients=2",
                   "domain-split=shards", "classes-per-client=3"]
        acc = {}
        for name, extra in {"source-only": ["strategy=fedavg"], "kd3a": ["strategy=kd3a"],
                            "kd3a-share-head": ["strategy=kd3a", "kd3a-share-head=true"],
                            "kd3a-share-head-ft": ["strategy=kd3a", "kd3a-share-head=true",
                                                   "kd3a-finetune=true"],
                            "fedrep": ["strategy=fedrep", "head-epochs=2", "body-epochs=1"],
                            "fedavg-ft": ["strategy=fedavg-ft"]}.items():
            rows = [simulate(out, f"pers-{name}-{target}-seed{s}", [*setting, f"seed={s}", *extra])
                    for s in args.seeds]
            acc[name] = ([final(r) for r in rows], [final(r, "source_accuracy") for r in rows])
        cells = [acc["source-only"][0], acc["kd3a"][0], acc["kd3a-share-head"][0],
                 acc["kd3a-share-head-ft"][0], acc["fedrep"][1], acc["kd3a"][1],
                 acc["kd3a-share-head"][1], acc["kd3a-share-head-ft"][1], acc["source-only"][1],
                 acc["fedavg-ft"][1]]
        lines.append(f"| {target} | " + " | ".join(spread(c) for c in cells) + " |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--seeds", type=int_list, default="0,1,2",
                        help="comma-separated seeds (table: mean ± sd)")
    parser.add_argument("--targets", default=",".join(DIGIT5))
    parser.add_argument("--variants", default="source-only,kd3a",
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--reuse-only", action="store_true", help="tables from completed runs only")
    parser.add_argument("--malicious", action="store_true", help="the corrupted-source check")
    parser.add_argument("--attacks", default="shift-1.0,shift-0.5",
                        help=f"with --malicious, comma-separated, of: {', '.join(ATTACKS)}")
    parser.add_argument("--personalized", action="store_true", help="20 labeled clients + 2 targets")
    parser.add_argument("--out", default="runs/kd3a")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config value, for every run (repeatable)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.malicious:
        table, name = malicious(args, out), "table-malicious.md"
    elif args.personalized:
        table, name = personalized(args, out), "table-personalized.md"
    else:
        table, name = lodo(args, out), f"table-{args.variants.replace(',', '+')}.md"
    (out / name).write_text(table)
    print(table)


if __name__ == "__main__":
    main()
