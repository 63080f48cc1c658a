"""The one table of algorithms: config name -> server strategy + client routine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from clients.routines import train_fedrep, train_whole
from fedsim.config import Config
from fedsim.models import SplitModel
from strategies.base import CohortFedAvg
from strategies.fedavg import FedAvgWhole
from strategies.fedrep import FedRep

LocalUpdate = Callable[[SplitModel, torch.Tensor, torch.Tensor, Config, torch.Generator], float]


@dataclass(frozen=True)
class Algorithm:
    """A server strategy class and the client's local update routine."""

    strategy: type[CohortFedAvg]
    local_update: LocalUpdate


ALGORITHMS: dict[str, Algorithm] = {
    "fedrep": Algorithm(FedRep, train_fedrep),
    "fedavg": Algorithm(FedAvgWhole, train_whole),
}
