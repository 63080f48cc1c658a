"""A client's side of TAG's affinity phase: its loss on a fixed local batch at θ and at
θ + Δᵢ for every peer update Δᵢ it is sent. Only the scalars Z_{i→j} leave the client."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from clients.routines import task_loss
from fedsim.affinity import lookahead_affinity

AFFINITY_BATCH = 256
"""Samples of a client's fixed affinity batch (its whole training set if smaller)."""


def fixed_batch(
    x: torch.Tensor, y: torch.Tensor, seed: int, client: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same ``AFFINITY_BATCH`` training samples of ``client`` in every round (a seeded
    choice when it holds more)."""
    if len(y) <= AFFINITY_BATCH:
        return x, y
    rng = np.random.default_rng([seed, client, 9])
    chosen = torch.from_numpy(np.sort(rng.choice(len(y), AFFINITY_BATCH, replace=False))).to(y.device)
    return x[chosen], y[chosen]


@torch.no_grad()
def lookahead_affinities(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, deltas: list[dict[str, np.ndarray]]
) -> list[float]:
    """Z_{i→j} = 1 − L_j(θ + Δᵢ)/L_j(θ) for each Δᵢ in ``deltas`` ({parameter name:
    update}), where ``model`` holds θ and j's own head and L_j is its task loss on
    ``x, y`` (eval mode). The model is left as it was."""
    model.eval()
    slots = model.state_dict(keep_vars=True)
    names = sorted({name for delta in deltas for name in delta})
    theta = {name: slots[name].detach().clone() for name in names}
    before = task_loss(model(x), y).item()
    out = []
    try:
        for delta in deltas:
            for name in names:
                slots[name].copy_(theta[name] + torch.from_numpy(np.asarray(delta[name])).to(theta[name]))
            out.append(lookahead_affinity(before, task_loss(model(x), y).item()))
    finally:
        for name in names:
            slots[name].copy_(theta[name])
    return out
