"""Models with an explicit body (shared representation) and head (personal classifier)."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.data import Dataset
from fedsim.zoo import model_name


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


def cnn28(channels: int, num_classes: int) -> SplitModel:
    """CNN for 28×28 images: two 5×5 conv layers with max-pooling and a 512-unit linear
    layer as the body, one linear layer as the head."""
    body = nn.Sequential(
        nn.Conv2d(channels, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 512), nn.ReLU(),
    )
    return SplitModel(body, nn.Linear(512, num_classes))


def cnn32(channels: int, num_classes: int) -> SplitModel:
    """FedRep's CIFAR CNN (LeNet-5 shape): conv 6@5×5, pool, conv 16@5×5, pool, linear 120,
    linear 84 as the body; the last linear layer (84 → classes) is the head."""
    body = nn.Sequential(
        nn.Conv2d(channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
    )
    return SplitModel(body, nn.Linear(84, num_classes))


def cnn32bn(channels: int, num_classes: int) -> SplitModel:
    """``cnn32`` with BatchNorm after each conv and hidden linear layer (KD3A's digit
    networks use BN; its running statistics are what "BatchNorm MMD" aggregates)."""
    body = nn.Sequential(
        nn.Conv2d(channels, 32, 5), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 5 * 5, 128), nn.BatchNorm1d(128), nn.ReLU(),
    )
    return SplitModel(body, nn.Linear(128, num_classes))


def linear_representation(dim: int, rank: int) -> SplitModel:
    """x ↦ wᵀ(Bᵀx): body = B (``body.weight`` is Bᵀ, rank × dim), head = w; no biases
    (FedRep's linear model)."""
    return SplitModel(nn.Linear(dim, rank, bias=False), nn.Linear(rank, 1, bias=False))


def build_model(data: Dataset, hidden_dim: int, seed: int, name: str = "auto") -> SplitModel:
    """Model ``name`` (``auto``: the dataset's choice) for ``data``, initialised
    deterministically from ``seed``."""
    in_features = 1
    for dim in data.input_shape:
        in_features *= dim
    name = model_name(data, name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "linear":
            assert data.true_body is not None
            return linear_representation(in_features, data.true_body.shape[1])
        if name.startswith("cnn"):
            build = {"cnn28": cnn28, "cnn32": cnn32, "cnn32bn": cnn32bn}[name]
            return build(data.input_shape[0], data.num_classes)
        return mlp(in_features, hidden_dim, data.num_classes)
