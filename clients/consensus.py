"""KD3A's knowledge vote and consensus focus (Feng et al., ICML 2021): pure, vectorised
tensor functions of the sources' predicted probabilities ``probs`` (K sources × N samples
× C classes)."""

from __future__ import annotations

import itertools
import math

import torch


def knowledge_vote(probs: torch.Tensor, gate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(consensus knowledge N × C, sample weights N).

    A source votes for its top class on a sample when its top probability exceeds
    ``gate``. The consensus class is the class with most votes (ties: lowest index); the
    consensus knowledge is the mean probability vector of the sources that voted for it,
    and the sample weight is how many did (0: no confident source, the sample is unused).
    """
    top, choice = probs.max(dim=-1)  # K × N
    confident = top > gate
    votes = torch.nn.functional.one_hot(choice, probs.shape[-1]) * confident.unsqueeze(-1)
    consensus = votes.sum(dim=0).argmax(dim=-1)  # N
    support = confident & (choice == consensus)  # K × N
    count = support.sum(dim=0)
    knowledge = (probs * support.unsqueeze(-1)).sum(dim=0) / count.clamp(min=1).unsqueeze(-1)
    return knowledge, count.to(probs.dtype)


def consensus_quality(probs: torch.Tensor, gate: float) -> torch.Tensor:
    """Q = Σ_samples weight · max(consensus knowledge): how many confident sources agree,
    and how sure they are (0 for an empty set of sources)."""
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    knowledge, weight = knowledge_vote(probs, gate)
    return (weight * knowledge.max(dim=-1).values).sum()


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
