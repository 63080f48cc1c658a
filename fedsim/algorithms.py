"""The one table of algorithms: config name -> server strategy + client declaration.

The server strategy is named by ``"module:Class"`` and imported only where it is needed
(the server), so the client side never imports server code; the client's local phases
are data (:mod:`clients.specs`). Adding an algorithm: a strategy module, its declared
phases, one line here, a test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from clients import specs
from clients.apfl import MixtureModel
from clients.fedala import ALAModel
from clients.fedproto import PrototypeModel
from clients.fedrod import RoDModel
from clients.phases import ClientSpec
from clients.routines import DittoModel
from fedsim.config import Config
from fedsim.data import Dataset
from fedsim.models import build_model


def _base(data: Dataset, config: Config) -> nn.Module:
    return build_model(data, config.hidden_dim, config.seed, config.model)


def _ditto_pair(data: Dataset, config: Config) -> nn.Module:
    return DittoModel(_base(data, config), _base(data, config))


def _apfl(data: Dataset, config: Config) -> nn.Module:
    return MixtureModel(_base(data, config), _base(data, config), config.apfl_alpha)


def _fedrod(data: Dataset, config: Config) -> nn.Module:
    return RoDModel(_base(data, config))


def _fedala(data: Dataset, config: Config) -> nn.Module:
    return ALAModel(_base(data, config), _base(data, config), config.fedala_layers)


def _fedproto(data: Dataset, config: Config) -> nn.Module:
    return PrototypeModel(_base(data, config))


@dataclass(frozen=True)
class Algorithm:
    """A server strategy (a ``CohortFedAvg`` subclass, or ``"module:Class"`` to import it
    only on the server), the client's declared local phases and, optionally, how the
    client model is built."""

    strategy: str | type
    client: ClientSpec
    model: Callable[[Dataset, Config], nn.Module] | None = None


ALGORITHMS: dict[str, Algorithm] = {
    "fedrep": Algorithm("strategies.fedrep:FedRep", specs.FEDREP),
    "fedavg": Algorithm("strategies.fedavg:FedAvgWhole", specs.FEDAVG),
    "local": Algorithm("strategies.local:LocalOnly", specs.FEDAVG),
    "fedavg-ft": Algorithm("strategies.fedavg_ft:FedAvgFT", specs.FEDAVG_FT),
    "fedper": Algorithm("strategies.fedper:FedPer", specs.FEDAVG),
    "lg-fedavg": Algorithm("strategies.lg_fedavg:LGFedAvg", specs.FEDAVG),
    "fedbabu": Algorithm("strategies.fedbabu:FedBABU", specs.FEDBABU),
    "ditto": Algorithm("strategies.ditto:Ditto", specs.DITTO, _ditto_pair),
    "kd3a": Algorithm("strategies.kd3a:KD3A", specs.KD3A_SOURCE),
    "fedprox": Algorithm("strategies.fedprox:FedProx", specs.FEDPROX),
    "fedbn": Algorithm("strategies.fedbn:FedBN", specs.FEDBN),
    "pfedme": Algorithm("strategies.pfedme:PFedMe", specs.PFEDME, _ditto_pair),
    "perfedavg": Algorithm("strategies.perfedavg:PerFedAvg", specs.PERFEDAVG),
    "apfl": Algorithm("strategies.apfl:APFL", specs.APFL, _apfl),
    "fedrod": Algorithm("strategies.fedrod:FedRoD", specs.FEDROD, _fedrod),
    "fedala": Algorithm("strategies.fedala:FedALA", specs.FEDALA, _fedala),
    "fedproto": Algorithm("strategies.fedproto:FedProto", specs.FEDPROTO, _fedproto),
    "fedrep-groups": Algorithm("strategies.fedrep_groups:FedRepGroups", specs.FEDREP),
    "fedrep-patch": Algorithm("strategies.fedrep_patch:FedRepPatch", specs.FEDREP_PATCH),
}


def strategy_class(name: str) -> type:
    """The server strategy class of algorithm ``name``."""
    strategy = ALGORITHMS[name].strategy
    if isinstance(strategy, type):
        return strategy
    module, _, attribute = strategy.partition(":")
    return getattr(importlib.import_module(module), attribute)


def client_model(config: Config, data: Dataset) -> nn.Module:
    """The model a client of ``config.strategy`` trains, initialised from ``seed``."""
    build = ALGORITHMS[config.strategy].model
    return (build or _base)(data, config)


def engine_paths(config: Config, data: Dataset) -> dict[str, str]:
    """Which path (``loop`` or ``vectorized``) the training and fine-tuning phases of
    ``config.strategy`` run; a ConfigError when ``vectorize = "on"`` cannot be met."""
    from clients.engine import paths

    return paths(client_model(config, data), ALGORITHMS[config.strategy].client, config)
