"""The one table of algorithms: config name -> server strategy + client declaration.

The server strategy is named by ``"module:Class"`` and imported only where it is needed
(the server), so the client side never imports server code; the client's local phases
are data (:mod:`clients.specs`), named here too and imported where a client trains. The
table imports no torch, so a config is checked before torch loads. Adding an algorithm:
a strategy module, its declared phases, one line here, a test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fedsim.config import Config
from fedsim.data import Dataset

if TYPE_CHECKING:  # the table itself needs no torch: configs are checked before torch loads
    from torch import nn

    from clients.phases import ClientSpec


def _base(data: Dataset, config: Config) -> nn.Module:
    from fedsim.models import build_model

    return build_model(data, config.hidden_dim, config.seed, config.model)


def _ditto_pair(data: Dataset, config: Config) -> nn.Module:
    from clients.routines import DittoModel

    return DittoModel(_base(data, config), _base(data, config))


def _apfl(data: Dataset, config: Config) -> nn.Module:
    from clients.apfl import MixtureModel

    return MixtureModel(_base(data, config), _base(data, config), config.apfl_alpha)


def _fedrod(data: Dataset, config: Config) -> nn.Module:
    from clients.fedrod import RoDModel

    return RoDModel(_base(data, config))


def _fedala(data: Dataset, config: Config) -> nn.Module:
    from clients.fedala import ALAModel

    return ALAModel(_base(data, config), _base(data, config), config.fedala_layers)


def _fedproto(data: Dataset, config: Config) -> nn.Module:
    from clients.fedproto import PrototypeModel

    return PrototypeModel(_base(data, config))


class Algorithm:
    """A server strategy (a ``CohortFedAvg`` subclass, or ``"module:Class"`` to import it
    only on the server), the client's declared local phases (a ``ClientSpec``, or
    ``"module:NAME"`` to import it only where a client trains or the engine is checked)
    and, optionally, how the client model is built."""

    __slots__ = ("strategy", "_client", "model")

    def __init__(self, strategy: str | type, client: ClientSpec | str,
                 model: Callable[[Dataset, Config], nn.Module] | None = None) -> None:
        self.strategy, self._client, self.model = strategy, client, model

    @property
    def client(self) -> ClientSpec:
        """The declared local phases (imported now where named by ``"module:NAME"``)."""
        return _resolve(self._client)

    def __repr__(self) -> str:
        return f"Algorithm({self.strategy!r}, {self._client!r}, {self.model!r})"


ALGORITHMS: dict[str, Algorithm] = {
    "fedrep": Algorithm("strategies.fedrep:FedRep", "clients.specs:FEDREP"),
    "fedavg": Algorithm("strategies.fedavg:FedAvgWhole", "clients.specs:FEDAVG"),
    "local": Algorithm("strategies.local:LocalOnly", "clients.specs:FEDAVG"),
    "fedavg-ft": Algorithm("strategies.fedavg_ft:FedAvgFT", "clients.specs:FEDAVG_FT"),
    "fedper": Algorithm("strategies.fedper:FedPer", "clients.specs:FEDAVG"),
    "lg-fedavg": Algorithm("strategies.lg_fedavg:LGFedAvg", "clients.specs:FEDAVG"),
    "fedbabu": Algorithm("strategies.fedbabu:FedBABU", "clients.specs:FEDBABU"),
    "ditto": Algorithm("strategies.ditto:Ditto", "clients.specs:DITTO", _ditto_pair),
    "kd3a": Algorithm("strategies.kd3a:KD3A", "clients.specs:KD3A_SOURCE"),
    "fedprox": Algorithm("strategies.fedprox:FedProx", "clients.specs:FEDPROX"),
    "fedbn": Algorithm("strategies.fedbn:FedBN", "clients.specs:FEDBN"),
    "pfedme": Algorithm("strategies.pfedme:PFedMe", "clients.specs:PFEDME", _ditto_pair),
    "perfedavg": Algorithm("strategies.perfedavg:PerFedAvg", "clients.specs:PERFEDAVG"),
    "apfl": Algorithm("strategies.apfl:APFL", "clients.specs:APFL", _apfl),
    "fedrod": Algorithm("strategies.fedrod:FedRoD", "clients.specs:FEDROD", _fedrod),
    "fedala": Algorithm("strategies.fedala:FedALA", "clients.specs:FEDALA", _fedala),
    "fedproto": Algorithm("strategies.fedproto:FedProto", "clients.specs:FEDPROTO", _fedproto),
    "fedrep-groups": Algorithm("strategies.fedrep_groups:FedRepGroups", "clients.specs:FEDREP"),
    "fedrep-patch": Algorithm("strategies.fedrep_patch:FedRepPatch", "clients.specs:FEDREP_PATCH"),
}


def _resolve(entry: Any) -> Any:
    """``entry`` itself, or the object a ``"module:NAME"`` entry names (imported now)."""
    if not isinstance(entry, str):
        return entry
    module, _, attribute = entry.partition(":")
    return getattr(importlib.import_module(module), attribute)


def strategy_class(name: str) -> type:
    """The server strategy class of algorithm ``name``."""
    return _resolve(ALGORITHMS[name].strategy)


def client_model(config: Config, data: Dataset) -> nn.Module:
    """The model a client of ``config.strategy`` trains, initialised from ``seed``."""
    build = ALGORITHMS[config.strategy].model
    return (build or _base)(data, config)


def engine_paths(config: Config, data: Dataset) -> dict[str, str]:
    """Which path (``loop`` or ``vectorized``) the training and fine-tuning phases of
    ``config.strategy`` run; a ConfigError when ``vectorize = "on"`` cannot be met."""
    from clients.engine import paths

    return paths(client_model(config, data), ALGORITHMS[config.strategy].client, config)
