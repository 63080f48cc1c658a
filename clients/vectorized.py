"""A declared phase run for a whole cohort at once: every client's parameters stacked
along a first axis, one batched forward/backward per step (:mod:`clients.batched`),
each client with its own shuffling, batches, momentum and number of steps.

Shapes never depend on the cohort: a step's batch is padded to ``batch-size + 1`` (the
largest batch a client can have), and body features are computed in fixed-size chunks, so
a client's numbers do not depend on which clients share its cohort. A client with no
batch left in a step takes no step at all (no momentum, no weight decay).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from clients.batched import cross_entropy_step, forward_of, hand_batched, outputs
from clients.phases import Phase, submodule
from clients.routines import MOMENTUM
from fedsim.config import Config
from fedsim.models import SplitModel


def why_not_vectorized(model: nn.Module, phases: tuple[Phase, ...], config: Config) -> str | None:
    """None if ``phases`` can run vectorized on ``model`` under ``config``, else the reason."""
    kinds = {type(m).__name__ for m in model.modules()
             if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout))}
    if kinds:
        return f"the model has {', '.join(sorted(kinds))} (per-client batch statistics or randomness)"
    if any(True for _ in model.buffers()):
        return "the model has buffers"
    custom = [p.name for p in phases if p.custom(config)]
    if custom:
        return f"phase {custom[0]!r} runs its own routine (e.g. head-solver = 'lstsq')"
    return None


def schedule(n: int, epochs: float, batch_size: int) -> tuple[int, int]:
    """(batches per epoch, steps) of a client with ``n`` samples: a last batch of one
    sample joins the one before (BatchNorm cannot train on one sample)."""
    per_epoch = max(1, n // batch_size if n % batch_size == 1 else math.ceil(n / batch_size))
    steps = math.ceil(epochs * per_epoch)
    return per_epoch, (0 if n < 2 else steps)


def batch_indices(
    sizes: list[int], epochs: float, batch_size: int, generators: list[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each client's mini-batches of a phase, drawn from its own generator exactly as the
    client-by-client loop draws them (one ``randperm`` per epoch started):
    ``index`` [C, steps, batch-size + 1] (padding points at sample 0), ``count`` [C, steps]
    (0 once a client has no batch left) and ``epoch_start`` [C, steps] (a new pass)."""
    width = batch_size + 1
    plans = [schedule(n, epochs, batch_size) for n in sizes]
    longest = max((steps for _, steps in plans), default=0)
    index = torch.zeros(len(sizes), longest, width, dtype=torch.long)
    count = torch.zeros(len(sizes), longest, dtype=torch.long)
    epoch_start = torch.zeros(len(sizes), longest, dtype=torch.bool)
    alike: dict[tuple[int, int, int], list[int]] = {}  # clients of one size share one layout
    for c, ((per_epoch, steps), n) in enumerate(zip(plans, sizes)):
        if steps:
            alike.setdefault((n, per_epoch, steps), []).append(c)
    for (n, per_epoch, steps), members in alike.items():
        passes = math.ceil(steps / per_epoch)
        orders = torch.stack([torch.randperm(n, generator=generators[c])
                              for c in members for _ in range(passes)]).view(len(members), passes, n)
        position, valid, counts = _layout(n, per_epoch, batch_size)
        rows = torch.tensor(members)
        index[rows, :steps] = (orders[:, :, position] * valid).reshape(len(members), -1, width)[:, :steps]
        count[rows, :steps] = counts.repeat(passes)[:steps]
        epoch_start[rows, :steps:per_epoch] = True
    return index, count, epoch_start


@functools.lru_cache(maxsize=4096)
def _layout(n: int, per_epoch: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions in an epoch's order of each batch's samples [per_epoch, batch-size + 1]
    (padding clamped to a real position), which are real, and each batch's size."""
    starts = torch.arange(per_epoch) * batch_size
    ends = starts + batch_size
    ends[-1] = n  # the last batch takes the rest (a lone last sample included)
    position = starts.unsqueeze(1) + torch.arange(batch_size + 1)
    valid = position < ends.unsqueeze(1)
    return position.clamp(max=n - 1), valid.long(), ends - starts


def pad_stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[C, max n, ...]: each client's rows, zero-padded (one call of torch's
    ``pad_sequence``: 66 against 122 µs for 26 digits clients' samples, copying row by row)."""
    return pad_sequence(tensors, batch_first=True)


def per_sample_loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[C, B] losses: cross-entropy for class labels, squared error for real targets."""
    if y.is_floating_point():
        return (output.squeeze(-1) - y) ** 2
    flat = nn.functional.cross_entropy(output.flatten(0, 1), y.flatten(), reduction="none")
    return flat.view(y.shape)


def cohort_scores(outputs: list[torch.Tensor], ys: list[torch.Tensor]) -> list[tuple[float, float]]:
    """(accuracy, mean loss) of every client, as :func:`clients.routines.scores` gives
    them one client at a time (nan accuracy for regression, nan for a client with no
    samples), from one loss and one argmax over the whole cohort's outputs."""
    sizes = torch.tensor([len(y) for y in ys])
    if not int(sizes.sum()):
        return [(float("nan"), float("nan"))] * len(ys)
    owner = torch.repeat_interleave(torch.arange(len(ys)), sizes).to(ys[0].device)
    output, y = torch.cat(outputs), torch.cat(ys)
    if y.is_floating_point():
        per_sample = (output.squeeze(-1) - y) ** 2
    else:
        per_sample = nn.functional.cross_entropy(output, y, reduction="none")
    sums = torch.zeros(len(ys), dtype=torch.float64, device=y.device)
    loss = (sums.index_add(0, owner, per_sample.double()) / sizes.to(sums)).tolist()
    if y.is_floating_point():
        return [(float("nan"), v) for v in loss]
    correct = sums.index_add(0, owner, (output.argmax(dim=1) == y).double())
    return list(zip((correct / sizes.to(sums)).tolist(), loss))


def run_phase(
    model: nn.Module, phase: Phase, states: dict[str, torch.Tensor], start: dict[str, torch.Tensor],
    xs: list[torch.Tensor], ys: list[torch.Tensor], config: Config, generators: list[torch.Generator],
) -> torch.Tensor:
    """SGD of ``phase`` for every client at once, updating the stacked ``states`` in
    place; ``start`` holds the stacked values at the start of the round (proximal
    anchors). Returns each client's mean loss over its last pass (nan: no step)."""
    prefix = f"{phase.forward}." if phase.forward else ""
    names = [n for n, _ in model.named_parameters() if n.startswith(prefix)]
    trained = [n for n in names if n.startswith(phase.trains)]
    clients = len(xs)
    index, count, epoch_start = batch_indices(
        [len(x) for x in xs], phase.epochs_in(config), config.batch_size, generators)
    losses = torch.full((clients,), float("nan"), dtype=torch.float64)
    if not trained or index.shape[1] == 0:
        return losses
    device = xs[0].device
    index, count, epoch_start = index.to(device), count.to(device), epoch_start.to(device)
    module, strip, names, inputs = _forward_inputs(model, phase, states, names, xs)
    targets = pad_stack(ys)
    params = {n: states[n].detach().requires_grad_(n in trained) for n in names}  # states' storage
    weight = phase.prox.coefficient(config) if phase.prox else 0.0
    anchors = _anchors(phase, trained, start) if weight else {}  # a zero penalty adds exactly 0
    run = forward_of(module)
    relative = {k[strip:]: v for k, v in params.items()}
    by_hand = hand_batched(module) and not anchors and not targets.is_floating_point()
    relative_trained = [k[strip:] for k in trained]
    buffers = {n: states.get(MOMENTUM + n) for n in trained}  # momentum: kept (updated in place) or new
    # each step's samples as rows of the flattened [C·N, ...] data (index_select is ~5x
    # cheaper than indexing [rows, batch] for these small gathers; the same values)
    flat_index = torch.arange(clients, device=device).view(-1, 1, 1) * inputs.shape[1] + index
    flat_inputs, flat_targets = inputs.flatten(0, 1), targets.flatten(0, 1)
    stepping = count > 0  # [C, steps]
    everyone = stepping.all(0).tolist()  # per step: every client steps (one fused update)
    masks = (torch.arange(index.shape[2], device=device) < count.unsqueeze(2)).to(inputs.dtype)
    gradient_weight = masks * (stepping / count.clamp(min=1)).unsqueeze(2)  # d(client mean)/d(sample)
    record_from = _last_pass_start(epoch_start, stepping)
    recorded = []  # (step, each client's mean loss in it): the steps of some client's last pass
    for step in range(index.shape[1]):
        n, mask = count[:, step], masks[:, step]
        rows = flat_index[:, step].flatten()
        x = flat_inputs.index_select(0, rows).view(clients, -1, *inputs.shape[2:])
        y = flat_targets.index_select(0, rows).view(clients, -1, *targets.shape[2:])
        if by_hand:
            log_p, grads = cross_entropy_step(
                module, relative, relative_trained, x, y, gradient_weight[:, step])
            per_client = mean_nll(log_p, y, mask, n) if step >= record_from else None
        else:
            output = run(relative, x)
            per_client = (per_sample_loss(output, y) * mask).sum(1) / n.clamp(min=1)
            if anchors:
                per_client = per_client + weight * (0.5 * sum(
                    ((params[k] - a) ** 2).flatten(1).sum(1) for k, a in anchors.items()))
            total = (per_client * stepping[:, step]).sum()
            grads = torch.autograd.grad(total, [params[k] for k in trained])
        with torch.no_grad():
            _sgd_step([params[k] for k in trained], grads, buffers, trained, stepping[:, step],
                      everyone[step], config)
        if step >= record_from:
            recorded.append((step, per_client.detach()))
    with torch.no_grad():
        for n in trained:  # kept momentum a masked step replaced
            if MOMENTUM + n in states and buffers[n] is not states[MOMENTUM + n]:
                states[MOMENTUM + n].copy_(buffers[n])
    loss_sum = torch.zeros(clients, dtype=torch.float64, device=device)
    seen = torch.zeros(clients, dtype=torch.float64, device=device)
    for step, per_client in recorded:  # restarted where a client's pass starts
        fresh, n, active = epoch_start[:, step], count[:, step], stepping[:, step]
        loss_sum = torch.where(fresh, 0.0, loss_sum) + (per_client.double() * n) * active
        seen = torch.where(fresh, 0.0, seen) + n * active
    return torch.where(seen > 0, loss_sum / seen.clamp(min=1), float("nan")).cpu()


def _last_pass_start(epoch_start: torch.Tensor, stepping: torch.Tensor) -> int:
    """The first step of the earliest last pass among the clients that step (each
    client's reported loss is its mean over its last pass)."""
    steps = torch.arange(epoch_start.shape[1], device=epoch_start.device)
    starts = torch.where(epoch_start & stepping, steps, -1)
    last = starts.max(1).values
    return int(last[last >= 0].min()) if bool((last >= 0).any()) else epoch_start.shape[1]


def mean_nll(log_p: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Each client's mean negative log-likelihood over its real samples ([C, B] masks)."""
    nll = -log_p.gather(2, y.unsqueeze(2)).squeeze(2)
    return (nll * mask).sum(1) / n.clamp(min=1)


def _forward_inputs(model, phase, states, names, xs):
    """The module each step runs, the length of its parameters' name prefix, their names
    and the stacked inputs. A phase that trains only a SplitModel's head runs the frozen
    body once per client and phase (exact: vectorized models have no BatchNorm or
    dropout) and steps on its features."""
    if phase.forward == "" and phase.trains == "head." and isinstance(model, SplitModel):
        body = {n[len("body."):]: states[n] for n, _ in model.body.named_parameters(prefix="body")}
        features = outputs(model.body, body, xs)
        return model.head, len("head."), [n for n in names if n.startswith("head.")], pad_stack(features)
    strip = len(phase.forward) + 1 if phase.forward else 0
    return submodule(model, phase.forward), strip, names, pad_stack(xs)


def _anchors(phase: Phase, trained: list[str], start: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if phase.prox is None:
        return {}
    anchor = phase.trains if phase.prox.anchor is None else phase.prox.anchor
    return {k: start[anchor + k[len(phase.trains):]] for k in trained}


# torch._fused_sgd_ rounds its vectorized lanes and its scalar tail differently (ninth
# session: a client's update of a 3-element bias differed in the last bit with where in
# the stacked tensor it lay, so with the cohort). A tensor whose per-client slice is a
# multiple of the widest vector (16 floats, AVX-512) has no element in a tail, whatever
# the cohort; other tensors take the _foreach ops, which round alike everywhere. The kernel
# also reads each tensor as if it were contiguous, whatever its strides: vmap hands a
# stacked linear weight's gradient back transposed for cohorts of 2 or more, and its
# update landed on the wrong elements (every vmap-path run with momentum, the CNNs among
# them, from the eighth to the fifteenth session). Gradients are made contiguous (an exact
# copy); parameters and kept buffers that are not contiguous take the _foreach ops.
VECTOR_ALIGNED = 16


def _sgd_step(params, grads, buffers, names, active, everyone: bool, config: Config) -> None:
    """``clients.routines.SGDStep`` on stacked parameters, applied only where ``active``;
    a client's result never depends on its cohort. While every client takes the step:
    one fused pass per tensor (``torch._fused_sgd_``, torch.optim's ``fused=True``
    kernel: 2.7 against 4.2 ms for FedAvg's 50 stacked digits models) on CPU and CUDA for
    tensors whose per-client size is a multiple of ``VECTOR_ALIGNED``, ``_foreach`` calls
    for the others (and for other devices and momentum 0); masked updates once some
    clients have finished."""
    if everyone:
        fused = config.momentum and params[0].device.type in ("cpu", "cuda")
        split = {True: [], False: []}
        for i, p in enumerate(params):
            kept = buffers[names[i]]
            split[bool(fused) and p[0].numel() % VECTOR_ALIGNED == 0 and p.is_contiguous()
                  and (kept is None or kept.is_contiguous())].append(i)
        for use_fused, index in split.items():
            if index:
                _full_step([params[i] for i in index], [grads[i] for i in index], buffers,
                           [names[i] for i in index], config, use_fused)
        return
    for p, g, name in zip(params, grads, names):
        keep = active.view(-1, *([1] * (p.dim() - 1)))
        update = torch.add(g, p, alpha=config.weight_decay) if config.weight_decay else g
        if config.momentum:
            old = buffers[name]
            buffers[name] = (update.clone() if old is None
                             else torch.where(keep, old * config.momentum + update, old))
            update = buffers[name]
        p.copy_(torch.where(keep, torch.add(p, update, alpha=-config.lr), p))


def _full_step(params, grads, buffers, names, config: Config, fused: bool) -> None:
    """Every client's step on these tensors, bit-identical to the one-client step: one
    fused kernel call, or ``_foreach`` calls (the gradients are fresh tensors of this
    step, updated in place)."""
    first = buffers[names[0]] is None
    if fused:
        if first:
            buffers.update((n, torch.empty_like(p)) for n, p in zip(names, params))
        torch._fused_sgd_(params, [g.contiguous() for g in grads], [buffers[n] for n in names],
                          weight_decay=config.weight_decay, momentum=config.momentum, lr=config.lr,
                          dampening=0.0, nesterov=False, maximize=False, is_first_step=first)
        return
    update = list(grads)
    if config.weight_decay:
        torch._foreach_add_(update, params, alpha=config.weight_decay)
    if config.momentum:
        if not first:
            held = [buffers[n] for n in names]
            torch._foreach_mul_(held, config.momentum)
            torch._foreach_add_(held, update)
            update = held
        buffers.update(zip(names, update))
    torch._foreach_add_(params, update, alpha=-config.lr)
