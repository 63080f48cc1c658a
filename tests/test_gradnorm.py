"""GradNorm client weights: the update rule by hand, and a run that uses them."""

import numpy as np
import pytest
import torch
from inprocess import InProcessGrid
from torch import nn

from clients.app import app
from clients.diagnostics import last_shared_layer, loss_and_gradient_norm
from fedsim.config import Config, ConfigError
from fedsim.history import RunWriter
from fedsim.server import run_rounds
from strategies.gradnorm import GradNormWeights, gradnorm_update


def test_three_clients_by_hand():
    # L/L0 = (0.5, 0.5, 0.25), mean 5/12 -> r = (1.2, 1.2, 0.6); G = w·g = (1, 2, 3), mean 2;
    # alpha = 1 -> targets (2.4, 2.4, 1.2); sign(G - target) = (-1, -1, +1);
    # w - 0.1·sign·g = (1.1, 1.2, 0.7), sum 3 = the sum before: no rescaling.
    new = gradnorm_update([1, 1, 1], [1, 2, 3], [1.0, 0.5, 0.25], [2, 1, 1], alpha=1.0, lr=0.1)
    np.testing.assert_allclose(new, [1.1, 1.2, 0.7], atol=1e-12)
    # alpha = 0: every target is the mean norm 2 -> signs (-1, 0, +1) -> (1.1, 1, 0.7),
    # renormalised to sum 3: x 3/2.8
    new = gradnorm_update([1, 1, 1], [1, 2, 3], [1.0, 0.5, 0.25], [2, 1, 1], alpha=0.0, lr=0.1)
    np.testing.assert_allclose(new, np.array([1.1, 1.0, 0.7]) * 3 / 2.8, atol=1e-12)
    # a step below zero is clipped at the floor (0.01) before renormalising:
    # w - 0.5·sign·g = (1.5, 2.0, -0.5) -> (1.5, 2.0, 0.01), x 3/3.51
    new = gradnorm_update([1, 1, 1], [1, 2, 3], [1.0, 0.5, 0.25], [2, 1, 1], alpha=1.0, lr=0.5)
    np.testing.assert_allclose(new, np.array([1.5, 2.0, 0.01]) * 3 / 3.51, atol=1e-12)


def test_uniform_weights_stay_uniform_with_equal_rates_and_norms():
    for losses in ([0.3, 0.3, 0.3, 0.3], [2.0] * 4):
        new = gradnorm_update([1.0] * 4, [0.7] * 4, losses, [1.0] * 4, alpha=1.5, lr=0.1)
        np.testing.assert_allclose(new, [1.0] * 4, atol=1e-12)


def test_state_keeps_first_losses_and_the_total():
    state = GradNormWeights(alpha=1.0, lr=0.1)
    state.update([0, 1, 2], [1, 2, 3], [2, 1, 1])  # first losses = L(0): r = 1, targets = mean G = 2
    # signs (-1, 0, +1): (1.1, 1.0, 0.7) x 3/2.8; client 3 never reported: 1
    first = [1.1 * 3 / 2.8, 3 / 2.8, 0.75]
    np.testing.assert_allclose(state.of([0, 1, 2, 3]), [*first, 1.0], atol=1e-12)
    # client 1 halves its loss, client 2 keeps it: r = (2/3, 4/3); G = (w1, w2), mean (w1 + w2)/2;
    # targets (0.607, 1.214) -> signs (+1, -1): the faster learner loses weight, the slower gains
    state.update([1, 2], [1.0, 1.0], [0.5, 1.0])
    weights = state.of([0, 1, 2, 3])
    np.testing.assert_allclose(weights, [first[0], first[1] - 0.1, 0.85, 1.0], atol=1e-12)
    assert sum(weights) == pytest.approx(4.0)
    restored = GradNormWeights(1.0, 0.1)
    restored.load_state_dict(state.state_dict())
    assert restored.of([0, 1, 2, 3]) == weights and restored.initial == state.initial


def test_gradient_norm_of_the_last_shared_kernel():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
        model[1].weight.copy_(torch.tensor([[1.0, 2.0]]))
    layer = last_shared_layer(model, {"0.weight", "0.bias"})
    assert layer == "0.weight"
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0.0])
    # output 1, MSE loss 1, dL/dout = 2, dL/dW0 = 2·[1, 2]ᵀ·[1, 0] -> norm 2·√5
    loss, norm = loss_and_gradient_norm(model, layer, x, y)
    assert loss == pytest.approx(1.0) and norm == pytest.approx(2 * 5 ** 0.5)


def test_a_gradnorm_run_moves_the_weights_and_is_reproducible(tmp_path):
    def run(name):
        config = Config(num_rounds=3, num_clients=4, fraction_train=0.5, head_epochs=1,
                        aggregation="gradnorm")
        writer = RunWriter(tmp_path / name, config.to_dict())
        run_rounds(InProcessGrid(app, 2), config, writer, 2)
        return [{k: v for k, v in r.items() if k != "round_seconds"} for r in writer.rows]

    rows = run("a")
    weights = rows[-1]["client_weights"]
    assert sum(weights.values()) == pytest.approx(len(weights)) and len(set(weights.values())) > 1
    assert rows == run("b")


def test_gradnorm_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match="gradnorm"):
        Config(strategy="local", aggregation="gradnorm").check()
    with pytest.raises(ConfigError, match="aggregation"):
        Config(aggregation="gradient").check()
