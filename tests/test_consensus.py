"""KD3A maths to exact numbers."""

import pytest
import torch

from clients.consensus import (
    consensus_focus_exact,
    consensus_focus_sampled,
    consensus_quality,
    knowledge_vote,
)
from strategies.consensus import domain_weights

# 3 sources, 2 samples, 3 classes
PROBS = torch.tensor([
    [[0.95, 0.05, 0.00], [0.10, 0.20, 0.70]],  # source 0: confident on sample 0 only
    [[0.92, 0.08, 0.00], [0.00, 0.96, 0.04]],  # source 1: confident on both
    [[0.00, 0.99, 0.01], [0.00, 0.91, 0.09]],  # source 2: confident on both, disagrees on 0
], dtype=torch.float64)


def test_knowledge_vote_exact():
    knowledge, weight = knowledge_vote(PROBS, gate=0.9)
    # sample 0: sources 0 and 1 vote class 0, source 2 class 1 -> class 0, 2 supporters
    assert weight.tolist() == [2.0, 2.0]
    torch.testing.assert_close(knowledge[0], torch.tensor([0.935, 0.065, 0.0], dtype=torch.float64))
    # sample 1: sources 1 and 2 vote class 1
    torch.testing.assert_close(knowledge[1], torch.tensor([0.0, 0.935, 0.065], dtype=torch.float64))


def test_gate_drops_unconfident_samples():
    _, weight = knowledge_vote(PROBS, gate=0.97)
    assert weight.tolist() == [1.0, 0.0]  # only source 2 passes, on sample 0


def test_consensus_quality_exact():
    assert consensus_quality(PROBS, 0.9).item() == pytest.approx(2 * 0.935 + 2 * 0.935)
    assert consensus_quality(PROBS[[2]], 0.9).item() == pytest.approx(0.99 + 0.91)
    assert consensus_quality(PROBS[[]], 0.9).item() == 0.0


def test_exact_shapley_hand_computed_for_two_sources():
    probs = PROBS[[0, 2]]  # Q({0}) = 0.95, Q({2}) = 1.90, Q({0,2}) = 0.95 (tie -> class 0) + 0.91
    q0, q2, q02 = 0.95, 0.99 + 0.91, 0.95 + 0.91
    expected = [0.5 * q0 + 0.5 * (q02 - q2), 0.5 * q2 + 0.5 * (q02 - q0)]
    torch.testing.assert_close(consensus_focus_exact(probs, 0.9),
                               torch.tensor(expected, dtype=torch.float64))


def test_shapley_values_sum_to_the_full_quality_and_sampling_agrees():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(5, 40, 4, generator=generator, dtype=torch.float64), -1)
    exact = consensus_focus_exact(probs, 0.6)
    assert exact.sum().item() == pytest.approx(consensus_quality(probs, 0.6).item())
    sampled = consensus_focus_sampled(probs, 0.6, 400, torch.Generator().manual_seed(1))
    assert (sampled - exact).abs().max().item() < 0.05 * exact.abs().max().item()
    assert sampled.argsort().tolist() == exact.argsort().tolist()


def test_a_label_shifted_source_gets_the_smallest_focus():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (200,), generator=generator)
    good = [torch.softmax(6 * torch.nn.functional.one_hot(labels, 5).double()
                          + torch.randn(200, 5, generator=generator, dtype=torch.float64), -1)
            for _ in range(3)]
    shifted = torch.softmax(6 * torch.nn.functional.one_hot((labels + 1) % 5, 5).double(), -1)
    focus = consensus_focus_exact(torch.stack(good + [shifted]), 0.5)
    assert focus.argmin().item() == 3


def test_domain_weights():
    target, sources = domain_weights(torch.tensor([3.0, 1.0, -2.0]), confident_fraction=0.8)
    assert target == pytest.approx(0.2)
    torch.testing.assert_close(sources, torch.tensor([0.6, 0.2, 0.0]))
    _, flat = domain_weights(torch.zeros(2), 0.0)
    torch.testing.assert_close(flat, torch.tensor([0.5, 0.5]))
