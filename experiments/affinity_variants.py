"""Issue 21: can another inter-client affinity find the planted rotation groups where TAG's
lookahead does not (rotated digits, 4 rotations, 20 clients, 2 classes each)?

    python experiments/affinity_variants.py --seeds 0,1,2 --out runs/variants
    python experiments/affinity_variants.py --variants loss --set classes-per-client=5

A diagnostic, not a run of the simulator: FedRep's rounds before the grouping (head
epochs, then body epochs, sample-weighted body average; every client every round) replayed
in one process with the engine's routine (``clients.routines.run_epochs``), and after each
round several affinities Z[i, j] of client i's body update Δᵢ onto client j, each on j's
fixed batch (its training set, ≤ 256 samples, as the affinity phase uses):

- ``loss``: TAG's lookahead, 1 − L_j(θ+Δᵢ)/L_j(θ) with j's own head (what fedrep-groups
  measures; this replay gives the same ARI as the simulator's run for seed 0);
- ``one-step``: the same with Δᵢ = −lr·∇L_i(θ) (one full-batch step of i with its own head,
  as TAG looks ahead per step) in place of the whole local update;
- ``refit-lstsq``: 1 − R_j(θ+Δᵢ)/R_j(θ), R the residual of a least-squares head (ridge 10⁻²,
  one-hot targets, refitted afresh) on j's features: how good j's representation becomes,
  not how well it suits j's current head;
- ``refit-logme``: the change of LogME (``fedsim.evidence``) of j's features for its labels;
- ``first-layer``: ``loss`` with only the first body layer's part of Δᵢ applied (where the
  rotation enters).

For each: the grouping of the mean Z over rounds 1–3 and 1–``--rounds``, raw and
double-centred (each source's and each target's mean removed), with ``find_groups``, and its
ARI against the planted groups; and the mean Z (in standard deviations from the mean over
pairs) by the angle between the two clients' rotations and whether they share a class.
Writes ``variants_table.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from clients.affinity import fixed_batch
from clients.routines import run_epochs, task_loss
from clients.seeds import client_seed
from fedsim import load_config
from fedsim.affinity import adjusted_rand_index, find_groups
from fedsim.cli import int_list
from fedsim.data import load_dataset, make_split
from fedsim.evidence import logme
from fedsim.models import build_model
from fedsim.rotated import pairs_by_kind, planted_groups

ISSUE = ["dataset=digits", "num-clients=20", "classes-per-client=2", "partitioner=rotated",
         "num-rotations=4", "num-groups=4", "strategy=fedrep"]
VARIANTS = ("loss", "one-step", "refit-lstsq", "refit-logme", "first-layer")
FIRST_LAYER = "body.1."  # the MLP body's first Linear (body.0 is the Flatten)


def double_centred(z: np.ndarray) -> np.ndarray:
    """Z minus each row's and each column's off-diagonal mean, plus the overall mean."""
    off = np.where(np.eye(len(z), dtype=bool), np.nan, z)
    return np.nan_to_num(off - np.nanmean(off, 1, keepdims=True) - np.nanmean(off, 0, keepdims=True)
                         + np.nanmean(off))


def ridge_residual(features: torch.Tensor, y: torch.Tensor, classes: int, ridge: float = 1e-2) -> float:
    """Mean squared residual of the ridge fit of one-hot ``y`` on ``features`` and a bias."""
    f = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], 1)
    t = torch.nn.functional.one_hot(y, classes).double()
    solution = torch.linalg.solve(f.T @ f + ridge * torch.eye(f.shape[1], dtype=torch.float64), f.T @ t)
    return float(((f @ solution - t) ** 2).sum() / len(f))


def replay(config, variants: list[str], rounds: int) -> tuple[dict[str, list[np.ndarray]], list[set[int]]]:
    """Every variant's Z per round, and every client's classes."""
    data = load_dataset(config)
    splits = make_split(config, data)
    n = config.num_clients
    tensors = [(torch.from_numpy(data.x[s.train]), torch.from_numpy(data.y[s.train])) for s in splits]
    batches = [fixed_batch(x, y, config.seed, c) for c, (x, y) in enumerate(tensors)]
    model = build_model(data, config.hidden_dim, config.seed, config.model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    body = {k: v for k, v in state.items() if k.startswith("body.")}
    heads = [{k: v.clone() for k, v in state.items() if k.startswith("head.")} for _ in range(n)]

    def load(b: dict, h: dict) -> torch.nn.Module:
        model.load_state_dict({**b, **h})
        model.eval()
        return model

    @torch.no_grad()
    def loss(b: dict, h: dict, j: int) -> float:
        return task_loss(load(b, h)(batches[j][0]), batches[j][1]).item()

    @torch.no_grad()
    def features(b: dict, j: int) -> torch.Tensor:
        return load(b, heads[0]).body(batches[j][0])

    def score(variant: str, b: dict, j: int) -> float:
        if variant in ("loss", "one-step", "first-layer"):
            return loss(b, heads[j], j)
        if variant == "refit-lstsq":
            return ridge_residual(features(b, j), batches[j][1], data.num_classes)
        return logme(features(b, j).numpy(), batches[j][1].numpy())

    out: dict[str, list[np.ndarray]] = {v: [] for v in variants}
    for r in range(1, rounds + 1):
        bodies = []
        for c, (x, y) in enumerate(tensors):
            m = load(body, heads[c])
            g = torch.Generator().manual_seed(client_seed(config.seed, r, c))  # as the engine
            for part, epochs in (("head.", config.head_epochs), ("body.", config.body_epochs)):
                params = [p for k, p in m.named_parameters() if k.startswith(part)]
                run_epochs(m, params, x, y, epochs, config, g)
            trained = m.state_dict()
            heads[c] = {k: trained[k].detach().clone() for k in heads[c]}
            bodies.append({k: trained[k].detach().clone() for k in body})
        deltas = [{k: b[k] - body[k] for k in body} for b in bodies]
        steps = []
        for c in range(n if "one-step" in variants else 0):
            m = load(body, heads[c])
            names = [k for k, _ in m.named_parameters() if k.startswith("body.")]
            grads = torch.autograd.grad(task_loss(m(batches[c][0]), batches[c][1]),
                                        [p for k, p in m.named_parameters() if k.startswith("body.")])
            steps.append({k: -config.lr * g.detach() for k, g in zip(names, grads)})
        for variant in variants:
            z = np.full((n, n), np.nan)
            for j in range(n):
                before = score(variant, body, j)
                for i in range(n):
                    if i == j:
                        continue
                    step = steps[i] if variant == "one-step" else deltas[i]
                    moved = {k: body[k] + step[k] if variant != "first-layer" or k.startswith(FIRST_LAYER)
                             else body[k] for k in body}
                    after = score(variant, moved, j)
                    z[i, j] = after - before if variant == "refit-logme" else 1 - after / before
            out[variant].append(z)
        weights = np.asarray([len(y) for _, y in tensors], dtype=np.float64)
        weights /= weights.sum()
        body = {k: sum(float(w) * b[k] for w, b in zip(weights, bodies)) for k in body}
    return out, [set(np.unique(y.numpy()).tolist()) for _, y in tensors]


def angle_means(z: np.ndarray, planted: list[int], turns: int, classes: list[set[int]]) -> list[float]:
    """Mean Z in standard deviations from the mean over pairs, for [0° shared class, 0° not,
    90° shared, 90° not, 180° shared, 180° not]."""
    off = ~np.eye(len(z), dtype=bool)
    mean, std = z[off].mean(), z[off].std()
    kinds = pairs_by_kind(z, planted, turns, classes)
    return [(np.mean(k) - mean) / std if k else float("nan") for k in kinds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=10, help="rounds before the grouping (group-after)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE over the issue's setting")
    parser.add_argument("--out", default="runs/variants")
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = args.variants.split(",")
    lines = [f"Setting: {' '.join(ISSUE + args.set)}", "",
             "| seed | variant | rounds | centred | ARI | 0° shared | 0° not | 90° shared | 90° not "
             "| 180° shared | 180° not |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for seed in args.seeds:
        config = load_config(None, [*ISSUE, *args.set, f"seed={seed}"])
        planted = planted_groups(config)
        measured, classes = replay(config, variants, args.rounds)
        for variant in variants:
            for first, last in ((1, 3), (1, args.rounds)):
                mean = np.mean(measured[variant][first - 1:last], axis=0)
                for centred in (False, True):
                    z = double_centred(mean) if centred else np.nan_to_num(mean)
                    labels, _ = find_groups(z, config.num_groups, seed)
                    means = angle_means(z, planted, config.num_rotations, classes)
                    lines.append(f"| {seed} | {variant} | {first}–{last} | {'yes' if centred else 'no'} | "
                                 f"{adjusted_rand_index(labels, planted):.3f} | "
                                 + " | ".join("—" if np.isnan(m) else f"{m:+.2f}" for m in means) + " |")
                    print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "variants_table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
