"""FedProto's client model and local update (Tan et al., AAAI 2022).

Clients never exchange model weights, only class prototypes: the mean body feature of
each class. The client model holds its (personal) network and two buffers the server
shares: ``prototypes`` [classes × features] and ``prototype_counts`` [classes]. In a
train message they hold the global prototypes; the client trains with
  CE(head(f(x)), y) + λ·MSE(f(x), p̄_y)
(the distance term only for classes that have a global prototype) and replies with its
own prototypes (mean features of its last local epoch, as the reference code collects
them) and its class counts. Prediction: the class of the nearest global prototype (mean
squared distance), as in PFLlib.
"""

from __future__ import annotations

import torch
from torch import nn

from clients.batches import PassLoss, gradients, minibatches, trainable
from clients.routines import SGDStep, task_loss
from fedsim.config import Config
from fedsim.models import SplitModel

FAR = 1e4  # distance of a class without a global prototype (never the nearest, finite loss)


class PrototypeModel(nn.Module):
    """``net`` (body + head, personal) and the shared buffers ``prototypes`` and
    ``prototype_counts``; the forward pass scores each class by minus the mean squared
    distance of the body features to its prototype."""

    def __init__(self, net: SplitModel) -> None:
        super().__init__()
        self.net = net
        classes, features = net.head.out_features, net.head.in_features
        self.register_buffer("prototypes", torch.zeros(classes, features))
        self.register_buffer("prototype_counts", torch.zeros(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return prototype_scores(self.net.body(x), self.prototypes, self.prototype_counts)


def prototype_scores(features: torch.Tensor, prototypes: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[samples × classes]: −mean((f − p_c)²) for classes with a prototype, −FAR otherwise."""
    distances = ((features.unsqueeze(1) - prototypes.unsqueeze(0)) ** 2).mean(-1)
    return torch.where(counts > 0, -distances, torch.full_like(distances, -FAR))


def prototype_loss(features: torch.Tensor, y: torch.Tensor, prototypes: torch.Tensor,
                   counts: torch.Tensor) -> torch.Tensor:
    """MSE between features and their class's global prototype, averaged over every
    sample and feature; samples of a class without one contribute zero (the reference)."""
    has = (counts > 0)[y].unsqueeze(1)
    targets = torch.where(has, prototypes[y], features.detach())
    return nn.functional.mse_loss(features, targets)


def class_means(features: torch.Tensor, y: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-class mean of ``features``, zero for absent classes; per-class counts)."""
    counts = torch.bincount(y, minlength=classes).to(features.dtype)
    sums = torch.zeros(classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, y, features)
    return sums / counts.clamp(min=1).unsqueeze(1), counts


def train_fedproto(model: PrototypeModel, x: torch.Tensor, y: torch.Tensor, config: Config,
                   generator: torch.Generator) -> float:
    """``local-epochs`` passes of SGD (``lr``, ``momentum``, ``weight-decay``) on the
    network with the FedProto loss (λ = ``fedproto-lambda``); the buffers then hold the
    client's prototypes (its last pass's features) and class counts. Returns the mean
    loss of the last pass."""
    net = model.net
    global_prototypes, global_counts = model.prototypes.clone(), model.prototype_counts.clone()
    use_prototypes = bool((global_counts > 0).any())
    classes = global_counts.numel()
    params = list(net.parameters())
    step = SGDStep(params, config.lr, config.momentum, config.weight_decay)
    restore = trainable(net)
    record = PassLoss()
    collected: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        for fresh, batch in minibatches(len(x), config.local_epochs, config.batch_size, generator, x.device):
            if fresh:
                collected = []
            features = net.body(x[batch])
            loss = task_loss(net.head(features), y[batch])
            if use_prototypes:
                loss = loss + config.fedproto_lambda * prototype_loss(features, y[batch], global_prototypes,
                                                                      global_counts)
            step(gradients(loss, params))
            collected.append((features.detach(), y[batch]))
            record.add(fresh, loss.detach(), len(batch))
    finally:
        restore()
    with torch.no_grad():
        model.prototypes.zero_()
        model.prototype_counts.zero_()  # no step, no prototypes: nothing to average
        if collected:
            means, counts = class_means(torch.cat([f for f, _ in collected]),
                                        torch.cat([c for _, c in collected]), classes)
            model.prototypes.copy_(means)
            model.prototype_counts.copy_(counts)
    return record.mean
