"""L2-SP fine-tuning (Li, Grandvalet, Davoine, ICML 2018, "Explicit Inductive Bias for
Transfer Learning with Convolutional Networks"): every parameter fine-tunes, with
α/2·‖w − w⁰‖² pulling the transferred kernels (the body's) to their starting point w⁰
(the received global body) and β/2·‖w‖² on the new ones (the head's). As in the
reference, only kernels (weights of two or more dimensions) are penalised, and the
penalty replaces weight decay."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from clients.routines import run_epochs
from fedsim.config import Config


def l2sp_penalty(
    body: list[torch.Tensor], start: list[torch.Tensor], head: list[torch.Tensor], alpha: float, beta: float
) -> torch.Tensor:
    """α/2·Σ‖w − w⁰‖² over ``body`` (anchored at ``start``) + β/2·Σ‖w‖² over ``head``."""
    zero = torch.zeros((), dtype=torch.float64)
    pulled = sum((((w - w0) ** 2).sum() for w, w0 in zip(body, start)), zero)
    shrunk = sum(((w**2).sum() for w in head), zero)
    return alpha / 2 * pulled + beta / 2 * shrunk


def kernels(module: nn.Module, prefix: str) -> list[nn.Parameter]:
    """The parameters named ``prefix…`` of ``module`` with two or more dimensions."""
    return [p for n, p in module.named_parameters() if n.startswith(prefix) and p.dim() >= 2]


def finetune_l2sp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: Config,
                  generator: torch.Generator) -> float:
    """``finetune-params = "all"``: SGD on every parameter of ``model`` (body and head)
    for ``finetune-epochs`` with the L2-SP penalty (``finetune-l2sp-alpha`` toward the
    body as received, ``finetune-l2sp-beta`` on the head) and no weight decay. Returns the
    mean loss of the last pass (penalty included)."""
    body, head = kernels(model, "body."), kernels(model, "head.")
    start = [w.detach().clone() for w in body]
    alpha, beta = config.finetune_l2sp_alpha, config.finetune_l2sp_beta

    def penalty() -> torch.Tensor:
        return l2sp_penalty(body, start, head, alpha, beta).to(body[0].dtype if body else torch.float32)

    sgd = dataclasses.replace(config, weight_decay=0.0)
    return run_epochs(model, list(model.parameters()), x, y, config.finetune_epochs, sgd, generator, penalty)


def fine_tunes_all(config: Config) -> bool:
    return config.finetune_params == "all"
