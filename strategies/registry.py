"""The one table of algorithms: config name -> server strategy + client routines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from clients import routines
from fedsim.config import Config
from fedsim.data import Dataset
from fedsim.models import build_model
from strategies.base import CohortFedAvg
from strategies.ditto import Ditto
from strategies.fedavg import FedAvgWhole
from strategies.fedavg_ft import FedAvgFT
from strategies.fedbabu import FedBABU
from strategies.fedper import FedPer
from strategies.fedrep import FedRep
from strategies.kd3a import KD3A
from strategies.lg_fedavg import LGFedAvg
from strategies.local import LocalOnly

LocalUpdate = Callable[[nn.Module, torch.Tensor, torch.Tensor, Config, torch.Generator], float]
Personalize = Callable[[nn.Module, torch.Tensor, torch.Tensor, Config, torch.Generator], nn.Module]


def _base(data: Dataset, config: Config) -> nn.Module:
    return build_model(data, config.hidden_dim, config.seed, config.model)


def _ditto_pair(data: Dataset, config: Config) -> nn.Module:
    return routines.DittoModel(_base(data, config), _base(data, config))


@dataclass(frozen=True)
class Algorithm:
    """A server strategy, the client's local update and, optionally, what a client does
    before evaluating (``personalize`` returns the module to evaluate) and how the client
    model is built."""

    strategy: type[CohortFedAvg]
    local_update: LocalUpdate
    personalize: Personalize | None = None
    model: Callable[[Dataset, Config], nn.Module] | None = None


ALGORITHMS: dict[str, Algorithm] = {
    "fedrep": Algorithm(FedRep, routines.train_fedrep),
    "fedavg": Algorithm(FedAvgWhole, routines.train_whole),
    "local": Algorithm(LocalOnly, routines.train_whole),
    "fedavg-ft": Algorithm(FedAvgFT, routines.train_whole, routines.finetune_head),
    "fedper": Algorithm(FedPer, routines.train_whole),
    "lg-fedavg": Algorithm(LGFedAvg, routines.train_whole),
    "fedbabu": Algorithm(FedBABU, routines.train_body, routines.finetune_head),
    "ditto": Algorithm(Ditto, routines.train_ditto, routines.ditto_personal, _ditto_pair),
    "kd3a": Algorithm(KD3A, routines.train_source),
}


def client_model(config: Config, data: Dataset) -> nn.Module:
    """The model a client of ``config.strategy`` trains, initialised from ``seed``."""
    build = ALGORITHMS[config.strategy].model
    return (build or _base)(data, config)

