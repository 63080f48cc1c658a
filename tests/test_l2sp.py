"""L2-SP fine-tuning before evaluation (finetune-params = "all")."""

import dataclasses

import pytest
import torch
from inprocess import InProcessGrid
from torch import nn

from clients.app import app
from clients.engine import paths
from clients.l2sp import finetune_l2sp, kernels, l2sp_penalty
from clients.specs import FEDAVG_FT
from fedsim.config import Config, ConfigError
from fedsim.history import RunWriter
from fedsim.models import SplitModel
from fedsim.server import run_rounds


def tiny() -> SplitModel:
    model = SplitModel(nn.Sequential(nn.Linear(2, 2)), nn.Linear(2, 1))
    with torch.no_grad():
        model.body[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        model.body[0].bias.copy_(torch.tensor([5.0, 6.0]))
        model.head.weight.copy_(torch.tensor([[1.0, -2.0]]))
        model.head.bias.copy_(torch.tensor([7.0]))
    return model


def test_penalty_by_hand_kernels_only():
    model = tiny()
    body, head = kernels(model, "body."), kernels(model, "head.")
    assert [p.shape for p in body] == [(2, 2)] and [p.shape for p in head] == [(1, 2)]  # no biases
    start = [torch.zeros(2, 2)]
    # α/2·(1 + 4 + 9 + 16) + β/2·(1 + 4) = 0.1/2·30 + 0.01/2·5 = 1.5 + 0.025
    assert l2sp_penalty(body, start, head, 0.1, 0.01).item() == pytest.approx(1.525)
    start = [torch.tensor([[1.0, 2.0], [3.0, 3.0]])]  # only the last entry moved, by 1
    assert l2sp_penalty(body, start, head, 2.0, 0.0).item() == pytest.approx(1.0)


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g)
    return x, (x @ torch.tensor([1.0, -1.0]) > 0).long()


def body_shift(alpha: float) -> float:
    model = SplitModel(nn.Sequential(nn.Linear(2, 8), nn.ReLU()), nn.Linear(8, 2))
    start = model.body[0].weight.detach().clone()
    config = Config(finetune_params="all", strategy="fedavg-ft", finetune_l2sp_alpha=alpha, finetune_epochs=5,
                    lr=0.05)
    finetune_l2sp(model, *data(), config, torch.Generator().manual_seed(1))
    return float((model.body[0].weight.detach() - start).norm())


def test_large_alpha_keeps_the_body_where_it_started():
    free, held = body_shift(0.0), body_shift(19.0)  # lr·α < 1: the pull is stable
    assert free > 0.1
    assert held < free / 10


def test_all_fine_tunes_the_body_and_head_runs_vectorized_or_not(tmp_path):
    model = tiny()
    config = Config(strategy="fedavg-ft", finetune_params="all")
    assert paths(model, FEDAVG_FT, config)["finetune"] == "loop"  # its own routine
    head_only = dataclasses.replace(config, finetune_params="head")
    assert paths(model, FEDAVG_FT, head_only)["finetune"] == "vectorized"

    def final(**changes):
        cfg = Config(strategy="fedavg-ft", num_rounds=1, num_clients=4, fraction_train=0.5,
                     finetune_epochs=2, **changes)
        writer = RunWriter(tmp_path / str(len(list(tmp_path.iterdir()))), cfg.to_dict())
        run_rounds(InProcessGrid(app, 2), cfg, writer, 2)
        return writer.rows[-1]["clients"]

    assert final(finetune_params="all") != final(finetune_params="head")


def test_all_is_refused_for_strategies_that_do_not_fine_tune():
    with pytest.raises(ConfigError, match="finetune-params"):
        Config(strategy="fedrep", finetune_params="all").check()
    with pytest.raises(ConfigError, match="finetune-l2sp-alpha"):
        Config(strategy="fedbabu", finetune_params="all", finetune_l2sp_alpha=-1.0).check()
