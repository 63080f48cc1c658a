"""The local-training engine: runs a :class:`~clients.phases.ClientSpec` for a cohort of
clients, either client by client (``loop``) or all at once (``vectorized``).

A cohort's state is one stacked tensor per model entry (row = client, in cohort order):
what the server sent, then each client's personal part. Both paths read and write the
same stacked state, so the caller never knows which one ran.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from clients import vectorized
from clients.batched import outputs
from clients.phases import ClientSpec, Phase, check_spec, submodule
from clients.routines import MOMENTUM, evaluate, run_epochs
from fedsim.config import Config, ConfigError

LOOP, VECTORIZED = "loop", "vectorized"


def momentum_entries(model: nn.Module, config: Config) -> list[str]:
    """The state entries that hold kept momentum (``keep-optimizer-state``), else none."""
    if not (config.keep_optimizer_state and config.momentum):
        return []
    return [MOMENTUM + name for name, _ in model.named_parameters()]


def choose_path(model: nn.Module, phases: tuple[Phase, ...], config: Config) -> str:
    """``vectorized`` or ``loop`` for ``phases`` on ``model`` under ``vectorize``; with
    ``vectorize = "on"`` a reason not to vectorize is a ConfigError."""
    if config.vectorize == "off" or not phases:
        return LOOP
    reason = vectorized.why_not_vectorized(model, phases, config)
    if reason is None:
        return VECTORIZED
    if config.vectorize == "on":
        raise ConfigError(f"vectorize = 'on' but {config.strategy!r} cannot run vectorized: {reason} "
                          f"(use vectorize = 'auto' or 'off')")
    return LOOP


def paths(model: nn.Module, spec: ClientSpec, config: Config) -> dict[str, str]:
    """Which path ``spec``'s training and fine-tuning phases and its evaluation run (for
    summaries). Evaluation follows the fine-tuning; without one it is a forward pass,
    vectorized wherever the model is. A declaration that cannot work on ``model`` is a
    ConfigError (:func:`clients.phases.check_spec`)."""
    check_spec(model, spec, config)
    out = {"train": choose_path(model, spec.train, config)}
    if spec.fine_tunes(config):
        out["finetune"] = out["evaluate"] = choose_path(model, spec.finetune, config)
    else:
        plain = config.vectorize == "off" or vectorized.why_not_vectorized(model, (), config)
        out["evaluate"] = LOOP if plain else VECTORIZED
    return out


def train_cohort(
    model: nn.Module, phases: tuple[Phase, ...], states: dict[str, torch.Tensor],
    xs: list[torch.Tensor], ys: list[torch.Tensor], config: Config, generators: list[torch.Generator],
    path: str,
) -> list[float]:
    """Run ``phases`` for every client of the cohort, updating the stacked ``states`` in
    place; returns each client's loss (mean over the last pass of its last phase that
    took a step; nan if none did)."""
    if path == LOOP:
        losses = []
        for c, (x, y, generator) in enumerate(zip(xs, ys, generators)):
            _load_row(model, states, c)
            row = _row(states, c)
            kept = {n[len(MOMENTUM):]: v for n, v in row.items() if n.startswith(MOMENTUM)} or None
            losses.append(train_one(model, phases, x, y, config, generator, row, kept))
            _store_row(model, states, c)
        return losses
    losses = []
    for part in cache_sized_parts(model, len(xs)):  # exact: a client's numbers ignore its neighbours
        rows = {k: v[part] for k, v in states.items()}  # views: trained in place
        start = {k: v.clone() for k, v in rows.items()} if any(p.prox for p in phases) else rows
        part_losses = torch.full((len(xs[part]),), float("nan"), dtype=torch.float64)
        for phase in phases:
            phase_losses = vectorized.run_phase(model, phase, rows, start, xs[part], ys[part], config,
                                                generators[part])
            part_losses = torch.where(phase_losses.isnan(), part_losses, phase_losses)
        losses += part_losses.tolist()
    return losses


# A vectorized step reads and writes every client's parameters, gradients and momentum
# (3x the stacked parameters). Two actors training 50 stacked digits models each (5 MB of
# parameters, ~15 MB working set each) overflow this box's shared 32 MiB L3 cache; in parts
# of 25 clients FedAvg's round took 66.7-71.2 against 72.0-78.1 ms (60-round runs, 4
# alternating pairs, ninth session). Larger models are not cut: parts of 13 Fashion-MNIST
# MLPs (800 KB each, too large for the cache anyway) made its round 6-10 % slower. The
# parts train one after another with the same numbers (a client's arithmetic does not
# depend on the clients sharing its call).
PART_BYTES = 3 * 2**20  # stacked parameters per part
MIN_PART = 16  # clients: a model too large for this many per part is not cut


def cache_sized_parts(model: nn.Module, clients: int) -> list[slice]:
    """The cohort cut into equal consecutive parts of at most ``PART_BYTES`` of stacked
    parameters, or whole when such parts would hold fewer than ``MIN_PART`` clients."""
    per_client = sum(p.numel() * p.element_size() for p in model.parameters())
    largest = PART_BYTES // max(1, per_client)
    if clients <= largest or largest < MIN_PART:
        return [slice(0, clients)]
    size = -(-clients // -(-clients // largest))
    return [slice(lo, min(lo + size, clients)) for lo in range(0, clients, size)]


def train_one(
    model: nn.Module, phases: tuple[Phase, ...], x: torch.Tensor, y: torch.Tensor, config: Config,
    generator: torch.Generator, start: dict[str, torch.Tensor] | None = None,
    momentum: dict[str, torch.Tensor] | None = None, frozen: Collection[str] = (),
) -> float:
    """One client's ``phases`` on ``model`` (loaded with its state) in place: the plain
    PyTorch loop. ``start`` (default: the model's state now) anchors proximal terms;
    ``momentum`` (parameter name -> buffer, updated in place) is kept optimiser state;
    parameters named in ``frozen`` never train (a phase left with none is skipped)."""
    start = start if start is not None else {k: v.detach().clone() for k, v in model.state_dict().items()}
    loss = float("nan")
    for phase in phases:
        module = submodule(model, phase.forward)
        if phase.custom(config):
            phase_loss = phase.routine.run(module, x, y, config, generator)  # type: ignore[union-attr]
            loss = phase_loss if phase_loss == phase_loss else loss
            continue
        trained = [(n, p) for n, p in model.named_parameters()
                   if n.startswith(phase.trains) and n not in frozen]
        if not trained:
            continue
        penalty = None
        if phase.prox is not None:
            anchor = phase.trains if phase.prox.anchor is None else phase.prox.anchor
            targets = [start[anchor + n[len(phase.trains):]] for n, _ in trained]
            weight = phase.prox.coefficient(config)
            params = [p for _, p in trained]

            def penalty(params=params, targets=targets, weight=weight):
                return weight * (0.5 * sum(((p - a) ** 2).sum() for p, a in zip(params, targets)))

        buffers = None if momentum is None else {i: momentum[n] for i, (n, _) in enumerate(trained)}
        phase_loss = run_epochs(module, [p for _, p in trained], x, y, phase.epochs_in(config), config,
                                generator, penalty, buffers)
        if buffers is not None:
            with torch.no_grad():
                for i, (name, _) in enumerate(trained):
                    if buffers[i] is not momentum[name]:
                        momentum[name].copy_(buffers[i])
        if phase_loss == phase_loss:  # not nan: the phase took a step
            loss = phase_loss
    return loss


Sets = tuple[list[torch.Tensor], list[torch.Tensor]]  # every client's (inputs, labels)


def evaluate_cohort(
    model: nn.Module, spec: ClientSpec, states: dict[str, torch.Tensor], train: Sets, test: Sets,
    config: Config, generators: list[torch.Generator], path: str,
) -> tuple[list[float], list[float]]:
    """(accuracy, loss) of every client on its test data, after ``spec.finetune`` on its
    training data (on a copy: nothing is kept), with the sub-module ``spec.evaluates``
    (vectorized: one batched forward over every client's test data)."""
    return evaluate_sets(model, spec, states, train, [test], config, generators, path)[0]


def evaluate_sets(
    model: nn.Module, spec: ClientSpec, states: dict[str, torch.Tensor], train: Sets, tests: list[Sets],
    config: Config, generators: list[torch.Generator], path: str,
) -> list[tuple[list[float], list[float]]]:
    """:func:`evaluate_cohort` on several data sets (test, validation) of the same
    fine-tuned models: one (accuracies, losses) per set."""
    if spec.fine_tunes(config):  # a fresh optimiser: kept training momentum stays out of it
        states = {k: v.clone() for k, v in states.items() if not k.startswith(MOMENTUM)}
        train_cohort(model, spec.finetune, states, *train, config, generators, path)
    out = []
    for test in tests:
        if path == LOOP:
            results = []
            for c, (x, y) in enumerate(zip(*test)):
                _load_row(model, states, c)
                results.append(evaluate(submodule(model, spec.evaluates), x, y))
        else:
            module = submodule(model, spec.evaluates)
            prefix = f"{spec.evaluates}." if spec.evaluates else ""
            params = {n[len(prefix):]: states[n] for n in states if n.startswith(prefix)}
            results = vectorized.cohort_scores(outputs(module, params, test[0]), test[1])
        out.append(([a for a, _ in results], [loss for _, loss in results]))
    return out


def adapt_unseen(
    model: nn.Module, spec: ClientSpec, states: dict[str, torch.Tensor], rows: list[int], train: Sets,
    shared: Collection[str], config: Config, generators: list[torch.Generator],
    initial: dict[str, torch.Tensor] | None = None,
) -> None:
    """Clients that never trained (``holdout-clients``), rows ``rows`` of ``states``
    (the received shared arrays, their initial personal part), meet the model as the
    strategy prescribes, in place: its training phases once on their own data with the
    ``shared`` parameters frozen, so only the personal part adapts (FedRep/FedPer: a fresh
    head on the received body; FedAvg: nothing; Local: from scratch). A personal parameter
    with a proximal anchor starts at it (Ditto: the personal model from the global one).
    A routine phase runs as declared, then the shared parameters are put back.
    Parameters under ``spec.fresh`` start at their ``initial`` values (FedAvg-FT: a fresh
    head). Fine-tuning phases follow in :func:`evaluate_sets`, as for every client."""
    for c in rows:
        if spec.fresh:
            for name in states:
                if name.startswith(spec.fresh):
                    states[name][c].copy_(initial[name])  # type: ignore[index]
        _load_row(model, states, c)
        received = {n: t.detach().clone() for n, t in model.state_dict().items() if n in shared}
        for phase in spec.train:
            if phase.prox is not None and phase.prox.anchor is not None:
                _start_at_anchor(model, phase)
            if phase.custom(config):
                phase.routine.run(submodule(model, phase.forward), *(s[c] for s in train), config,  # type: ignore[union-attr]
                                  generators[c])
                with torch.no_grad():
                    for name, slot in model.state_dict(keep_vars=True).items():
                        if name in received:
                            slot.copy_(received[name])
            else:
                train_one(model, (phase,), train[0][c], train[1][c], config, generators[c], frozen=shared)
        _store_row(model, states, c)


@torch.no_grad()
def _start_at_anchor(model: nn.Module, phase: Phase) -> None:
    state = model.state_dict(keep_vars=True)
    for name, slot in state.items():
        if name.startswith(phase.trains):
            slot.copy_(state[phase.prox.anchor + name[len(phase.trains):]])  # type: ignore[union-attr]


def _row(states: dict[str, torch.Tensor], c: int) -> dict[str, torch.Tensor]:
    return {k: v[c] for k, v in states.items()}


@torch.no_grad()
def _load_row(model: nn.Module, states: dict[str, torch.Tensor], c: int) -> None:
    for name, slot in model.state_dict(keep_vars=True).items():
        slot.copy_(states[name][c])


@torch.no_grad()
def _store_row(model: nn.Module, states: dict[str, torch.Tensor], c: int) -> None:
    for name, slot in model.state_dict(keep_vars=True).items():
        states[name][c].copy_(slot)
