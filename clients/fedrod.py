"""FedRoD's client model and local update (Chen & Chao, ICLR 2022; the linear personal
head of the reference code, not the hypernetwork variant).

The body and the generic head are trained with the balanced softmax loss (logits
shifted by the log of the client's class counts: a generic model for the balanced
global objective) and averaged by the server. A personal head on the same features
learns what the generic head misses: its loss is the cross-entropy of the sum of the
two heads' logits, with the body and the generic head held fixed. Prediction = generic
logits + personal logits.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from clients.batches import PassLoss, gradients, minibatches, trainable
from clients.routines import SGDStep
from fedsim.config import Config
from fedsim.models import SplitModel


class RoDModel(nn.Module):
    """``body``, generic ``head`` (both shared) and ``personal_head`` (a copy of the head
    at initialisation, kept by the client); output = head(z) + personal_head(z)."""

    def __init__(self, model: SplitModel) -> None:
        super().__init__()
        self.body = model.body
        self.head = model.head
        self.personal_head = copy.deepcopy(model.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x)
        return self.head(features) + self.personal_head(features)


def balanced_softmax_loss(logits: torch.Tensor, y: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits + log(counts)`` (Ren et al., NeurIPS 2020): the softmax
    re-weighted by the client's label prior. Classes the client lacks get logit −∞."""
    return nn.functional.cross_entropy(logits + counts.log(), y)


def train_fedrod(model: RoDModel, x: torch.Tensor, y: torch.Tensor, config: Config,
                 generator: torch.Generator) -> float:
    """``local-epochs`` passes; per batch, one SGD step (``lr``, ``momentum``,
    ``weight-decay``) on body + generic head with the balanced softmax loss and one on the
    personal head with the cross-entropy of the summed logits, both from the same
    forward pass. Returns the mean personalized loss of the last pass."""
    counts = torch.bincount(y, minlength=model.head.out_features).to(x.dtype)
    generic = [*model.body.parameters(), *model.head.parameters()]
    personal = list(model.personal_head.parameters())
    step_generic = SGDStep(generic, config.lr, config.momentum, config.weight_decay)
    step_personal = SGDStep(personal, config.lr, config.momentum, config.weight_decay)
    restore = trainable(model)
    record = PassLoss()
    try:
        for fresh, batch in minibatches(len(x), config.local_epochs, config.batch_size, generator, x.device):
            features = model.body(x[batch])
            logits = model.head(features)
            generic_grads = gradients(balanced_softmax_loss(logits, y[batch], counts), generic)
            both = logits.detach() + model.personal_head(features.detach())
            loss = nn.functional.cross_entropy(both, y[batch])
            personal_grads = gradients(loss, personal)
            step_generic(generic_grads)
            step_personal(personal_grads)
            record.add(fresh, loss.detach(), len(batch))
    finally:
        restore()
    return record.mean
