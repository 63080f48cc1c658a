"""A client's mini-batches, drawn exactly as the engine's SGD loop draws them, for the
routines that are not plain SGD phases (pFedMe, Per-FedAvg, APFL, FedRoD, FedProto)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from clients.vectorized import schedule


def minibatches(
    n: int, epochs: float, batch_size: int, generator: torch.Generator, device: torch.device | None = None,
) -> Iterator[tuple[bool, torch.Tensor]]:
    """(whether the batch starts a pass, its sample indices) for ``epochs`` passes over
    ``n`` samples, each pass in a fresh ``randperm`` order from ``generator``; a last
    batch of one sample joins the one before; nothing at all (and no draw) for n < 2."""
    per_epoch, steps = schedule(n, epochs, batch_size)
    order = torch.empty(0, dtype=torch.long)
    for step in range(steps):
        k = step % per_epoch
        if k == 0:
            order = torch.randperm(n, generator=generator).to(device)
        start = k * batch_size
        yield k == 0, (order[start:] if k == per_epoch - 1 else order[start:start + batch_size])


def passes(
    n: int, epochs: float, batch_size: int, generator: torch.Generator, device: torch.device | None = None,
) -> Iterator[list[torch.Tensor]]:
    """The batches of :func:`minibatches` grouped by pass (the last pass may be partial)."""
    current: list[torch.Tensor] = []
    for fresh, batch in minibatches(n, epochs, batch_size, generator, device):
        if fresh and current:
            yield current
            current = []
        current.append(batch)
    if current:
        yield current


def gradients(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """d loss / d params (zeros for parameters the loss does not use)."""
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


class PassLoss:
    """The mean loss over the current pass (what every routine returns: the last pass's)."""

    def __init__(self) -> None:
        self.total, self.seen = 0.0, 0

    def add(self, fresh: bool, loss: torch.Tensor, count: int) -> None:
        if fresh:
            self.total, self.seen = 0.0, 0
        self.total += float(loss) * count
        self.seen += count

    @property
    def mean(self) -> float:
        return self.total / self.seen if self.seen else float("nan")


def trainable(module: nn.Module) -> Callable[[], None]:
    """Put ``module`` in training mode with every parameter requiring grad; returns the
    function that restores the parameters' flags."""
    saved = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in saved:
        p.requires_grad_(True)
    module.train()

    def restore() -> None:
        for p, flag in saved:
            p.requires_grad_(flag)

    return restore
