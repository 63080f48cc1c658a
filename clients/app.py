"""The Flower ClientApp: thin handlers around the local routines.

A Flower node hosts a cohort of logical clients. Each logical client's personal
parameters (everything the server does not send, e.g. a FedRep head) live in the
node's ``context.state`` (see :class:`clients.personal.Personal`) and persist across rounds.
Data and the model are built once per actor process and reused across messages.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import traceback

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from clients import engine
from clients.affinity import fixed_batch, lookahead_affinities
from clients.consensus import consensus_focus, knowledge_vote, mean_head
from clients.diagnostics import body_logme, last_shared_layer, loss_and_gradient_norm
from clients.grouped import GroupBodies, unpack_groups
from clients.heap import keep_freed_memory
from clients.personal import PERSONAL, Personal, personal_arrays
from clients.phases import ClientSpec, submodule
from clients.routines import MOMENTUM, kd3a_epochs, predict_in_train_mode, train_on_consensus
from clients.seeds import client_seed, client_seeds
from fedsim.algorithms import ALGORITHMS, client_model
from fedsim.config import Config
from fedsim.data import load_dataset, make_split
from fedsim.placement import choose_device
from fedsim.summation import block_sums
from fedsim.validate import config_from_dict
from fedsim.wire import from_array, pack_client_arrays, split_client_arrays, to_array

app = ClientApp()
CHUNK = 128  # most clients trained at once
STACK_BYTES = 64 * 2**20  # and at most this much of stacked model copies (each also has grads, momentum)


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Tell the server which partition id this node has."""
    pid = int(context.node_config["partition-id"])
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=msg)


def _explained(handler):
    """Re-raise a client's exception as one line naming the clients, the error and where
    it happened: Flower forwards only the message text to the server."""

    @functools.wraps(handler)
    def wrapper(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as exc:
            clients = list(msg.content["config"]["clients"]) if "config" in msg.content else "?"
            raise RuntimeError(f"clients {clients}: {_describe(exc)}") from exc

    return wrapper


def _describe(exc: BaseException) -> str:
    """``Type: message (at file:line)`` of the innermost frame."""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__}: {exc} (at {frame.filename}:{frame.lineno})"


@app.query("export")
def export_state(msg: Message, context: Context) -> Message:
    """Every personal array this node holds (for checkpoints)."""
    exported = ArrayRecord({key: Array(a) for key, a in personal_arrays(context).items()})
    return Message(RecordDict({"arrays": exported}), reply_to=msg)


@app.query("reset")
def reset_state(msg: Message, context: Context) -> Message:
    """Forget every personal array this node holds: a new run starts (several runs of a
    sweep share the nodes)."""
    context.state.pop(PERSONAL, None)
    return Message(RecordDict(), reply_to=msg)


@app.query("restore")
def restore_state(msg: Message, context: Context) -> Message:
    """Replace this node's personal arrays with the ones sent (resuming a checkpoint)."""
    context.state[PERSONAL] = ArrayRecord()  # nothing held before survives
    personal = Personal(None)
    for key, array in msg.content["arrays"].items():
        client, _, name = key.partition("/")
        personal.put(int(client), name, array.numpy())
    personal.save(context)
    return Message(RecordDict(), reply_to=msg)


@app.train()
@_explained
def train(msg: Message, context: Context) -> Message:
    """Local update of every named client; reply with each client's shared arrays.

    Injected faults (``client-dropout``, ``client-crash``) and exceptions raised by a
    client's routine are per client: the client is left out of the reply and reported
    under ``failures`` (ids and errors) for the server's ``max-failures`` budget.
    A message may carry the previous round's evaluation (``evaluate``: an evaluate
    message's config): it runs first and its metrics come back under ``evaluation``."""
    config, clients, shared = _unpack(msg)
    actor = _actor(config.to_json())
    server_round = int(msg.content["config"]["server-round"])
    personal = Personal.of(context)
    evaluation = None
    if "evaluate" in msg.content:  # the last round's evaluation first, on the same arrays and heads
        evaluation = _evaluation(config, msg.content["evaluate"], msg.content["arrays"], personal)
    faults = config.client_dropout or config.client_crash  # else no draws (~20 µs a client)
    dropped, failed, errors, cohort = [], [], [], ([] if faults else list(clients))
    for client in clients if faults else ():
        fault = np.random.default_rng([config.seed, server_round, client, 2]).random(2)
        if fault[0] < config.client_dropout:
            dropped.append(client)
        elif fault[1] < config.client_crash:
            failed.append(client)
            errors.append(f"RuntimeError: injected crash (client-crash = {config.client_crash})")
        else:
            cohort.append(client)
    reports = actor.gradnorm_reports(cohort, shared, personal) if config.aggregation == "gradnorm" else {}
    done, losses, stacks = actor.train(cohort, shared, personal, server_round, failed, errors)
    personal.save(context)
    examples = [len(actor.tensors(c)[1]) for c in done]
    metrics = MetricRecord({
        "num-examples": sum(examples), "client-ids": done, "client-examples": examples,
        "train-loss": losses,
    })
    sums = None
    if "sum-blocks" in msg.content["config"]:  # the whole blocks this node holds, summed here
        blocks = dict(zip(clients, msg.content["config"]["sum-blocks"]))
        stacks, sums, metrics["sent-ids"], metrics["block-ids"] = _sum_blocks(done, examples, stacks, blocks)
    arrays = ArrayRecord({name: to_array(stack) for name, stack in stacks.items()})
    if reports:  # GradNorm: each client's loss and gradient norm at the received model
        metrics["client-start-loss"] = [reports[c][0] for c in done]
        metrics["client-grad-norm"] = [reports[c][1] for c in done]
    failures = ConfigRecord({"failed": failed, "errors": errors, "dropped": dropped})
    content = RecordDict({"arrays": arrays, "metrics": metrics, "failures": failures})
    if sums is not None:
        content["sums"] = sums
    if evaluation is not None:
        content["evaluation"] = evaluation
    if msg.content["config"].get("send-personal", False):  # KD3A: the heads, for the targets' vote only
        names = [n for n in actor.initial if n not in shared]
        content["personal"] = pack_client_arrays({c: {n: personal.get(c, n) for n in names} for c in done})
    return Message(content, reply_to=msg)


def _sum_blocks(
    done: list[int], examples: list[int], stacks: dict[str, np.ndarray], blocks: dict[int, int]
) -> tuple[dict[str, np.ndarray], ArrayRecord, list[int], list[int]]:
    """Split a cohort's stacked updates into the clients that reply alone (block -1) and
    the sums of the blocks this node holds whole (:mod:`fedsim.summation`): (the alone
    clients' stacks, the block sums stacked in block order, the alone ids, the block ids)."""
    alone = [i for i, c in enumerate(done) if blocks[c] < 0]
    summed = [i for i, c in enumerate(done) if blocks[c] >= 0]
    sums = block_sums([examples[i] for i in summed], [{n: s[i] for n, s in stacks.items()} for i in summed],
                      [blocks[done[i]] for i in summed])
    ids = sorted(sums)
    record = ArrayRecord({name: to_array(np.stack([sums[b][name] for b in ids]))
                          for name in (stacks if ids else ())})
    rest = {n: s[alone] for n, s in stacks.items()} if summed else stacks
    return rest, record, [done[i] for i in alone], ids


@app.train("distill")
@_explained
def distill(msg: Message, context: Context) -> Message:
    """KD3A's target step, for every named target client: knowledge vote over the source
    models (received in this message, used here and never stored) on the target's
    unlabeled data, the target's body and head trained on the consensus, consensus
    focus of every source. Replies with each target's shared arrays, the sources'
    BatchNorm statistics as the vote adapted them (``adapted-<target>``), the focus and
    the confident fraction."""
    config, targets, shared = _unpack(msg)
    actor = _actor(config.to_json())
    server_round = int(msg.content["config"]["server-round"])
    source_ids = [int(c) for c in msg.content["config"]["source-ids"]]
    sources = split_client_arrays(msg.content["sources"], source_ids)
    personal = Personal.of(context)
    round_config = actor.in_round(server_round)
    progress = (server_round - 1) / max(1, config.num_rounds - 1)
    gate = config.kd3a_gate_start + (config.kd3a_gate_end - config.kd3a_gate_start) * progress
    statistics = [name for name in shared if name.endswith(("running_mean", "running_var",
                                                             "num_batches_tracked"))]
    out, focus, fractions, losses, examples = {}, [], [], [], []
    content = RecordDict()
    for target in targets:
        x = actor.tensors(target)[0]  # the target's labels are never read
        generator = torch.Generator().manual_seed(client_seed(config.seed, server_round, target, stream=3))
        probs, adapted = [], {}
        for source in source_ids:
            model = actor.load(target, {k: torch.from_numpy(v) for k, v in sources[source].items()}, personal)
            # the same vote batches for every source
            vote_generator = torch.Generator().manual_seed(client_seed(config.seed, server_round, target, 5))
            probs.append(predict_in_train_mode(model, x, config.batch_size, vote_generator))
            state = model.state_dict()
            adapted[source] = {name: state[name].detach().cpu().numpy().copy() for name in statistics}
        stacked = torch.stack(probs)
        knowledge, weight = knowledge_vote(stacked, gate)
        focus += consensus_focus(stacked, gate, config.kd3a_exact_up_to, config.kd3a_permutations,
                                 generator).tolist()
        if config.kd3a_warm_head:  # a target's first vote: its head starts from the sources' mean
            for name, value in mean_head(sources, set(shared)).items():
                if personal.get(target, name) is None:
                    personal.put(target, name, value)
        model = actor.load(target, shared, personal)
        kept = _kept_momentum(actor, personal, target) if actor.keeps_momentum else None
        epochs = kd3a_epochs(config) if config.kd3a_distill else 0.0
        losses.append(train_on_consensus(model, x, knowledge.float(), weight.float(), epochs,
                                         round_config, generator, kept))
        if kept is not None:
            for i, (name, _) in enumerate(model.named_parameters()):
                if i in kept:
                    personal.put(target, MOMENTUM + name, kept[i].detach().cpu().numpy())
        out[target] = _keep_personal(personal, target, model, shared)
        fractions.append(float(weight.mean()))
        examples.append(len(x))
        if statistics:
            content[f"adapted-{target}"] = pack_client_arrays(adapted)
    personal.save(context)
    content["arrays"] = pack_client_arrays(out)
    content["metrics"] = MetricRecord({
        "num-examples": sum(examples), "client-ids": targets, "client-examples": examples,
        "source-ids": source_ids, "focus": focus, "confident-fraction": fractions, "train-loss": losses,
        "gate": gate,
    })
    return Message(content, reply_to=msg)


@app.train("affinity")
@_explained
def affinity(msg: Message, context: Context) -> Message:
    """TAG's affinity phase (``fedrep-groups``), for every named client j: its loss on a
    fixed local batch, with its own head, at its group's body θ and at θ + Δᵢ for each
    peer update Δᵢ it is sent (``peers``; used here and never stored). Replies with the
    scalars Z_{i→j} only: no sample, label or model leaves the client."""
    config, clients, shared = _unpack(msg)
    actor = _actor(config.to_json())
    record = msg.content["config"]
    deltas = split_client_arrays(msg.content["deltas"], [int(c) for c in record["delta-ids"]])
    counts = [int(n) for n in record["peer-counts"]]
    peers = [int(c) for c in record["peers"]]
    personal = Personal.of(context)
    values = []
    for client, start, count in zip(clients, np.cumsum([0, *counts[:-1]]), counts):
        x, y = fixed_batch(*actor.tensors(client)[:2], config.seed, client)
        model = actor.load(client, shared, personal)
        values += lookahead_affinities(model, x, y, [deltas[i] for i in peers[start:start + count]])
    metrics = MetricRecord({"client-ids": clients, "peer-counts": counts, "peer-ids": peers,
                            "affinity": values})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def _kept_momentum(actor: _Actor, personal: Personal, client: int) -> dict[int, torch.Tensor]:
    """``client``'s kept momentum buffers by parameter index (``keep-optimizer-state``),
    as the engine keeps them: state entries ``momentum:<param>``, zeros the first time."""
    kept = {}
    for i, (name, _) in enumerate(actor.model.named_parameters()):
        array = personal.get(client, MOMENTUM + name)
        kept[i] = actor.entries[MOMENTUM + name].clone() if array is None else torch.from_numpy(array.copy())
    return kept


@app.evaluate()
@_explained
def evaluate(msg: Message, context: Context) -> Message:
    """Test accuracy of every named client: received shared arrays + its own personal part
    (clients named under ``unseen`` never trained: they adapt first, see
    :func:`clients.engine.adapt_unseen`). With ``val-fraction``, also the validation accuracy."""
    record = msg.content["config"]
    config = config_from_dict(json.loads(str(record["run-config"])))
    metrics = _evaluation(config, record, msg.content["arrays"], Personal.of(context))
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def _evaluation(
    config: Config, record: ConfigRecord, arrays: ArrayRecord, personal: Personal
) -> MetricRecord:
    """The evaluation metrics of the clients named in ``record`` (an evaluate message's
    config) with the shared ``arrays``: the evaluate handler's reply, or the previous
    round's evaluation sent along with a train message (see :func:`fedsim.server.run_rounds`)."""
    actor = _actor(config.to_json())
    clients = [int(c) for c in record["clients"]]  # type: ignore[union-attr]
    shared = unpack_groups(_tensors(arrays), record)
    server_round = int(record["server-round"])
    unseen = {int(c) for c in record.get("unseen", [])}
    results = actor.evaluate(clients, shared, personal, server_round, unseen)
    examples = [len(actor.tensors(c)[3]) for c in clients]
    metrics = MetricRecord({
        "num-examples": sum(examples), "client-ids": clients, "client-examples": examples,
        "client-accuracy": results[0][0], "client-loss": results[0][1],
    })
    if config.val_fraction:
        metrics["client-val-accuracy"] = results[1][0]
        metrics["client-val-examples"] = [len(actor.splits[c].val) for c in clients]
    if config.logme:
        metrics["client-logme"] = actor.logme(clients, shared, personal)
        metrics["client-train-examples"] = [len(actor.tensors(c)[1]) for c in clients]
    return metrics


def _unpack(msg: Message) -> tuple[Config, list[int], dict[str, torch.Tensor]]:
    record = msg.content["config"]
    config = config_from_dict(json.loads(str(record["run-config"])))
    clients = [int(c) for c in record["clients"]]  # type: ignore[union-attr]
    shared = unpack_groups(_tensors(msg.content["arrays"]), record)  # fedrep-groups
    return config, clients, shared


def _tensors(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """``arrays.to_torch_state_dict()`` with one copy (:func:`fedsim.wire.from_array`)."""
    return {name: torch.from_numpy(from_array(array)) for name, array in arrays.items()}


def _keep_personal(
    personal: Personal, client: int, model: nn.Module, shared: dict
) -> dict[str, np.ndarray]:
    """After ``client`` trained ``model``: store what the server did not send (its personal
    part) and return copies of the shared arrays for the reply (the model is reused by
    the next client)."""
    state = model.state_dict()
    for name, tensor in state.items():
        if name not in shared:
            personal.put(client, name, tensor.detach().cpu().numpy())
    return {name: state[name].detach().cpu().numpy().copy() for name in shared}


class _Actor:
    """What one actor process builds once per run: device, data tensors, a model."""

    def __init__(self, config: Config) -> None:
        threads = max(1, int(config.client_num_cpus))
        torch.set_num_threads(threads)
        keep_freed_memory()  # rounds reuse their memory instead of faulting it in again
        self.device = choose_device(config.client_num_gpus, config.require_gpu)  # cuda = Ray's GPU
        self.config = config
        self.data = load_dataset(config)
        self.splits = make_split(config, self.data)
        self.model = client_model(config, self.data).to(self.device)
        self.initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model_bytes = sum(v.numel() * v.element_size() for v in self.initial.values())
        self.entries = dict(self.initial)  # what a client's state holds: the model, kept momentum
        for name in engine.momentum_entries(self.model, config):
            self.entries[name] = torch.zeros_like(self.initial[name.removeprefix(MOMENTUM)])
        self.keeps_momentum = bool(engine.momentum_entries(self.model, config))
        self.slots = self.model.state_dict(keep_vars=True)  # the model's own tensors
        self._paths: tuple[ClientSpec, dict[str, str]] | None = None  # (for this declaration)
        self._tensors: dict[int, tuple[torch.Tensor, ...]] = {}
        self._val: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def tensors(self, client: int) -> tuple[torch.Tensor, ...]:
        """(x_train, y_train, x_test, y_test) of ``client`` on the actor's device."""
        if client not in self._tensors:
            split = self.splits[client]
            x, y = self.data.x[split.train], self.data.y[split.train]
            if client in self.config.targets():
                y = np.full_like(y, -1)  # unlabeled: any use of these labels fails loudly
            elif client in self.config.malicious_client_ids():
                x, y = corrupt(x, y, self.data.num_classes, self.config, client)
            arrays = (x, y, self.data.x[split.test], self.data.y[split.test])
            self._tensors[client] = tuple(torch.from_numpy(a).to(self.device) for a in arrays)
        return self._tensors[client]

    def load(self, client: int, shared: dict[str, torch.Tensor], personal: Personal) -> nn.Module:
        """The model holding ``shared`` arrays and ``client``'s personal parameters
        (its initial values the first time the client is seen). Values are copied into
        the model's tensors directly: ``load_state_dict`` costs ~10% of a small update."""
        self._check(shared)
        if isinstance(shared, GroupBodies):
            shared = shared.of(client)
        with torch.no_grad():
            for name, slot in self.slots.items():
                value = shared.get(name)
                if value is None:
                    array = personal.get(client, name)
                    value = None if array is None else torch.from_numpy(array)
                slot.copy_(self.initial[name] if value is None else value)
        return self.model

    def stack(self, clients: list[int], shared: dict[str, torch.Tensor], personal: Personal,
              copies: bool = True):
        """The cohort's state, one tensor per model entry (row = client): the shared
        arrays, else each client's personal value (its initial value the first time).
        Without ``copies`` the shared rows are one broadcast view (to be read only)."""
        self._check(shared)
        states = {}
        for name, initial in self.entries.items():
            if isinstance(shared, GroupBodies) and name in shared:  # each client its group's row
                states[name] = shared.rows(name, clients).to(self.device).clone()
                continue
            if name in shared:  # copies: one broadcast copy (~3.5x faster than repeat)
                value = shared[name].to(self.device).unsqueeze(0).expand(len(clients), *shared[name].shape)
                states[name] = torch.empty(value.shape, dtype=value.dtype, device=value.device).copy_(value) \
                    if copies else value
                continue
            taken = personal.take(clients, name)
            if taken is not None:
                states[name] = torch.from_numpy(taken).to(self.device)
                continue
            rows = [personal.get(c, name) for c in clients]
            states[name] = torch.stack([
                initial if row is None else torch.from_numpy(row).to(self.device) for row in rows])
        return states

    def _check(self, shared: dict[str, torch.Tensor]) -> None:
        unknown = shared.keys() - self.slots.keys()
        if unknown:
            raise KeyError(f"the server sent arrays this model does not have: {sorted(unknown)}")

    def in_round(self, server_round: int) -> Config:
        """The config with the learning rate of ``server_round`` (``lr-schedule``)."""
        lr = self.config.round_lr(server_round)
        return self.config if lr == self.config.lr else dataclasses.replace(self.config, lr=lr)

    @property
    def spec(self) -> ClientSpec:
        """The client declaration of the run's strategy (looked up per message)."""
        return ALGORITHMS[self.config.strategy].client

    @property
    def paths(self) -> dict[str, str]:
        """Where each phase group runs (``loop`` or ``vectorized``), worked out once per
        declaration (~75 µs, three times a round)."""
        spec = self.spec
        if self._paths is None or self._paths[0] is not spec:
            self._paths = (spec, engine.paths(self.model, spec, self.config))
        return self._paths[1]

    def cohorts(self, clients: list[int], path: str) -> list[list[int]]:
        """Client by client on the loop path (a client that raises fails alone), else
        chunks of at most ``CHUNK`` clients and ``STACK_BYTES`` of stacked models (bounded
        memory; no result depends on the chunks)."""
        if path == engine.LOOP:
            return [[c] for c in clients]
        size = max(1, min(CHUNK, STACK_BYTES // self.model_bytes))
        return [clients[i:i + size] for i in range(0, len(clients), size)]

    def train(
        self, clients: list[int], shared: dict[str, torch.Tensor], personal: Personal,
        server_round: int, failed: list[int], errors: list[str],
    ) -> tuple[list[int], list[float], dict[str, np.ndarray]]:
        """Train ``clients`` (their personal parts updated in ``personal``); returns the
        clients that completed, their losses and their shared arrays (stacked in that
        order). A client that raises is added to ``failed`` with its error."""
        done, losses, out = [], [], {name: [] for name in shared}
        config = self.in_round(server_round)
        for cohort in self.cohorts(clients, self.paths["train"]):
            try:
                states = self.stack(cohort, shared, personal)
                xs, ys = zip(*(self.tensors(c)[:2] for c in cohort))
                generators = [torch.Generator().manual_seed(s)
                              for s in client_seeds(self.config.seed, server_round, cohort)]
                cohort_losses = engine.train_cohort(self.model, self.spec.train, states, list(xs), list(ys),
                                                    config, generators, self.paths["train"])
            except Exception as exc:  # noqa: BLE001 - reported to the server, which decides
                failed.extend(cohort)
                errors.extend([_describe(exc)] * len(cohort))
                continue
            done += cohort
            losses += [float(v) for v in cohort_losses]
            for name, stack in states.items():
                if name in shared:
                    out[name].append(stack.detach().cpu().numpy())
                else:
                    personal.put_rows(cohort, name, stack.detach().cpu().numpy())
        return done, losses, {n: parts[0] if len(parts) == 1 else np.concatenate(parts)
                              for n, parts in out.items() if parts}

    def evaluate(
        self, clients: list[int], shared: dict[str, torch.Tensor], personal: Personal, server_round: int,
        unseen: set[int] = frozenset(),
    ) -> list[tuple[list[float], list[float]]]:
        """(accuracies, losses) of every client on its test data, then (with
        ``val-fraction``) on its validation data, after the spec's fine-tuning (not kept);
        the ``unseen`` clients adapt first (loop path, on a copy)."""
        path = self.paths["evaluate"]
        targets = set(self.config.targets())  # unlabeled: they fine-tune on nothing
        results: list[tuple[list[float], list[float]]] = []
        for cohort in self.cohorts(clients, path):
            tensors = [self.tensors(c) for c in cohort]
            generators = [
                torch.Generator().manual_seed(s)
                for s in client_seeds(self.config.seed, server_round, cohort, stream=1)]
            rows = [i for i, c in enumerate(cohort) if c in unseen]
            states = self.stack(cohort, shared, personal, copies=bool(rows))  # else only read
            labeled = [(t[0][:0], t[1][:0]) if c in targets else t[:2] for c, t in zip(cohort, tensors)]
            train = ([x for x, _ in labeled], [y for _, y in labeled])
            config = self.in_round(server_round)
            if rows:
                adapting = [torch.Generator().manual_seed(s)
                            for s in client_seeds(self.config.seed, server_round, cohort, 6)]
                engine.adapt_unseen(self.model, self.spec, states, rows, train, shared.keys(), config,
                                    adapting, self.initial)
            sets = [([t[2] for t in tensors], [t[3] for t in tensors])]
            if self.config.val_fraction:
                sets.append(tuple(map(list, zip(*(self.val_tensors(c) for c in cohort)))))
            cohort_results = engine.evaluate_sets(self.model, self.spec, states, train, sets, config,
                                                  generators, path)
            for i, (acc, loss) in enumerate(cohort_results):
                if len(results) <= i:
                    results.append(([], []))
                results[i][0].extend(acc)
                results[i][1].extend(loss)
        return results

    def val_tensors(self, client: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``client``'s validation inputs and labels (``val-fraction``) on the device,
        built once like :meth:`tensors`."""
        if client not in self._val:
            split = self.splits[client]
            self._val[client] = (torch.from_numpy(self.data.x[split.val]).to(self.device),
                                 torch.from_numpy(self.data.y[split.val]).to(self.device))
        return self._val[client]

    def logme(self, clients: list[int], shared: dict[str, torch.Tensor], personal: Personal) -> list[float]:
        """LogME of every client's evaluated body (the received arrays and its personal
        part) on its own training data (``logme = true``); nothing trains."""
        out = []
        for client in clients:
            model = submodule(self.load(client, shared, personal), self.spec.evaluates)
            out.append(body_logme(model, *self.tensors(client)[:2]))
        return out

    def gradnorm_reports(
        self, clients: list[int], shared: dict[str, torch.Tensor], personal: Personal
    ) -> dict[int, tuple[float, float]]:
        """Client -> (loss, gradient norm w.r.t. the last shared layer) at the received
        model and the client's personal part, on its training data (GradNorm aggregation)."""
        layer = last_shared_layer(self.model, shared)
        return {c: loss_and_gradient_norm(self.load(c, shared, personal), layer, *self.tensors(c)[:2])
                for c in clients}


def corrupt(x: np.ndarray, y: np.ndarray, num_classes: int, config: Config, client: int):
    """A malicious source's training data: the labels of a seeded random
    ``malicious-fraction`` of its samples shifted by one class (the reference's attack
    shifts the first m% of every batch) or, with ``malicious-mode = "noise"``, the images
    of such a share replaced by uniform noise (an irrelevant domain; all of them at the
    default fraction 1.0)."""
    rng = np.random.default_rng([config.seed, client, 4])
    if config.malicious_mode == "shift":
        shifted = rng.permutation(len(y))[: int(round(config.malicious_fraction * len(y)))]
        y = y.copy()
        y[shifted] = (y[shifted] + 1) % num_classes
        return x, y
    noise = rng.random(x.shape, dtype=np.float32)  # drawn first: fraction 1.0 is all noise, as before
    if config.malicious_fraction >= 1.0:
        return noise, y
    chosen = rng.permutation(len(y))[: int(round(config.malicious_fraction * len(y)))]
    x = x.copy()
    x[chosen] = noise[chosen]
    return x, y


@functools.lru_cache(maxsize=2)
def _actor(config_json: str) -> _Actor:
    return _Actor(config_from_dict(json.loads(config_json)))
