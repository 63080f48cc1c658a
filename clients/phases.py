"""An algorithm's client side, declared as data: the local phases it runs.

A :class:`ClientSpec` says *what* trains; :mod:`clients.engine` decides *how* (client by
client, or a whole cohort at once). A phase names the parameters that train (a name
prefix), the config key of its epoch count, the sub-module the data runs through, and an
optional proximal penalty; every other parameter stays frozen during it. Phases that are
not plain SGD (a least-squares head, anything new and unusual) declare a :class:`Routine`
and run client by client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedsim.config import Config, ConfigError


@dataclass(frozen=True)
class Prox:
    """Penalty ``λ/2·‖θ − θ⁰‖²`` on the trained parameters, ``λ`` = ``weight`` (a number,
    or the name of the config field that holds it).
    θ⁰ is the value at the start of the client's round (what the server sent, for shared
    parameters) of the parameter named like θ with the phase's ``trains`` prefix replaced
    by ``anchor`` ("" keeps the name: FedProx; Ditto anchors ``personal.*`` at ``shared.*``)."""

    weight: str | float
    anchor: str | None = None

    def coefficient(self, config: Config) -> float:
        """λ under ``config``."""
        return float(getattr(config, self.weight) if isinstance(self.weight, str) else self.weight)


def always(config: Config) -> bool:
    return True


@dataclass(frozen=True)
class Routine:
    """A phase computed by a plain function instead of the engine's SGD, when
    ``applies(config)``: ``run(module, x, y, config, generator)`` updates the phase's
    parameters of ``module`` in place and returns its loss (nan if none). Always runs
    client by client (never vectorized)."""

    run: Callable[[nn.Module, torch.Tensor, torch.Tensor, Config, torch.Generator], float]
    applies: Callable[[Config], bool] = always


@dataclass(frozen=True)
class Phase:
    """SGD on the parameters whose names start with ``trains`` ("" = all of them), the
    rest frozen, for ``epochs`` (a config field name, or a function of the config) passes
    over the client's shuffled data, the data running through sub-module ``forward``
    ("" = the whole model)."""

    name: str
    trains: str
    epochs: str | Callable[[Config], float]
    forward: str = ""
    prox: Prox | None = None
    routine: Routine | None = None

    def epochs_in(self, config: Config) -> float:
        """The number of epochs this phase runs under ``config``."""
        return float(self.epochs(config) if callable(self.epochs) else getattr(config, self.epochs))

    def custom(self, config: Config) -> bool:
        """Whether the phase runs its :class:`Routine` (client by client) under ``config``."""
        return self.routine is not None and self.routine.applies(config)


@dataclass(frozen=True)
class ClientSpec:
    """A client's local training (``train``, kept), what it does before evaluating
    (``finetune``, on a copy, never kept), the sub-module it evaluates and, for a client
    that never trained (``holdout-clients``), the parameters it starts ``fresh`` (their
    initial values) instead of as received."""

    train: tuple[Phase, ...]
    finetune: tuple[Phase, ...] = ()
    evaluates: str = ""
    fresh: str = ""  # a client that never trained starts these parameters (a prefix) at their initial values

    def fine_tunes(self, config: Config) -> bool:
        """Whether a client fine-tunes before it evaluates under ``config`` (a declared
        fine-tuning of 0 epochs, e.g. KD3A without ``kd3a-finetune``, is none)."""
        return any(p.epochs_in(config) > 0 for p in self.finetune)

    def describe(self) -> dict[str, list[str]]:
        """Phase names, for logs and summaries."""
        return {"train": [p.name for p in self.train], "finetune": [p.name for p in self.finetune]}


def submodule(model: nn.Module, path: str) -> nn.Module:
    """``model`` itself for "", else its sub-module at dotted ``path``."""
    return model.get_submodule(path) if path else model


def check_spec(model: nn.Module, spec: ClientSpec, config: Config) -> None:
    """A ConfigError naming the phase for a declaration that cannot mean what it says on
    ``model`` (before Ray starts): a ``forward``/``evaluates`` that is no sub-module, a
    ``trains``/``fresh`` prefix that matches no parameter (the phase would silently train
    nothing), an epochs or penalty key that is not a config key, negative epochs."""
    names = [n for n, _ in model.named_parameters()]
    roots = sorted({n.split(".")[0] + "." for n in names})

    def where(phase: Phase | None) -> str:
        return f"algorithm {config.strategy!r}" + (f", phase {phase.name!r}" if phase else "")

    def is_module(path: str) -> bool:
        try:
            submodule(model, path)
        except AttributeError:
            return False
        return True

    for phase in (*spec.train, *spec.finetune):
        if not is_module(phase.forward):
            raise ConfigError(f"{where(phase)}: forward = {phase.forward!r} is not a sub-module of the "
                              f"model (its parameters start with {', '.join(roots)})")
        inside = [n for n in names if not phase.forward or n.startswith(phase.forward + ".")]
        if not any(n.startswith(phase.trains) for n in inside):
            raise ConfigError(f"{where(phase)}: trains = {phase.trains!r} matches no parameter of the "
                              f"model{' under ' + repr(phase.forward) if phase.forward else ''} (its "
                              f"parameters start with {', '.join(roots)})")
        for what, key in (("epochs", phase.epochs), ("penalty weight", phase.prox and phase.prox.weight)):
            if isinstance(key, str) and not hasattr(config, key):
                raise ConfigError(f"{where(phase)}: {what} {key!r} is not a config field (use a field "
                                  f"name like 'head_epochs', or a number / function of the config)")
        if phase.epochs_in(config) < 0:
            raise ConfigError(f"{where(phase)}: {phase.epochs_in(config)} epochs; must be >= 0")
    if not is_module(spec.evaluates):
        raise ConfigError(f"{where(None)}: evaluates = {spec.evaluates!r} is not a sub-module of the model")
    if spec.fresh and not any(n.startswith(spec.fresh) for n in names):
        raise ConfigError(f"{where(None)}: fresh = {spec.fresh!r} matches no parameter of the model")
