"""Per-FedAvg's local update (Fallah, Mokhtari, Ozdaglar, NeurIPS 2020, Algorithm 1).

The local objective is MAML's Fᵢ(w) = fᵢ(w − α∇fᵢ(w)): each local step draws batches
D, D' (and D'' for the Hessian-free variant), takes the inner step w̃ = w − α∇f(w; D),
and moves w by β along the meta-gradient at w̃:
  first-order (FO):   w ← w − β·∇f(w̃; D')
  Hessian-free (HF):  w ← w − β·(I − α∇²f(w; D''))·∇f(w̃; D')
The Hessian-vector product is computed exactly by double back-propagation (the paper
approximates it by a finite difference of gradients). Evaluation adapts the global
model by one step w − α∇f(w; D) on a training batch first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from clients.batches import PassLoss, gradients, minibatches, passes, trainable
from clients.routines import task_loss
from fedsim.config import Config

Batch = tuple[torch.Tensor, torch.Tensor]


def meta_step(model: nn.Module, batches: Sequence[Batch], alpha: float, beta: float, variant: str) -> float:
    """One Per-FedAvg step on ``model``'s parameters in place, with ``batches`` = (D, D')
    for ``variant`` "fo" or (D, D', D'') for "hf". Returns f(w̃; D')."""
    params = list(model.parameters())
    start = [p.detach().clone() for p in params]
    (x0, y0), (x1, y1) = batches[0], batches[1]
    inner = gradients(task_loss(model(x0), y0), params)
    with torch.no_grad():
        torch._foreach_add_(params, inner, alpha=-alpha)  # w̃
    outer_loss = task_loss(model(x1), y1)
    direction = gradients(outer_loss, params)
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)  # back to w
    if variant == "hf":
        x2, y2 = batches[2]
        grads = torch.autograd.grad(task_loss(model(x2), y2), params, create_graph=True, allow_unused=True)
        dot = sum((g * d).sum() for g, d in zip(grads, direction) if g is not None)
        hessian_times = gradients(dot, params)
        direction = [d - alpha * h for d, h in zip(direction, hessian_times)]
    with torch.no_grad():
        torch._foreach_add_(params, direction, alpha=-beta)
    return float(outer_loss.detach())


def train_perfedavg(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: Config,
                    generator: torch.Generator) -> float:
    """``local-epochs`` passes of Per-FedAvg over shuffled batches: each pass's batches in
    consecutive pairs (triples for HF), one meta step each (a client with fewer batches
    than that reuses them). Returns the mean outer loss f(w̃; D') of the last pass."""
    group = 3 if config.perfedavg_variant == "hf" else 2
    restore = trainable(model)
    record = PassLoss()
    try:
        for batches in passes(len(x), config.local_epochs, config.batch_size, generator, x.device):
            for step in range(max(1, len(batches) // group)):
                chosen = [batches[(group * step + j) % len(batches)] for j in range(group)]
                loss = meta_step(model, [(x[b], y[b]) for b in chosen], config.perfedavg_alpha,
                                 config.perfedavg_beta, config.perfedavg_variant)
                record.add(step == 0, torch.tensor(loss), len(chosen[1]))
    finally:
        restore()
    return record.mean


def adapt_one_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: Config,
                   generator: torch.Generator) -> float:
    """Before evaluation: one step w − α∇f(w; D) on one shuffled training batch."""
    restore = trainable(model)
    try:
        for _, batch in minibatches(len(x), 1, config.batch_size, generator, x.device):
            params = list(model.parameters())
            loss = task_loss(model(x[batch]), y[batch])
            with torch.no_grad():
                torch._foreach_add_(params, gradients(loss, params), alpha=-config.perfedavg_alpha)
            return float(loss.detach())
    finally:
        restore()
    return float("nan")
