"""Local client routines: plain PyTorch, no Flower or Ray.

Each routine trains a model in place on one client's tensors and returns the mean
training loss of its last epoch. Shuffling uses the generator it is given, so a client's
update depends only on (seed, round, client) and never on which actor runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from fedsim.config import Config
from fedsim.models import SplitModel

MOMENTUM = "momentum:"  # state entries "momentum:<param>": a client's kept SGD momentum buffers


def task_loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class labels, mean squared error for real-valued targets."""
    if y.is_floating_point():
        return nn.functional.mse_loss(output.squeeze(-1), y)
    return nn.functional.cross_entropy(output, y)


def solve_head(model: SplitModel, x: torch.Tensor, y: torch.Tensor) -> None:
    """Set a linear head to the least-squares fit of ``y`` on the body's features
    (FedRep's exact head update in the linear setting)."""
    head = model.head
    if not isinstance(head, nn.Linear) or not y.is_floating_point():
        raise ValueError("head-solver = 'lstsq' needs a linear head and a regression target")
    with torch.no_grad():
        features = model.body(x)
        if head.bias is not None:
            features = torch.cat([features, torch.ones_like(features[:, :1])], dim=1)
        solution = torch.linalg.lstsq(features.double(), y.double().unsqueeze(1)).solution
        head.weight.copy_(solution[: head.in_features].T)
        if head.bias is not None:
            head.bias.copy_(solution[head.in_features :, 0])


class SGDStep:
    """``torch.optim.SGD(params, lr, momentum, weight_decay=...)`` (no dampening, no
    Nesterov), step for step bit-identical to it, as a few fused ``torch._foreach_*``
    calls. torch.optim's per-step bookkeeping (profiler ranges, hooks, state dicts) costs
    about as much as a small model's forward pass, and creating an optimizer imports
    torch._dynamo (~2 s in every actor process)."""

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float, weight_decay: float):
        self.params, self.lr, self.momentum, self.weight_decay = params, lr, momentum, weight_decay
        self.buffers: dict[int, torch.Tensor] = {}  # momentum buffer by parameter index

    @torch.no_grad()
    def __call__(self, grads: Sequence[torch.Tensor | None]) -> None:
        index = [i for i, g in enumerate(grads) if g is not None]  # as torch.optim: skip None
        params = [self.params[i] for i in index]
        update = [grads[i] for i in index]
        if self.weight_decay:
            update = torch._foreach_add(update, params, alpha=self.weight_decay)
        if self.momentum:
            old = [k for k, i in enumerate(index) if i in self.buffers]
            if old:
                buffers = [self.buffers[index[k]] for k in old]
                torch._foreach_mul_(buffers, self.momentum)
                torch._foreach_add_(buffers, [update[k] for k in old])
            for k, i in enumerate(index):
                self.buffers.setdefault(i, update[k].detach().clone())
            update = [self.buffers[i] for i in index]
        if params:
            torch._foreach_add_(params, update, alpha=-self.lr)


def run_epochs(
    model: nn.Module, params: Iterable[nn.Parameter], x: torch.Tensor, y: torch.Tensor,
    epochs: float, sgd: Config, generator: torch.Generator,
    penalty: Callable[[], torch.Tensor] | None = None, momentum: dict[int, torch.Tensor] | None = None,
) -> float:
    """SGD (``lr``, ``momentum``, ``weight-decay``, ``batch-size`` of ``sgd``) on ``params``
    only, the rest of the model fixed, for ``epochs`` passes over shuffled mini-batches (a
    fraction runs that share of one epoch's batches). ``penalty()``, if given, is added
    to every batch loss. ``momentum`` (parameter index -> buffer), if given, holds the
    momentum buffers to start from and receives them at the end (kept optimiser state).
    Returns the mean loss of the last pass (nan if there was none)."""
    return _sgd(model, params, x, epochs, sgd, generator,
                lambda batch: task_loss(model(x[batch]), y[batch]), penalty, momentum)


def _sgd(
    model: nn.Module, params: Iterable[nn.Parameter], x: torch.Tensor, epochs: float, sgd: Config,
    generator: torch.Generator, batch_loss: Callable[[torch.Tensor], torch.Tensor],
    penalty: Callable[[], torch.Tensor] | None = None, momentum: dict[int, torch.Tensor] | None = None,
) -> float:
    """The SGD loop of :func:`run_epochs`, with the loss of a batch of indices given."""
    params = list(params)
    n = len(x)
    # a last batch of one sample joins the one before (BatchNorm cannot train on one sample)
    per_epoch = max(1, n // sgd.batch_size if n % sgd.batch_size == 1 else math.ceil(n / sgd.batch_size))
    steps = math.ceil(epochs * per_epoch)
    if steps == 0 or not params or n < 2:
        return float("nan")
    trainable = {id(p) for p in params}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    step_params = SGDStep(params, sgd.lr, sgd.momentum, sgd.weight_decay)
    if momentum is not None:
        step_params.buffers = momentum  # shared: the caller reads the buffers back
    model.train()
    loss_sum, seen = 0.0, 0
    try:
        for step in range(steps):
            if step % per_epoch == 0:
                order = torch.randperm(n, generator=generator).to(x.device)
                loss_sum, seen = 0.0, 0
            start = (step % per_epoch) * sgd.batch_size
            end = n if step % per_epoch == per_epoch - 1 else start + sgd.batch_size
            batch = order[start:end]
            loss = batch_loss(batch)
            if penalty is not None:
                loss = loss + penalty()
            step_params(torch.autograd.grad(loss, params, allow_unused=True))
            loss_sum += loss.item() * len(batch)
            seen += len(batch)
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
    return loss_sum / seen


def train_on_consensus(
    model: nn.Module, x: torch.Tensor, knowledge: torch.Tensor, weight: torch.Tensor,
    epochs: float, config: Config, generator: torch.Generator,
    momentum: dict[int, torch.Tensor] | None = None,
) -> float:
    """KD3A's target update as in the reference code: mixup (λ ~ Beta(``kd3a-mixup``))
    of every batch with a shuffled copy of itself, images and consensus labels mixed, the
    loss ``mean over the batch of weight · cross-entropy(mixed consensus, output)`` with
    the unmixed sample's weight. Unconfident samples (weight 0) stay in the batch: mixup
    partners, BatchNorm statistics. ``momentum`` as in :func:`run_epochs`."""
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    rng = np.random.default_rng(seed)

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        lam = float(rng.beta(config.kd3a_mixup, config.kd3a_mixup)) if config.kd3a_mixup > 0 else 1.0
        partner = batch[torch.randperm(len(batch), generator=generator).to(batch.device)]
        mixed = lam * x[batch] + (1 - lam) * x[partner]
        target = lam * knowledge[batch] + (1 - lam) * knowledge[partner]
        log_p = torch.log_softmax(model(mixed), dim=-1)
        return (-(target * log_p).sum(dim=-1) * weight[batch]).mean()

    return _sgd(model, model.parameters(), x, epochs, config, generator, batch_loss, momentum=momentum)


@torch.no_grad()
def predict_in_train_mode(model: nn.Module, x: torch.Tensor, batch_size: int,
                          generator: torch.Generator) -> torch.Tensor:
    """Softmax outputs (float64) of ``model`` on ``x``, in shuffled batches of
    ``batch_size`` with the model in train mode, as KD3A's reference runs the source
    models in its knowledge vote: BatchNorm normalises each batch with its own (target)
    statistics and its running statistics move toward the target's."""
    model.train()
    n = len(x)
    order = torch.randperm(n, generator=generator).to(x.device)
    per_epoch = max(1, n // batch_size if n % batch_size == 1 else math.ceil(n / batch_size))
    out = None
    for b in range(per_epoch):
        batch = order[b * batch_size: n if b == per_epoch - 1 else (b + 1) * batch_size]
        probs = torch.softmax(model(x[batch]), dim=-1).double()
        if out is None:
            out = probs.new_zeros(n, probs.shape[-1])
        out[batch] = probs
    assert out is not None
    return out


def kd3a_epochs(config: Config) -> float:
    """Local epochs per round for KD3A's communication rounds r: 1/r (r < 1: several epochs
    between aggregations; r ≥ 1: a 1/r share of an epoch)."""
    return 1.0 / config.kd3a_rounds_per_epoch


class DittoModel(nn.Module):
    """Ditto's pair: ``shared`` (the FedAvg model) and ``personal`` (never leaves)."""

    def __init__(self, shared: SplitModel, personal: SplitModel) -> None:
        super().__init__()
        self.shared = shared
        self.personal = personal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.personal(x)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean loss) of ``model`` on ``x, y``; for regression targets the loss is
    the MSE and accuracy is nan."""
    model.eval()
    return scores(model(x), y)


def scores(output: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean loss) of a model's ``output`` for targets ``y`` (nan accuracy
    for regression)."""
    loss = task_loss(output, y).item()
    if y.is_floating_point():
        return float("nan"), loss
    return (output.argmax(dim=1) == y).double().mean().item(), loss
