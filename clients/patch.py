"""Model patches (Mudrakarta, Alizadeh, Zhu, Sandler, Howard, ICLR 2019, "K for the Price
of 1: Parameter-efficient Multi-task and Transfer Learning"): a task's patch of BatchNorm
scales and biases turns one shared network into many. FedRep with the patch in the
personal part: the head phase trains the head and every BatchNorm γ/β of the body, the
body phase the rest of the body."""

from __future__ import annotations

import torch
from torch import nn

from clients.routines import run_epochs
from fedsim.config import Config


def patch_names(model: nn.Module, prefix: str = "body.") -> list[str]:
    """Names of the BatchNorm scales and biases (γ, β) under ``prefix`` — the patch."""
    return [f"{name}.{p}" for name, module in model.named_modules()
            if name.startswith(prefix) and isinstance(module, nn.modules.batchnorm._BatchNorm)
            for p, _ in module.named_parameters(recurse=False)]


def train_head_and_patch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: Config,
                         generator: torch.Generator) -> float:
    """``head-epochs`` of SGD on the head and the body's BatchNorm γ/β, the rest frozen."""
    patch = set(patch_names(model))
    params = [p for n, p in model.named_parameters() if n.startswith("head.") or n in patch]
    return run_epochs(model, params, x, y, config.head_epochs, config, generator)


def train_body_without_patch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: Config,
                             generator: torch.Generator) -> float:
    """``body-epochs`` of SGD on the body except its BatchNorm γ/β, the head frozen."""
    patch = set(patch_names(model))
    params = [p for n, p in model.named_parameters() if n.startswith("body.") and n not in patch]
    return run_epochs(model, params, x, y, config.body_epochs, config, generator)
