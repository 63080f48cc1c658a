"""KD3A maths to exact numbers."""

import numpy as np
import pytest
import torch

from clients.consensus import (
    consensus_focus_exact,
    consensus_focus_sampled,
    consensus_quality,
    knowledge_vote,
    mean_head,
)
from strategies.consensus import domain_weights, ema_momentum, smooth_weights

# 3 sources, 2 samples, 3 classes
PROBS = torch.tensor([
    [[0.95, 0.05, 0.00], [0.10, 0.20, 0.70]],  # source 0: confident on sample 0 only
    [[0.92, 0.08, 0.00], [0.00, 0.96, 0.04]],  # source 1: confident on both
    [[0.00, 0.99, 0.01], [0.00, 0.91, 0.09]],  # source 2: confident on both, disagrees on 0
], dtype=torch.float64)


def test_knowledge_vote_exact():
    knowledge, weight = knowledge_vote(PROBS, gate=0.9)
    # sample 0: class 0 gets 0.95 + 0.92 = 1.87 (sources 0, 1), class 1 gets 0.99 (source 2)
    # sample 1: source 0 is not confident; class 1 gets 0.96 + 0.91 from sources 1 and 2
    assert weight.tolist() == [1.0, 1.0]  # binary: some source is confident
    torch.testing.assert_close(knowledge, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                                                       dtype=torch.float64))


def test_summed_confidence_not_vote_count_decides():
    probs = torch.tensor([[[0.91, 0.09]], [[0.92, 0.08]], [[0.01, 0.99]], [[0.02, 0.98]],
                          [[0.03, 0.97]]], dtype=torch.float64)  # 2 votes for 0 (1.83), 3 for 1 (2.94)
    assert knowledge_vote(probs, 0.9)[0].tolist() == [[0.0, 1.0]]
    probs = torch.tensor([[[0.91, 0.09]], [[0.92, 0.08]], [[0.05, 0.95]]], dtype=torch.float64)
    assert knowledge_vote(probs, 0.9)[0].tolist() == [[1.0, 0.0]]  # 1.83 > 0.95
    assert knowledge_vote(probs, 0.94)[0].tolist() == [[0.0, 1.0]]  # only 0.95 passes


def test_gate_zeroes_unconfident_samples():
    knowledge, weight = knowledge_vote(PROBS, gate=0.97)
    assert weight.tolist() == [1.0, 0.0]  # only source 2 passes, on sample 0
    # no source passes on sample 1: every source's top class is summed (the reference's
    # fallback), the sample keeps a label for mixup but weight 0
    assert knowledge[1].tolist() == [0.0, 1.0, 0.0]  # 0.96 + 0.91 for class 1 > 0.70 for class 2


def test_consensus_quality_exact():
    assert consensus_quality(PROBS, 0.9).item() == pytest.approx(1.87 + 1.87)
    assert consensus_quality(PROBS[[2]], 0.9).item() == pytest.approx(0.99 + 0.91)
    assert consensus_quality(PROBS[[0]], 0.9).item() == pytest.approx(0.95)  # sample 1: none confident
    assert consensus_quality(PROBS[[]], 0.9).item() == 0.0


def test_exact_shapley_hand_computed_for_two_sources():
    probs = PROBS[[0, 2]]  # Q({0}) = 0.95, Q({2}) = 1.90, Q({0,2}) = 0.99 (class 1 wins) + 0.91
    q0, q2, q02 = 0.95, 0.99 + 0.91, 0.99 + 0.91
    expected = [0.5 * q0 + 0.5 * (q02 - q2), 0.5 * q2 + 0.5 * (q02 - q0)]
    torch.testing.assert_close(consensus_focus_exact(probs, 0.9),
                               torch.tensor(expected, dtype=torch.float64))


def test_consensus_focus_is_never_negative():
    generator = torch.Generator().manual_seed(3)
    probs = torch.softmax(4 * torch.randn(5, 60, 4, generator=generator, dtype=torch.float64), -1)
    assert (consensus_focus_exact(probs, 0.7) >= -1e-12).all()


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
    target, sources = domain_weights(torch.tensor([3.0, 1.0, 0.0]), torch.tensor([0.8]))
    torch.testing.assert_close(target, torch.tensor([0.2], dtype=torch.float64))  # 0.8 / (3 + 1)
    torch.testing.assert_close(sources, torch.tensor([0.6, 0.2, 0.0], dtype=torch.float64))
    _, flat = domain_weights(torch.zeros(2), torch.tensor([0.0]))
    torch.testing.assert_close(flat, torch.tensor([0.5, 0.5], dtype=torch.float64))
    # two targets: each at most an equal share of K + T = 4 models; the sources share the rest
    targets, sources = domain_weights(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.4]))
    torch.testing.assert_close(targets, torch.tensor([0.25, 0.1], dtype=torch.float64))
    torch.testing.assert_close(sources, torch.tensor([0.325, 0.325], dtype=torch.float64))


def test_the_moving_average_covers_the_whole_weight_vector():
    # first round: from uniform 1/3 each, momentum 0.9
    first = smooth_weights({}, {"t": 0.0, "0": 1.0, "1": 0.0}, 0.9)
    assert first == pytest.approx({"t": 0.3, "0": 0.4, "1": 0.3})
    second = smooth_weights(first, {"t": 0.3, "0": 0.7, "1": 0.0}, 0.9)
    assert second == pytest.approx({"t": 0.3, "0": 0.43, "1": 0.27})
    assert sum(smooth_weights(first, {"t": 0.5, "0": 0.5}, 0.9).values()) == pytest.approx(1.0)


def test_the_moving_average_can_start_from_the_first_rounds_weights():
    # the reference replaces its uniform initial weights by epoch 0's
    first = smooth_weights({}, {"t": 0.0, "0": 1.0, "1": 0.0}, 0.9, "first")
    assert first == pytest.approx({"t": 0.0, "0": 1.0, "1": 0.0})
    second = smooth_weights(first, {"t": 0.3, "0": 0.7, "1": 0.0}, 0.9, "first")
    assert second == pytest.approx({"t": 0.03, "0": 0.97, "1": 0.0})
    # a model first seen later (sampled clients) enters at its current weight, renormalised
    third = smooth_weights(second, {"t": 0.2, "0": 0.4, "2": 0.4}, 0.5, "first")
    assert third == pytest.approx({"t": 0.115 / 1.2, "0": 0.685 / 1.2, "2": 0.4 / 1.2})


def test_the_moving_average_is_scaled_to_the_run_length():
    # 0.9 per round over the reference's 100 epochs forgets as much of the run as
    # 0.9 ** 2 = 0.81 per round over 50 rounds; 0 keeps kd3a-ema as given
    assert ema_momentum(0.9, 100, 100) == pytest.approx(0.9)
    assert ema_momentum(0.9, 100, 50) == pytest.approx(0.81)
    assert ema_momentum(0.9, 100, 15) == pytest.approx(0.9 ** (20 / 3))
    assert ema_momentum(0.5, 0, 15) == 0.5
    assert ema_momentum(0.0, 100, 15) == 0.0


def test_a_targets_head_starts_from_the_sources_mean_head():
    sources = {
        0: {"body.w": np.array([1.0]), "head.weight": np.array([[1.0, 2.0]], np.float32),
            "head.bias": np.array([0.0], np.float32)},
        3: {"body.w": np.array([5.0]), "head.weight": np.array([[3.0, 8.0]], np.float32),
            "head.bias": np.array([1.0], np.float32)},
    }
    head = mean_head(sources, {"body.w"})
    assert set(head) == {"head.weight", "head.bias"}  # shared and body arrays are not a head
    np.testing.assert_array_equal(head["head.weight"], [[2.0, 5.0]])
    np.testing.assert_array_equal(head["head.bias"], [0.5])
    assert head["head.weight"].dtype == np.float32
    assert mean_head(sources, {"body.w", "head.weight", "head.bias"}) == {}  # share-head: nothing personal
