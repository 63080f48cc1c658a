"""KD3A's server-side maths: domain weights from the targets' votes, and their moving average."""

from __future__ import annotations

import torch


def domain_weights(
    focus: torch.Tensor, confident_fractions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(target weights T, source weights K), summing to 1. Target j gets
    ``confident_fractions[j] / (K + T)`` (at most an equal share, only as far as its vote
    accepted samples; the reference's ``/(K + 1)`` for one target); the sources share the
    rest in proportion to their non-negative consensus focus (summed over the targets;
    equally if every focus is 0)."""
    k, t = focus.shape[0], confident_fractions.shape[0]
    targets = confident_fractions.to(torch.float64) / (k + t)
    positive = focus.to(torch.float64).clamp(min=0)
    share = positive / positive.sum() if positive.sum() > 0 else torch.full_like(positive, 1.0 / k)
    return targets, (1.0 - targets.sum()) * share


def smooth_weights(
    previous: dict[str, float], current: dict[str, float], momentum: float, start: str = "uniform"
) -> dict[str, float]:
    """The reference's EMA over the whole weight vector (targets and sources):
    ``momentum · previous + (1 − momentum) · current`` per model, renormalised over the
    models of ``current`` (with sampled clients the previous weights of absent ones are
    left out). A model seen for the first time starts from an equal share
    ``1/len(current)`` (``start = "uniform"``) or from its current weight (``"first"``:
    the reference, whose uniform initial weights are replaced by epoch 0's,
    ``train/train.py``)."""
    equal = 1.0 / len(current)
    mixed = {key: momentum * previous.get(key, value if start == "first" else equal)
             + (1 - momentum) * value for key, value in current.items()}
    total = sum(mixed.values())
    return {key: value / total for key, value in mixed.items()}


def ema_momentum(momentum: float, horizon: int, rounds: int) -> float:
    """The per-round EMA momentum of a run of ``rounds`` rounds for ``momentum`` meant for
    a run of ``horizon`` rounds: ``momentum ** (horizon / rounds)``, so that the average
    keeps the same share of its past over the same share of the run (``horizon`` 0:
    ``momentum`` as given)."""
    return momentum if horizon == 0 else momentum ** (horizon / rounds)
