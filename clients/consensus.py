"""KD3A's knowledge vote and consensus focus (Feng et al., ICML 2021): pure, vectorised
tensor functions of the sources' predicted probabilities ``probs`` (K sources × N samples
× C classes)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch


def _vote(probs: torch.Tensor, gate: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(consensus class N, its summed confidence N, any source confident N) — the
    reference's ``knowledge_vote`` (FengHZ/KD3A, ``lib/utils/federated_utils.py``)."""
    top, choice = probs.max(dim=-1)  # K × N
    confident = top > gate
    anyone = confident.any(dim=0)
    counted = torch.where(anyone, confident, torch.ones_like(confident))  # none confident: all count
    summed = probs.new_zeros(probs.shape[1:]).scatter_add_(
        1, choice.T, (top * counted).T)  # N × C: each counted source adds its top prob to its class
    consensus = summed.argmax(dim=-1)  # ties: the lowest class
    return consensus, summed.gather(1, consensus.unsqueeze(1)).squeeze(1), anyone


def knowledge_vote(probs: torch.Tensor, gate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(consensus knowledge N × C, sample weights N), KD3A's reference semantics.

    A source is confident on a sample when its top probability exceeds ``gate``. Each
    confident source adds its top probability to its top class; the consensus class is
    the class with the largest sum (ties: lowest index) and the consensus knowledge is
    its one-hot vector. The sample weight is 1 if any source is confident, else 0 (the
    sample stays in the batch as a mixup partner and in the BatchNorm statistics, but its
    own loss term is 0)."""
    consensus, _, anyone = _vote(probs, gate)
    knowledge = torch.nn.functional.one_hot(consensus, probs.shape[-1]).to(probs.dtype)
    return knowledge, anyone.to(probs.dtype)


def consensus_quality(probs: torch.Tensor, gate: float) -> torch.Tensor:
    """Q = Σ over samples with a confident source of the consensus class's summed
    confidence (0 for an empty set of sources). Adding a source never lowers Q, so
    every consensus focus is >= 0."""
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    _, confidence, anyone = _vote(probs, gate)
    return (confidence * anyone).sum()


def consensus_focus_exact(probs: torch.Tensor, gate: float) -> torch.Tensor:
    """Shapley value of every source for ``consensus_quality``, over all 2^K subsets
    (KD3A's reference computation; fine up to ~6 sources)."""
    k = probs.shape[0]
    quality = {
        subset: consensus_quality(probs[list(subset)], gate)
        for size in range(k + 1) for subset in itertools.combinations(range(k), size)
    }
    values = probs.new_zeros(k)
    for source in range(k):
        others = [s for s in range(k) if s != source]
        for size in range(k):
            share = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
            for subset in itertools.combinations(others, size):
                with_source = tuple(sorted(subset + (source,)))
                values[source] += share * (quality[with_source] - quality[subset])
    return values


def consensus_focus_sampled(
    probs: torch.Tensor, gate: float, permutations: int, generator: torch.Generator
) -> torch.Tensor:
    """Monte-Carlo Shapley values: each source's marginal contribution to the quality,
    averaged over ``permutations`` random orders (K·permutations quality evaluations
    instead of 2^K)."""
    k = probs.shape[0]
    values = probs.new_zeros(k)
    for _ in range(permutations):
        order = torch.randperm(k, generator=generator).tolist()
        previous = probs.new_zeros(())
        for i, source in enumerate(order):
            current = consensus_quality(probs[order[: i + 1]], gate)
            values[source] += current - previous
            previous = current
    return values / permutations


def consensus_focus(
    probs: torch.Tensor, gate: float, exact_up_to: int = 6, permutations: int = 64,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Exact Shapley values for at most ``exact_up_to`` sources, sampled beyond."""
    if probs.shape[0] <= exact_up_to:
        return consensus_focus_exact(probs, gate)
    return consensus_focus_sampled(probs, gate, permutations, generator or torch.Generator())


def mean_head(sources: dict[int, dict[str, np.ndarray]], shared: set[str]) -> dict[str, np.ndarray]:
    """The equal-weight mean of the sources' heads (their arrays outside ``body.`` that the
    server does not share): a target's head at its first vote (``kd3a-warm-head``), so
    that it starts aligned with the body the sources trained rather than at random."""
    names = [n for n in next(iter(sources.values())) if n not in shared and not n.startswith("body.")]
    return {n: np.mean([s[n] for s in sources.values()], axis=0).astype(next(iter(sources.values()))[n].dtype)
            for n in names}
