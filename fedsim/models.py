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


def build_model(data: Dataset, hidden_dim: int, seed: int) -> SplitModel:
    """The model for ``data``, initialised deterministically from ``seed``."""
    in_features = 1
    for dim in data.input_shape:
        in_features *= dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return mlp(in_features, hidden_dim, data.num_classes)
