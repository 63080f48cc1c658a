"""Local client routines: plain PyTorch, no Flower or Ray.

Each routine trains a model in place on one client's tensors and returns the mean
training loss of its last epoch. Shuffling uses the generator it is given, so a client's
update depends only on (seed, round, client) and never on which actor runs it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from fedsim.config import Config
from fedsim.models import SplitModel


def run_epochs(
    model: nn.Module, params: Iterable[nn.Parameter], x: torch.Tensor, y: torch.Tensor,
    epochs: int, sgd: Config, generator: torch.Generator,
) -> float:
    """SGD (``lr``, ``momentum``, ``weight-decay``, ``batch-size`` of ``sgd``) on ``params``
    only, the rest of the model fixed, for ``epochs`` passes over shuffled mini-batches.
    Returns the mean loss of the last epoch (nan if there was none)."""
    params = list(params)
    if epochs == 0 or not params:
        return float("nan")
    trainable = {id(p) for p in params}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    opt = torch.optim.SGD(params, lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay)
    model.train()
    n = len(y)
    loss_sum = 0.0
    try:
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(x.device)
            loss_sum = 0.0
            for start in range(0, n, sgd.batch_size):
                batch = order[start : start + sgd.batch_size]
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(batch)
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
    return loss_sum / n


def train_fedrep(
    model: SplitModel, x: torch.Tensor, y: torch.Tensor, config: Config,
    generator: torch.Generator,
) -> float:
    """FedRep's local update: the head for ``head-epochs`` with the body frozen, then the
    body for ``body-epochs`` with the head frozen (Collins et al., ICML 2021, Alg. 1)."""
    loss = run_epochs(model, model.head.parameters(), x, y, config.head_epochs, config, generator)
    body_loss = run_epochs(
        model, model.body.parameters(), x, y, config.body_epochs, config, generator
    )
    return loss if config.body_epochs == 0 else body_loss


def train_whole(
    model: SplitModel, x: torch.Tensor, y: torch.Tensor, config: Config,
    generator: torch.Generator,
) -> float:
    """All parameters jointly for ``local-epochs`` (FedAvg's local update)."""
    return run_epochs(model, model.parameters(), x, y, config.local_epochs, config, generator)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``x, y``."""
    model.eval()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(dim=1) == y).double().mean().item()
    return accuracy, loss
