"""Run configuration: typed scalars with defaults in one place, flat kebab-case keys.

A config comes from defaults, then an optional TOML file, then ``--set key=value``
overrides. Every key is declared once here with its default, a one-line meaning and,
for choice keys, the allowed values; ``fedsim run --help``, the README's table and the
error messages all read them from here.

This module is a leaf: it imports nothing from fedsim, clients or strategies. Keys whose
values come from a registry (strategy, dataset, partitioner, model) are checked, with the
registries and plugins loaded, by :mod:`fedsim.validate`, which also holds the full
loaders (``load_config``, ``config_from_dict``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

REGISTRY = "registry"
"""``choices`` of a key whose allowed values are a registry's names (read when needed)."""


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range."""


def _key(default: Any, meaning: str, choices: tuple[str, ...] | str | None = None) -> Any:
    """A config field: its default, a one-line meaning and, for a choice key, the allowed
    values (a tuple, or ``REGISTRY``)."""
    return dataclasses.field(default=default, metadata={"help": meaning, "choices": choices})


@dataclass(frozen=True)
class Config:
    """Everything a run depends on. Field ``foo_bar`` is the config key ``foo-bar``."""

    # what to run
    strategy: str = _key("fedrep", "the federated algorithm", REGISTRY)
    dataset: str = _key("digits", "the data set", REGISTRY)
    data_root: str = _key("", "directory of the dataset's files (mnist, cifar10/100, femnist, digit5)")
    download: bool = _key(False, "fetch mnist / fashion-mnist / cifar with torchvision into data-root "
                                 "(never implicit)")
    synth_per_class: int = _key(100, "digit5-synth: training images per class and domain")
    partitioner: str = _key(
        "shards", "how the training pool is split among clients (shards: classes-per-client classes "
        "each; dirichlet: label skew, dirichlet-alpha; size: lognormal sizes, size-sigma; domain: client "
        "i holds domain i mod D; file: split-file; natural: the dataset's own clients; rotated: shards, "
        "client c's images rotated by (c mod num-rotations)·90°; or a registered name)", REGISTRY)
    split_file: str = _key("", "JSON file client -> indices, for partitioner = file")
    num_clients: int = _key(20, "number of logical clients")
    classes_per_client: int = _key(2, "partitioner shards and rotated (and domain with domain-split = "
                                      "shards): classes each client holds")
    dirichlet_alpha: float = _key(0.5, "partitioner dirichlet: concentration (smaller = more skew)")
    size_sigma: float = _key(1.0, "partitioner size: spread of the log client sizes")
    test_fraction: float = _key(0.25, "share of each class held out as the test pool")
    seed: int = _key(0, "seeds the split, model init, client sampling and shuffling")
    # synthetic linear data (dataset = "linear-regression")
    linear_dim: int = _key(20, "linear-regression: input dimension d")
    linear_rank: int = _key(2, "linear-regression: rank k of the shared representation")
    samples_per_client: int = _key(10, "linear-regression and synthetic: training samples m per client")
    noise_std: float = _key(1e-3, "linear-regression: standard deviation of the label noise")
    synthetic_alpha: float = _key(1.0, "synthetic: spread of the clients' models (Synthetic(alpha, beta))")
    synthetic_beta: float = _key(1.0, "synthetic: spread of the clients' inputs (Synthetic(alpha, beta))")
    plugins: str = _key("", "comma-separated modules or .py files imported first (they register "
                            "partitioners, datasets)")
    # rounds and sampling
    num_rounds: int = _key(100, "communication rounds")
    fraction_train: float = _key(0.1, "share of clients sampled to train each round (seeded by seed, round)")
    fraction_evaluate: float = _key(1.0, "share of clients evaluated in an evaluation round")
    eval_every: int = _key(1, "evaluate every N rounds (and always the last)")
    # experiment protocol
    val_fraction: float = _key(0.0, "share of each client's training data set aside as its validation set "
                                    "(rows then log val_accuracy; fedsim sweep --select val)")
    holdout_clients: float = _key(0.0, "share of clients that never train (seeded); at every evaluation "
                                       "they adapt to the received model as the strategy prescribes and "
                                       "rows log unseen_accuracy")
    tensorboard: bool = _key(False, "also write TensorBoard event files into the run directory (needs "
                                    "the tensorboard extra)")
    # local training (FedRep's official recipe)
    head_epochs: int = _key(10, "FedRep: local epochs on the head (body frozen)")
    body_epochs: int = _key(1, "FedRep: local epochs on the body after the head (head frozen)")
    local_epochs: int = _key(1, "local epochs of the whole-model methods (FedAvg, FedPer, LG-FedAvg, "
                                "Local, Ditto) and of FedBABU's body")
    finetune_epochs: int = _key(10, "FedAvg-FT / FedBABU / KD3A with kd3a-finetune: head fine-tuning epochs "
                                    "before evaluation")
    ditto_lambda: float = _key(0.1, "Ditto: weight of the proximal term pulling the personal model "
                                    "to the global one")
    fedprox_mu: float = _key(0.01, "FedProx: weight mu of the proximal term mu/2 |w - w_t|^2 pulling the "
                                   "local model to the received one (0 = FedAvg)")
    pfedme_lambda: float = _key(15.0, "pFedMe: weight lambda of lambda/2 |theta - w|^2 tying the personal "
                                      "model theta to the local model w")
    pfedme_k: int = _key(5, "pFedMe: gradient steps K on the personal model per mini-batch")
    pfedme_lr: float = _key(0.01, "pFedMe: learning rate of the personal model's K steps (lr moves w)")
    pfedme_beta: float = _key(1.0, "pFedMe: server mixing w <- (1 - beta) w + beta * average (1 = plain "
                                   "average)")
    perfedavg_alpha: float = _key(0.01, "Per-FedAvg: step size alpha of the one-step adaptation (MAML's "
                                        "inner step, also before evaluation)")
    perfedavg_beta: float = _key(0.001, "Per-FedAvg: meta step size beta of the local updates")
    perfedavg_variant: str = _key("fo", "Per-FedAvg: fo = first-order, hf = Hessian-free (Hessian-vector "
                                        "product on a third batch)", ("fo", "hf"))
    apfl_alpha: float = _key(0.5, "APFL: weight alpha of the personal model in the mixture (its start "
                                  "value when adaptive)")
    apfl_adaptive: bool = _key(True, "APFL: learn each client's alpha by gradient descent")
    fedala_eta: float = _key(1.0, "FedALA: learning rate of the adaptive aggregation weights")
    fedala_layers: int = _key(1, "FedALA: top layers aggregated adaptively (the lower ones take the "
                                 "received model)")
    fedala_sample: float = _key(0.8, "FedALA: share of the local training data the weights learn on")
    fedproto_lambda: float = _key(1.0, "FedProto: weight lambda of the distance to the global prototypes")
    lr: float = _key(0.01, "local SGD learning rate")
    momentum: float = _key(0.5, "local SGD momentum")
    weight_decay: float = _key(1e-4, "local SGD weight decay")
    lr_schedule: str = _key("constant", "learning rate over rounds: constant, or cosine = annealed from lr "
                                        "in round 1 to lr-min in the last round", ("constant", "cosine"))
    lr_min: float = _key(0.001, "lr-schedule cosine: the learning rate of the last round")
    keep_optimizer_state: bool = _key(False, "keep each client's SGD momentum buffers across rounds (in its "
                                             "personal state, checkpointed and resumed like heads)")
    batch_size: int = _key(10, "local SGD batch size")
    model: str = _key("auto", "client model: auto = the dataset's own (cnn32bn for digit5 and "
                              "digit5-synth), else by input shape (cnn28 for 28x28, cnn32 for 32x32 "
                              "colour, else mlp)", REGISTRY)
    hidden_dim: int = _key(128, "width of the MLP body (two ReLU layers; the head is the last linear layer)")
    head_solver: str = _key("sgd", "FedRep heads: sgd, or lstsq = solved exactly by least squares "
                                   "(linear head, regression)", ("sgd", "lstsq"))
    body_qr: bool = _key(False, "FedRep: re-orthonormalise the averaged linear body (QR)")
    # KD3A and multi-domain runs
    target_domain: str = _key("", "domain held, unlabeled, by the last target-clients clients (needs "
                                  "partitioner = domain)")
    target_clients: int = _key(1, "with target-domain: how many (last) clients hold the unlabeled target "
                                  "domain (each runs its own knowledge vote)")
    domain_split: str = _key("iid", "partitioner domain: how a source domain is cut among its clients: iid, "
                                    "or shards = classes-per-client classes each", ("iid", "shards"))
    kd3a_gate_start: float = _key(0.9, "KD3A: knowledge-vote confidence gate at the first round")
    kd3a_gate_end: float = _key(0.95, "KD3A: the gate at the last round (it rises linearly)")
    kd3a_rounds_per_epoch: float = _key(1.0, "KD3A: aggregate every 1/r local epochs (r < 1) or r times "
                                             "per epoch")
    kd3a_exact_up_to: int = _key(6, "KD3A: exact Shapley consensus focus up to this many sources, "
                                    "sampled beyond")
    kd3a_permutations: int = _key(64, "KD3A: Monte-Carlo permutations of the sampled consensus focus")
    kd3a_ema: float = _key(0.9, "KD3A: weight of the previous domain weights (target and sources) in "
                                "their moving average")
    kd3a_ema_rounds: int = _key(0, "KD3A: the run length kd3a-ema is meant for (e.g. the reference's 100 "
                                   "epochs); R rounds then use kd3a-ema ** (kd3a-ema-rounds / R), so the "
                                   "average forgets the same share of the run (0 = kd3a-ema every round)")
    kd3a_ema_start: str = _key("uniform", "KD3A: the moving average starts from equal weights, or from the "
                                          "first round's (the reference, whose first vote follows a whole "
                                          "epoch of 25,000 samples)", ("uniform", "first"))
    kd3a_warm_head: bool = _key(True, "KD3A: a target's head starts from the mean of the sources' heads at "
                                      "its first vote (false: from the model's initialisation)")
    kd3a_mixup: float = _key(2.0, "KD3A: Beta(a, a) mixup of target samples (0 = off)")
    kd3a_bn: bool = _key(True, "KD3A: aggregate BatchNorm running statistics with the domain weights "
                               "(the sources' statistics adapted to the target batches of the vote)")
    kd3a_share_head: bool = _key(False, "KD3A: average whole models, heads included (default: the body "
                                        "only, every client keeps its own head)")
    kd3a_finetune: bool = _key(False, "KD3A: each labeled client fine-tunes a personal head on its own "
                                      "data (finetune-epochs, on a copy) before it evaluates; the targets "
                                      "evaluate as they are (with kd3a-share-head = true: shared heads for "
                                      "the vote, personal ones for the labeled clients)")
    kd3a_focus: bool = _key(True, "KD3A: weight the sources by consensus focus (false: equal weights)")
    kd3a_distill: bool = _key(True, "KD3A: the targets train on the consensus (false: they only adapt the "
                                    "sources' BatchNorm statistics and are not averaged in: AdaBN)")
    malicious_sources: str = _key("", "comma-separated source clients to corrupt")
    malicious_mode: str = _key("shift", "how malicious sources are corrupted: shift = labels + 1, "
                                        "noise = images replaced by noise", ("shift", "noise"))
    malicious_fraction: float = _key(1.0, "share of a malicious source's training samples corrupted "
                                          "(a seeded random subset): labels shifted, or images "
                                          "replaced by noise")
    # client groups: TAG's inter-client affinity, fedrep-groups, the rotated benchmark (issue 21)
    num_rotations: int = _key(4, "partitioner rotated: planted groups; client c's train and test images are "
                                 "rotated by (c mod num-rotations)·90°")
    affinity_every: int = _key(0, "fedrep-groups: measure the inter-client affinity (TAG) every N rounds "
                                  "up to group-after (0 = off; fedrep-groups defaults to 1)")
    affinity_peers: int = _key(0, "fedrep-groups: peers whose body updates each client scores in an "
                                  "affinity round (seeded; 0 = every other participating client)")
    group_after: int = _key(10, "fedrep-groups: the round after which the clients are partitioned by "
                                "affinity (>= num-rounds: never)")
    num_groups: int = _key(4, "fedrep-groups: groups, each with its own body (FedRep within the group)")
    # reliability
    checkpoint_every: int = _key(0, "write checkpoint.npz every N rounds (0 = off); see fedsim resume")
    client_dropout: float = _key(0.0, "probability that a sampled client does not answer (seeded)")
    client_crash: float = _key(0.0, "probability that a sampled client raises (seeded)")
    max_failures: int = _key(0, "failed clients tolerated per round; beyond it the run stops naming them")
    # execution
    client_num_cpus: float = _key(1.0, "CPUs per Ray actor (fractions allowed)")
    client_num_gpus: float = _key(0.0, "GPUs per Ray actor (fractions allowed, e.g. 0.25)")
    require_gpu: bool = _key(False, "refuse to run when an actor assigned a GPU finds no CUDA device "
                                    "(false: it says so once and runs on the CPU)")
    num_nodes: int = _key(0, "simulated Flower nodes; 0 = one per actor that fits (clients are packed "
                             "onto them)")
    ray_address: str = _key("", "attach to a running Ray cluster HOST:PORT (RAY_ADDRESS also works)")
    round_timeout: float = _key(600.0, "seconds to wait for the replies of a round")
    verbose: bool = _key(False, "show Flower and Ray logs")
    vectorize: str = _key("auto", "whether a node's cohort of clients trains at once (vectorized): auto "
                                  "= where supported, on = required, off = client by client",
                          ("auto", "on", "off"))
    # transfer-learning tools (issue 20): LogME, L2-SP fine-tuning, GradNorm client weights
    logme: bool = _key(False, "evaluated clients also report LogME of the received body's features on "
                              "their training data (logme, clients_logme in the metrics)")
    finetune_params: str = _key("head", "FedAvg-FT / FedBABU: what fine-tunes before evaluation: head, or "
                                        "all = every parameter with the L2-SP penalty", ("head", "all"))
    finetune_l2sp_alpha: float = _key(0.1, "finetune-params all: weight alpha of alpha/2 |w - w0|^2 pulling "
                                           "the body's kernels to the received body w0")
    finetune_l2sp_beta: float = _key(0.01, "finetune-params all: weight beta of beta/2 |w|^2 on the head's "
                                           "kernels")
    aggregation: str = _key("samples", "how the server weights client updates: samples = training-set "
                                       "sizes, gradnorm = GradNorm client weights", ("samples", "gradnorm"))
    gradnorm_alpha: float = _key(1.5, "aggregation gradnorm: asymmetry alpha (target norm = mean norm x "
                                      "relative inverse training rate^alpha)")
    gradnorm_lr: float = _key(0.025, "aggregation gradnorm: step size of the L1 update of the client "
                                     "weights")

    def to_dict(self) -> dict[str, Any]:
        """The config as a kebab-case dict (what ``config.json`` holds)."""
        return {key_of(f.name): getattr(self, f.name) for f in fields(self)}

    def malicious_client_ids(self) -> list[int]:
        """``malicious-sources`` as client ids."""
        try:
            return [int(p) for p in self.malicious_sources.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"malicious-sources = {self.malicious_sources!r}: expected "
                              f"comma-separated client ids, e.g. '0,3'") from None

    def targets(self) -> list[int]:
        """Clients holding an unlabeled target domain (never trained on labels)."""
        if not self.target_domain:
            return []
        return list(range(self.num_clients - self.target_clients, self.num_clients))

    def holdout(self) -> list[int]:
        """The clients kept out of training (``holdout-clients``): a seeded
        round(p·clients), at least one when p > 0, sorted."""
        if not self.holdout_clients:
            return []
        count = max(1, round(self.holdout_clients * self.num_clients))
        rng = np.random.default_rng([self.seed, 7])
        return sorted(int(c) for c in rng.permutation(self.num_clients)[:count])

    def to_json(self) -> str:
        """Canonical JSON of :meth:`to_dict` (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def round_lr(self, server_round: int) -> float:
        """The local learning rate in ``server_round`` (1-based) under ``lr-schedule``:
        cosine annealing lr_min + (lr − lr_min)·(1 + cos(π·(t − 1)/(T − 1)))/2 over the
        ``num-rounds`` rounds (the KD3A reference anneals per epoch the same way)."""
        if self.lr_schedule == "constant" or self.num_rounds == 1:
            return self.lr
        progress = min(1.0, (server_round - 1) / (self.num_rounds - 1))
        return self.lr_min + (self.lr - self.lr_min) * (1 + math.cos(math.pi * progress)) / 2

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (snake_case names), its values checked
        (:meth:`check`; registry names are checked by ``fedsim.validate.validate``)."""
        new = dataclasses.replace(self, **changes)
        new.check()
        return new

    def check(self) -> None:
        """Raise ConfigError naming the first value outside its allowed range, or a fixed
        choice key (``choices`` a tuple) set to a value not in it. Registry names and
        plugins need :func:`fedsim.validate.validate`, which calls this."""
        for f in fields(self):
            allowed = f.metadata["choices"]
            if isinstance(allowed, tuple):
                check_choice(key_of(f.name), getattr(self, f.name), allowed)
        for name in ("kd3a_gate_start", "kd3a_gate_end", "kd3a_ema"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{key_of(name)} = {value}: must be in [0, 1)")
        if self.kd3a_gate_start > self.kd3a_gate_end:
            raise ConfigError(f"kd3a-gate-start = {self.kd3a_gate_start} is above kd3a-gate-end = "
                              f"{self.kd3a_gate_end}: the confidence gate rises from start to end "
                              f"(equal values keep it fixed)")
        _positive("kd3a_rounds_per_epoch", self.kd3a_rounds_per_epoch)
        _at_least("kd3a_ema_rounds", self.kd3a_ema_rounds, 0)
        if self.kd3a_mixup < 0:
            raise ConfigError(f"kd3a-mixup = {self.kd3a_mixup}: must be >= 0")
        _at_least("kd3a_permutations", self.kd3a_permutations, 1)
        if self.strategy == "kd3a" and not self.target_domain:
            raise ConfigError("strategy = 'kd3a' needs target-domain = NAME (and partitioner = 'domain')")
        if self.target_domain and self.partitioner != "domain":
            raise ConfigError(f"target-domain = {self.target_domain!r} needs partitioner = 'domain', "
                              f"not {self.partitioner!r}")
        _at_least("target_clients", self.target_clients, 1)
        if self.target_domain and self.target_clients >= self.num_clients:
            raise ConfigError(f"target-clients = {self.target_clients}: must leave at least one source "
                              f"client of num-clients = {self.num_clients}")
        if not 0.0 <= self.malicious_fraction <= 1.0:
            raise ConfigError(f"malicious-fraction = {self.malicious_fraction}: must be in [0, 1]")
        malicious = self.malicious_client_ids()
        sources = self.num_clients - len(self.targets())
        if any(not 0 <= c < sources for c in malicious):
            raise ConfigError(f"malicious-sources = {self.malicious_sources!r}: ids must be source "
                              f"clients 0..{sources - 1}")
        if self.partitioner == "file" and not self.split_file:
            raise ConfigError("partitioner = 'file' needs split-file = 'PATH.json'")
        if self.partitioner == "file" and not Path(self.split_file).is_file():
            raise ConfigError(f"split-file = {self.split_file!r}: no such file")
        for name in ("num_clients", "classes_per_client", "num_rounds", "eval_every", "batch_size",
                     "hidden_dim", "linear_dim", "linear_rank", "samples_per_client",
                     "synth_per_class"):
            _at_least(name, getattr(self, name), 1)
        for name in ("head_epochs", "body_epochs", "local_epochs", "finetune_epochs", "seed",
                     "num_nodes", "checkpoint_every", "max_failures"):
            _at_least(name, getattr(self, name), 0)
        for name in ("fraction_train", "fraction_evaluate"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"{key_of(name)} = {value}: must be in (0, 1]")
        for name in ("client_dropout", "client_crash"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{key_of(name)} = {value}: must be in [0, 1)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val-fraction = {self.val_fraction}: must be in [0, 1)")
        if not 0.0 <= self.holdout_clients < 1.0:
            raise ConfigError(f"holdout-clients = {self.holdout_clients}: must be in [0, 1)")
        if self.holdout_clients and len(self.holdout()) >= self.num_clients:
            raise ConfigError(f"holdout-clients = {self.holdout_clients}: leaves no client of "
                              f"num-clients = {self.num_clients} to train")
        if self.holdout_clients and self.target_domain:
            raise ConfigError("holdout-clients needs no target-domain: the unlabeled target clients are "
                              "already the ones that never train on labels")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test-fraction = {self.test_fraction}: must be in (0, 1)")
        _positive("lr", self.lr)
        if not 0 <= self.lr_min <= self.lr:
            raise ConfigError(f"lr-min = {self.lr_min}: must be in [0, lr = {self.lr}]")
        _positive("dirichlet_alpha", self.dirichlet_alpha)
        _positive("size_sigma", self.size_sigma)
        _positive("round_timeout", self.round_timeout)
        _positive("client_num_cpus", self.client_num_cpus)
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum = {self.momentum}: must be in [0, 1)")
        if self.linear_rank > self.linear_dim:
            raise ConfigError(f"linear-rank = {self.linear_rank}: must be <= linear-dim = {self.linear_dim}")
        for name in ("synthetic_alpha", "synthetic_beta"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key_of(name)} = {getattr(self, name)}: must be >= 0")
        if self.noise_std < 0:
            raise ConfigError(f"noise-std = {self.noise_std}: must be >= 0")
        if self.ditto_lambda < 0:
            raise ConfigError(f"ditto-lambda = {self.ditto_lambda}: must be >= 0")
        if self.weight_decay < 0:
            raise ConfigError(f"weight-decay = {self.weight_decay}: must be >= 0")
        if self.client_num_gpus < 0:
            raise ConfigError(f"client-num-gpus = {self.client_num_gpus}: must be >= 0")
        if self.require_gpu and self.client_num_gpus <= 0:
            raise ConfigError("require-gpu = true needs client-num-gpus > 0")
        for name in ("fedprox_mu", "fedproto_lambda"):  # the personalized baselines (issue 17)
            if getattr(self, name) < 0:
                raise ConfigError(f"{key_of(name)} = {getattr(self, name)}: must be >= 0")
        for name in ("pfedme_lambda", "pfedme_lr", "pfedme_beta", "perfedavg_alpha", "perfedavg_beta",
                     "fedala_eta"):
            _positive(name, getattr(self, name))
        _at_least("pfedme_k", self.pfedme_k, 1)
        _at_least("fedala_layers", self.fedala_layers, 1)
        if not 0.0 <= self.apfl_alpha <= 1.0:
            raise ConfigError(f"apfl-alpha = {self.apfl_alpha}: must be in [0, 1]")
        if not 0.0 < self.fedala_sample <= 1.0:
            raise ConfigError(f"fedala-sample = {self.fedala_sample}: must be in (0, 1]")
        self._check_groups()
        self._check_transfer_tools()

    def _check_groups(self) -> None:
        """Keys of issue 21: the rotated benchmark and fedrep-groups."""
        if not 1 <= self.num_rotations <= 4:
            raise ConfigError(f"num-rotations = {self.num_rotations}: must be 1..4 (rotations by g·90°)")
        if self.partitioner == "rotated" and self.num_clients < self.num_rotations:
            raise ConfigError(f"partitioner = 'rotated': num-clients = {self.num_clients} is fewer than "
                              f"num-rotations = {self.num_rotations} planted groups")
        for name in ("affinity_every", "affinity_peers"):
            _at_least(name, getattr(self, name), 0)
        _at_least("group_after", self.group_after, 1)
        _at_least("num_groups", self.num_groups, 1)
        if self.strategy == "fedrep-groups" and self.num_groups > self.num_clients:
            raise ConfigError(f"num-groups = {self.num_groups}: must be <= num-clients = {self.num_clients}")
        if self.affinity_every and self.strategy != "fedrep-groups":
            raise ConfigError(f"affinity-every = {self.affinity_every} needs strategy = 'fedrep-groups', "
                              f"not {self.strategy!r}")
        if self.strategy == "fedrep-groups" and (self.body_qr or self.dataset == "linear-regression"):
            raise ConfigError("strategy = 'fedrep-groups' does not run FedRep's linear experiment "
                              "(body-qr, dataset = 'linear-regression'); use fedrep")
        if self.strategy == "fedrep-groups" and self.holdout_clients:
            raise ConfigError("holdout-clients needs a strategy other than 'fedrep-groups': a client that "
                              "never trains has no affinity, so no group to take a body from")
        grouping = self.strategy == "fedrep-groups" and self.group_after < self.num_rounds
        if grouping and not 1 <= self.affinity_every <= self.group_after:
            raise ConfigError(f"fedrep-groups groups the clients after group-after = {self.group_after} "
                              f"rounds by their affinity: affinity-every = {self.affinity_every} must be "
                              f"1..{self.group_after}")

    def _check_transfer_tools(self) -> None:
        """LogME, L2-SP fine-tuning and GradNorm weights (issue 20)."""
        for name in ("finetune_l2sp_alpha", "finetune_l2sp_beta", "gradnorm_alpha"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key_of(name)} = {getattr(self, name)}: must be >= 0")
        _positive("gradnorm_lr", self.gradnorm_lr)
        if self.finetune_params == "all" and self.strategy not in FINETUNE_STRATEGIES:
            raise ConfigError(f"finetune-params = 'all' is for the strategies that fine-tune before "
                              f"evaluation ({', '.join(FINETUNE_STRATEGIES)}), not {self.strategy!r}")
        if self.aggregation == "gradnorm" and self.strategy in NO_GRADNORM:
            raise ConfigError(f"aggregation = 'gradnorm' does not apply to strategy = {self.strategy!r} "
                              f"(it weights its clients its own way or shares nothing)")


FINETUNE_STRATEGIES = ("fedavg-ft", "fedbabu")  # finetune-params = "all" (L2-SP) applies to these
NO_GRADNORM = ("kd3a", "local", "fedproto")  # own client weights, nothing shared, or prototypes


KD3A_DEFAULTS: dict[str, Any] = {
    # the reference's optimiser (FengHZ/KD3A, config/DigitFive.yaml): SGD momentum 0.9, weight
    # decay 5e-4, lr 0.05 cosine-annealed to 0.001, optimiser state kept. Batch 32 instead of
    # 128: our domains hold hundreds of images, not 25,000 (128 would be 4-8 steps a round).
    "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "lr_schedule": "cosine", "lr_min": 0.001,
    "keep_optimizer_state": True, "batch_size": 32,
}
STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {"kd3a": KD3A_DEFAULTS,
                                                "fedrep-groups": {"affinity_every": 1}}
"""Per-strategy defaults (snake_case field names), used for every key the config file and
--set leave unset; they win over the dataset's defaults."""


def flwr_config_section() -> str:
    """The ``[tool.flwr.app.config]`` block of pyproject.toml: every key with its default,
    so ``flwr run --run-config`` can override any of them. Regenerate after adding a key:
    ``python -c "from fedsim.config import flwr_config_section as f; print(f())"``."""
    lines = ["[tool.flwr.app.config]  # every fedsim config key; `fedsim run` ignores this section"]
    for key, value in Config().to_dict().items():
        lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """``value`` as TOML writes it (``true``, ``0.5``, ``"fedrep"``)."""
    return str(value).lower() if isinstance(value, bool) else json.dumps(value)


def key_of(field_name: str) -> str:
    """Config key (kebab-case) of a dataclass field."""
    return field_name.replace("_", "-")


_FIELDS = {key_of(f.name): f for f in fields(Config)}
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def meaning(key: str) -> str:
    """The one-line meaning of config key ``key``."""
    return _FIELDS[key].metadata["help"]


def declared_choices(key: str) -> tuple[str, ...] | str | None:
    """The allowed values of ``key`` as declared: a tuple, ``REGISTRY`` or None (any value
    of its type). ``fedsim.validate.choices`` resolves ``REGISTRY``."""
    return _FIELDS[key].metadata["choices"]


def read_values(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The keys set by the TOML file at ``path``, then by ``key=value`` overrides, as
    typed values by field name (defaults not filled in, nothing checked against ranges)."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {str(path)!r} is a directory; give a TOML file")
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (TOML must be): byte "
                              f"{exc.object[exc.start]:#04x} at offset {exc.start}") from None
        except OSError as exc:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
        for key, value in raw.items():
            name = field_name(key)
            values[name] = _typed(key, value)
    for item in overrides or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        name = field_name(key)
        values[name] = _typed(key, _parse_text(key, text.strip()))
    return values


def typed_values(data: dict[str, Any]) -> dict[str, Any]:
    """A config's ``to_dict()`` form (config.json, Flower's run_config) as typed values
    by field name."""
    return {field_name(k): _typed(k, v) for k, v in data.items()}


def field_name(key: str) -> str:
    """The Config field of kebab-case ``key``; an unknown key is a ConfigError with a
    did-you-mean."""
    if key not in _FIELDS:
        hint = difflib.get_close_matches(key, list(_FIELDS), n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"unknown config key {key!r}{extra} (known keys: {', '.join(_FIELDS)})")
    return _FIELDS[key].name


def _kind(key: str) -> type:
    return _TYPES[str(_FIELDS[key].type)]


def _parse_text(key: str, text: str) -> Any:
    kind = _kind(key)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        return kind(text)
    except ValueError:
        raise ConfigError(f"{key} = {text!r}: expected {kind.__name__}") from None


def _typed(key: str, value: Any) -> Any:
    kind = _kind(key)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{key} = {value!r}: expected {kind.__name__}, got {type(value).__name__}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{key} = {value!r}: must be a finite number")
    return value


def check_choice(key: str, value: str, allowed: tuple[str, ...] | list[str]) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed``, with a "did you mean"."""
    if value not in allowed:
        hint = difflib.get_close_matches(value, list(allowed), n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"{key} = {value!r} is unknown{extra} (choose from: {', '.join(allowed)})")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{key_of(name)} = {value}: must be >= {low}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key_of(name)} = {value}: must be > 0")
