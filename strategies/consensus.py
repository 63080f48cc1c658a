"""KD3A's server-side maths: domain weights from the target's consensus focus."""

from __future__ import annotations

import torch


def domain_weights(
    focus: torch.Tensor, confident_fraction: float
) -> tuple[float, torch.Tensor]:
    """(target weight, source weights), summing to 1: the target gets
    ``confident_fraction / (K + 1)`` (at most an equal share, only as far as it has
    confident pseudo-labels); the sources share the rest in proportion to their
    non-negative consensus focus (equally if every focus is 0)."""
    k = focus.shape[0]
    target = confident_fraction / (k + 1)
    positive = focus.clamp(min=0)
    share = positive / positive.sum() if positive.sum() > 0 else torch.full_like(focus, 1.0 / k)
    return target, (1.0 - target) * share
