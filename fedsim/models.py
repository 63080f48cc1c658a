"""Models with an explicit body (shared representation) and head (personal classifier)."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.data import Dataset


class SplitModel(nn.Module):
    """``head(body(x))``; parameter names start with ``body.`` or ``head.``."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def mlp(in_features: int, hidden: int, num_classes: int) -> SplitModel:
    """Two hidden ReLU layers as the body, one linear layer as the head."""
    body = nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
    )
    return SplitModel(body, nn.Linear(hidden, num_classes))


def linear_representation(dim: int, rank: int) -> SplitModel:
    """x ↦ wᵀ(Bᵀx): body = B (``body.weight`` is Bᵀ, rank × dim), head = w; no biases
    (FedRep's linear model)."""
    return SplitModel(nn.Linear(dim, rank, bias=False), nn.Linear(rank, 1, bias=False))


def build_model(data: Dataset, hidden_dim: int, seed: int) -> SplitModel:
    """The model for ``data``, initialised deterministically from ``seed``."""
    in_features = 1
    for dim in data.input_shape:
        in_features *= dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if data.model == "linear":
            assert data.true_body is not None
            return linear_representation(in_features, data.true_body.shape[1])
        return mlp(in_features, hidden_dim, data.num_classes)
