"""FedALA's client model and adaptive local aggregation (Zhang et al., AAAI 2023).

Instead of overwriting its model with the received global one, a client initialises
its local model element-wise between the two: the lower layers take the global model,
the top ``fedala-layers`` layers become l + (g − l) ⊙ W with W ∈ [0, 1] learned on a
random ``fedala-sample`` share of the local training data by
  W ← clip(W − η·∇_θ f ⊙ (g − l), 0, 1)   (θ = l + (g − l) ⊙ W, lr ``fedala-eta``).
The first time, W (initially all ones) is trained until the loss settles (the standard
deviation of the last 10 pass losses below 0.1); afterwards one pass per round. The
client then trains the initialised model as FedAvg does and sends it back.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from clients.routines import task_loss
from fedsim.config import Config, ConfigError

SETTLED_STD, SETTLED_PASSES = 0.1, 10  # the reference's threshold and num_pre_loss
MAX_PASSES = 100  # the reference has no cap; one that never settles stops here


def top_parameters(module: nn.Module, layers: int) -> tuple[str, ...]:
    """Names of the parameters of the last ``layers`` layers (modules holding parameters
    themselves) of ``module``, in order."""
    owners = [(name, m) for name, m in module.named_modules() if any(True for _ in m.parameters(False))]
    if not 1 <= layers <= len(owners):
        raise ConfigError(f"fedala-layers = {layers}: must be in [1, {len(owners)}] (the model's layers "
                          f"with parameters)")
    return tuple(f"{name}.{p}" if name else p for name, m in owners[-layers:] for p, _ in m.named_parameters(
        recurse=False))


class ALAModel(nn.Module):
    """``shared``: the received global model, initialised by ALA into the local model,
    trained and sent back; ``local``: the client's model after its last training (kept);
    ``weights.p<i>``: the ALA weights of the top parameters (kept); buffers ``fitted``
    (the client has a local model) and ``learned`` (W has had its first, long training)."""

    def __init__(self, shared: nn.Module, local: nn.Module, layers: int) -> None:
        super().__init__()
        self.shared = shared
        self.local = local
        self.top = top_parameters(shared, layers)
        self.weights = nn.Module()
        params = dict(shared.named_parameters())
        for i, name in enumerate(self.top):
            self.weights.register_buffer(f"p{i}", torch.ones_like(params[name].detach()))
        self.register_buffer("fitted", torch.tensor(0.0))
        self.register_buffer("learned", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(x)


def ala_update(weight: torch.Tensor, grad: torch.Tensor, received: torch.Tensor, previous: torch.Tensor,
               eta: float) -> torch.Tensor:
    """W − η·grad ⊙ (g − l), clipped to [0, 1]."""
    return (weight - eta * grad * (received - previous)).clamp(0.0, 1.0)


def sample_batches(n: int, share: float, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A random ``share`` of ``n`` samples cut into batches (a lone last sample joins the
    batch before), the same batches every pass."""
    sample = torch.randperm(n, generator=generator)[: max(1, int(share * n))]
    chunks = list(sample.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def aggregate_locally(model: ALAModel, x: torch.Tensor, y: torch.Tensor, config: Config,
                      generator: torch.Generator) -> float:
    """ALA in place: ``model.shared`` (holding the received model) becomes the initialised
    local model, and the weights are updated. A client without a local model yet keeps
    the received one. Returns the last weight-learning loss (nan if none)."""
    if not bool(model.fitted) or len(x) < 2:
        return float("nan")
    current = dict(model.shared.named_parameters())
    received = {n: current[n].detach().clone() for n in model.top}
    previous = {n: p.detach() for n, p in model.local.named_parameters() if n in received}
    weights = [getattr(model.weights, f"p{i}") for i in range(len(model.top))]
    buffers = {n: b.clone() for n, b in model.shared.named_buffers()}  # the probe's statistics are dropped
    model.shared.train()
    losses: list[float] = []
    batches = [b.to(x.device) for b in sample_batches(len(x), config.fedala_sample, config.batch_size,
                                                       generator)]
    for _ in range(1 if bool(model.learned) else MAX_PASSES):
        for batch in batches:
            mixed = {n: (previous[n] + (received[n] - previous[n]) * w).requires_grad_()
                     for n, w in zip(model.top, weights)}
            loss = task_loss(functional_call(model.shared, {**mixed, **buffers}, (x[batch],)), y[batch])
            grads = torch.autograd.grad(loss, list(mixed.values()))
            with torch.no_grad():
                for n, w, g in zip(model.top, weights, grads):
                    w.copy_(ala_update(w, g, received[n], previous[n], config.fedala_eta))
        losses.append(float(loss.detach()))
        if len(losses) > SETTLED_PASSES and np.std(losses[-SETTLED_PASSES:]) < SETTLED_STD:
            break
    with torch.no_grad():
        for n, w in zip(model.top, weights):
            current[n].copy_(previous[n] + (received[n] - previous[n]) * w)
        model.learned.fill_(1.0)
    return losses[-1]


@torch.no_grad()
def keep_local(model: ALAModel, x: torch.Tensor, y: torch.Tensor, config: Config,
               generator: torch.Generator) -> float:
    """After training: the trained model becomes the client's local model."""
    for target, value in zip(model.local.state_dict().values(), model.shared.state_dict().values()):
        target.copy_(value)
    model.fitted.fill_(1.0)
    return float("nan")
