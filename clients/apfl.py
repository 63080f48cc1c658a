"""APFL's client model and local update (Deng, Kamani, Mahdavi, 2020, Algorithm 1).

The client keeps a personal model vᵢ and a mixing weight αᵢ; its personalized model is
the parameter mixture v̄ᵢ = αᵢ·vᵢ + (1 − αᵢ)·w. Every local step, on one batch:
  w ← w − η∇f(w)                       (the local copy of the global model, sent back)
  v ← v − η∇_v f(v̄) = v − η·α∇f(v̄)     (the personal model)
  α ← clip(α − η∇_α f(v̄), 0, 1),  ∇_α f(v̄) = ⟨v − w, ∇f(v̄)⟩   (adaptive α only)
all three gradients taken at the values before the step. The evaluated model is the
mixture with the received global model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from clients.batches import PassLoss, gradients, minibatches, trainable
from clients.routines import SGDStep, task_loss
from fedsim.config import Config


def mix(alpha: torch.Tensor, personal: dict[str, torch.Tensor], shared: dict[str, torch.Tensor]):
    """α·v + (1 − α)·w per parameter name."""
    return {name: alpha * v + (1 - alpha) * shared[name] for name, v in personal.items()}


class MixtureModel(nn.Module):
    """``shared`` (w, the global model's local copy), ``personal`` (v) and the buffer
    ``alpha``; the forward pass is the mixture α·v + (1 − α)·w. BatchNorm statistics of
    the mixture are the personal model's buffers (the mixture's own running statistics)."""

    def __init__(self, shared: nn.Module, personal: nn.Module, alpha: float) -> None:
        super().__init__()
        self.shared = shared
        self.personal = personal
        self.register_buffer("alpha", torch.tensor(float(alpha)))

    def forward(self, x: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        alpha = self.alpha if alpha is None else alpha
        mixed = mix(alpha, dict(self.personal.named_parameters()), dict(self.shared.named_parameters()))
        return functional_call(self.personal, mixed, (x,))


def train_apfl(model: MixtureModel, x: torch.Tensor, y: torch.Tensor, config: Config,
               generator: torch.Generator) -> float:
    """``local-epochs`` passes of APFL's local steps (SGD ``lr``, ``momentum``,
    ``weight-decay`` for w and v; plain gradient steps of size ``lr`` for α when
    ``apfl-adaptive``). Returns the mean loss of the mixture over the last pass."""
    w, v = list(model.shared.parameters()), list(model.personal.parameters())
    step_w = SGDStep(w, config.lr, config.momentum, config.weight_decay)
    step_v = SGDStep(v, config.lr, config.momentum, config.weight_decay)
    restore = trainable(model)
    record = PassLoss()
    try:
        for fresh, batch in minibatches(len(x), config.local_epochs, config.batch_size, generator, x.device):
            xb, yb = x[batch], y[batch]
            grads_w = gradients(task_loss(model.shared(xb), yb), w)
            alpha = model.alpha.detach().clone().requires_grad_(config.apfl_adaptive)
            loss = task_loss(model(xb, alpha), yb)
            grads = gradients(loss, [*v, alpha] if config.apfl_adaptive else v)
            step_w(grads_w)
            step_v(grads[:len(v)])
            if config.apfl_adaptive:
                with torch.no_grad():
                    model.alpha.copy_((alpha - config.lr * grads[-1]).clamp(0.0, 1.0))
            record.add(fresh, loss.detach(), len(batch))
    finally:
        restore()
    return record.mean
