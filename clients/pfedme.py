"""pFedMe's local update (T. Dinh, Tran, Nguyen, NeurIPS 2020, Algorithm 1).

The client model is a pair (:class:`clients.routines.DittoModel`): ``shared`` is the
local copy wᵢ of the global model (sent back), ``personal`` is θᵢ (kept, evaluated).
For every mini-batch, θ approximately solves the Moreau-envelope problem
min_θ fᵢ(θ) + λ/2‖θ − wᵢ‖² by K gradient steps, then wᵢ moves toward θ:
wᵢ ← wᵢ − η·λ(wᵢ − θ).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clients.batches import PassLoss, gradients, minibatches, trainable
from clients.routines import DittoModel, task_loss
from fedsim.config import Config


@torch.no_grad()
def personal_step(
    theta: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], w: Sequence[torch.Tensor],
    lr: float, lam: float, decay: float,
) -> None:
    """θ ← θ − lr·(∇fᵢ(θ) + λ(θ − w) + decay·θ), in place (the reference's pFedMeOptimizer;
    ``decay`` is its μ, fedsim's ``weight-decay``)."""
    for t, g, v in zip(theta, grads, w):
        t.sub_(lr * (g + lam * (t - v) + decay * t))


@torch.no_grad()
def local_step(w: Sequence[torch.Tensor], theta: Sequence[torch.Tensor], lr: float, lam: float) -> None:
    """wᵢ ← wᵢ − lr·λ(wᵢ − θ), in place."""
    for v, t in zip(w, theta):
        v.sub_(lr * lam * (v - t))


def train_pfedme(model: DittoModel, x: torch.Tensor, y: torch.Tensor, config: Config,
                 generator: torch.Generator) -> float:
    """One round of pFedMe on ``model`` in place: θ starts at the received w, then per
    mini-batch ``pfedme-k`` personal steps (lr ``pfedme-lr``) and one local step (lr
    ``lr``), for ``local-epochs`` passes. Returns the mean loss fᵢ(θ) of the last pass."""
    w, theta = list(model.shared.parameters()), list(model.personal.parameters())
    with torch.no_grad():
        for t, v in zip(theta, w):
            t.copy_(v)
    restore = trainable(model.personal)
    record = PassLoss()
    try:
        for fresh, batch in minibatches(len(x), config.local_epochs, config.batch_size, generator, x.device):
            for _ in range(config.pfedme_k):
                loss = task_loss(model.personal(x[batch]), y[batch])
                personal_step(theta, gradients(loss, theta), w, config.pfedme_lr, config.pfedme_lambda,
                              config.weight_decay)
            record.add(fresh, loss.detach(), len(batch))
            local_step(w, theta, config.lr, config.pfedme_lambda)
    finally:
        restore()
    return record.mean
