"""Run configuration: typed scalars with defaults in one place, flat kebab-case keys.

A config comes from defaults, then an optional TOML file, then ``--set key=value``
overrides. Every key is checked (known name, right type, allowed range) before any
Ray or Flower machinery starts, and errors name the key, the bad value and what is
allowed.
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


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range."""


@dataclass(frozen=True)
class Config:
    """Everything a run depends on. Field ``foo_bar`` is the config key ``foo-bar``."""

    # what to run
    strategy: str = "fedrep"
    dataset: str = "digits"
    data_root: str = ""  # directory of a dataset's files (mnist, cifar*, femnist, digit5)
    download: bool = False  # fetch mnist / fashion-mnist / cifar* with torchvision into data-root
    synth_per_class: int = 100  # digit5-synth: training images per class and domain
    partitioner: str = "shards"
    split_file: str = ""  # JSON client -> indices, used by partitioner "file"
    num_clients: int = 20
    classes_per_client: int = 2
    dirichlet_alpha: float = 0.5
    size_sigma: float = 1.0  # partitioner "size": spread of log client sizes
    test_fraction: float = 0.25
    seed: int = 0
    # synthetic linear data (dataset = "linear-regression")
    linear_dim: int = 20
    linear_rank: int = 2
    samples_per_client: int = 10
    noise_std: float = 1e-3
    plugins: str = ""  # comma-separated modules or .py files that register splits/datasets
    # rounds and sampling
    num_rounds: int = 100
    fraction_train: float = 0.1
    fraction_evaluate: float = 1.0
    eval_every: int = 1
    # local training (FedRep's official recipe)
    head_epochs: int = 10
    body_epochs: int = 1
    local_epochs: int = 1  # FedAvg: as FedRep-lineage scripts run it, = FedRep body epochs
    finetune_epochs: int = 10  # FedAvg-FT / FedBABU head fine-tuning before evaluation
    ditto_lambda: float = 0.1
    lr: float = 0.01
    momentum: float = 0.5
    weight_decay: float = 1e-4
    batch_size: int = 10
    model: str = "auto"  # auto (the dataset's choice), mlp, cnn28, cnn32
    hidden_dim: int = 128
    head_solver: str = "sgd"  # "lstsq": FedRep heads solved exactly (linear head, regression)
    body_qr: bool = False  # FedRep: re-orthonormalise the averaged linear body (QR)
    # KD3A and multi-domain runs
    target_domain: str = ""  # domain held, unlabeled, by the last client (partitioner "domain")
    kd3a_gate_start: float = 0.9  # knowledge-vote confidence gate, rising linearly over rounds
    kd3a_gate_end: float = 0.95
    kd3a_rounds_per_epoch: float = 1.0  # r: aggregate every 1/r local epochs (r < 1) or r times per epoch
    kd3a_exact_up_to: int = 6  # exact Shapley consensus focus up to this many sources, sampled beyond
    kd3a_permutations: int = 64  # Monte-Carlo permutations of the sampled consensus focus
    kd3a_ema: float = 0.8  # weight of the previous consensus focus in its moving average
    kd3a_mixup: float = 0.2  # Beta(α, α) mixup of target samples (0 = off)
    kd3a_bn: bool = True  # aggregate BatchNorm running statistics with the weights
    malicious_sources: str = ""  # comma-separated source clients to corrupt
    malicious_mode: str = "shift"  # shift: labels + 1 mod C; noise: images replaced by noise
    # reliability
    checkpoint_every: int = 0  # rounds between checkpoints in the run directory; 0 = off
    client_dropout: float = 0.0  # probability that a sampled client does not answer
    client_crash: float = 0.0  # probability that a sampled client raises
    max_failures: int = 0  # failed clients tolerated per round; beyond it the run stops
    # execution
    client_num_cpus: float = 1.0
    client_num_gpus: float = 0.0
    num_nodes: int = 0  # simulated nodes; 0 = one per actor (logical clients share them)
    ray_address: str = ""
    round_timeout: float = 600.0
    verbose: bool = False
    vectorize: str = "auto"  # auto: a cohort trains at once where supported; on: must; off: client by client

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
        return [self.num_clients - 1] if self.target_domain else []

    def to_json(self) -> str:
        """Canonical JSON of :meth:`to_dict` (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (snake_case names), validated."""
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        """Raise ConfigError naming the first value outside its allowed range."""
        import fedsim.datasets  # noqa: F401 - registers the real datasets
        from fedsim.data import DATASETS, PARTITIONERS
        from fedsim.models import MODELS
        from strategies.registry import ALGORITHMS

        load_plugins(self.plugins)
        _choice("strategy", self.strategy, ALGORITHMS)
        _choice("dataset", self.dataset, DATASETS)
        _choice("partitioner", self.partitioner, PARTITIONERS)
        _choice("head_solver", self.head_solver, {"sgd": None, "lstsq": None})
        _choice("model", self.model, dict.fromkeys(MODELS))
        _choice("malicious_mode", self.malicious_mode, {"shift": None, "noise": None})
        _choice("vectorize", self.vectorize, {"auto": None, "on": None, "off": None})
        for name in ("kd3a_gate_start", "kd3a_gate_end", "kd3a_ema"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{key_of(name)} = {value}: must be in [0, 1)")
        _positive("kd3a_rounds_per_epoch", self.kd3a_rounds_per_epoch)
        if self.kd3a_mixup < 0:
            raise ConfigError(f"kd3a-mixup = {self.kd3a_mixup}: must be >= 0")
        _at_least("kd3a_permutations", self.kd3a_permutations, 1)
        if self.strategy == "kd3a" and not self.target_domain:
            raise ConfigError("strategy = 'kd3a' needs target-domain = NAME (and partitioner = 'domain')")
        if self.target_domain and self.partitioner != "domain":
            raise ConfigError(f"target-domain = {self.target_domain!r} needs partitioner = 'domain', "
                              f"not {self.partitioner!r}")
        malicious = self.malicious_client_ids()
        if any(not 0 <= c < self.num_clients - (1 if self.target_domain else 0) for c in malicious):
            raise ConfigError(f"malicious-sources = {self.malicious_sources!r}: ids must be source "
                              f"clients 0..{self.num_clients - (2 if self.target_domain else 1)}")
        if self.partitioner == "file" and not self.split_file:
            raise ConfigError("partitioner = 'file' needs split-file = 'PATH.json'")
        if self.split_file and not Path(self.split_file).is_file():
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
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test-fraction = {self.test_fraction}: must be in (0, 1)")
        _positive("lr", self.lr)
        _positive("dirichlet_alpha", self.dirichlet_alpha)
        _positive("size_sigma", self.size_sigma)
        _positive("round_timeout", self.round_timeout)
        _positive("client_num_cpus", self.client_num_cpus)
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum = {self.momentum}: must be in [0, 1)")
        if self.linear_rank > self.linear_dim:
            raise ConfigError(f"linear-rank = {self.linear_rank}: must be <= linear-dim = {self.linear_dim}")
        if self.noise_std < 0:
            raise ConfigError(f"noise-std = {self.noise_std}: must be >= 0")
        if self.ditto_lambda < 0:
            raise ConfigError(f"ditto-lambda = {self.ditto_lambda}: must be >= 0")
        if self.weight_decay < 0:
            raise ConfigError(f"weight-decay = {self.weight_decay}: must be >= 0")
        if self.client_num_gpus < 0:
            raise ConfigError(f"client-num-gpus = {self.client_num_gpus}: must be >= 0")


def load_plugins(spec: str) -> None:
    """Import each comma-separated module name or ``.py`` path once (they register
    partitioners, datasets or algorithms). Runs in the driver and in every Ray actor."""
    import importlib
    import importlib.util
    import sys

    for item in filter(None, (part.strip() for part in spec.split(","))):
        name = Path(item).stem if item.endswith(".py") else item
        if name in sys.modules:
            continue
        try:
            if item.endswith(".py"):
                file = Path(item).resolve()
                loader_spec = importlib.util.spec_from_file_location(name, file)
                if loader_spec is None or not file.is_file():
                    raise ImportError(f"no such file {str(file)!r}")
                module = importlib.util.module_from_spec(loader_spec)
                sys.modules[name] = module
                loader_spec.loader.exec_module(module)  # type: ignore[union-attr]
            else:
                importlib.import_module(name)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ConfigError(f"plugins: cannot import {item!r}: {exc}") from exc


def flwr_config_section() -> str:
    """The ``[tool.flwr.app.config]`` block of pyproject.toml: every key with its default,
    so ``flwr run --run-config`` can override any of them. Regenerate after adding a key:
    ``python -c "from fedsim.config import flwr_config_section as f; print(f())"``."""
    lines = ["[tool.flwr.app.config]  # every fedsim config key; `fedsim run` ignores this section"]
    for key, value in Config().to_dict().items():
        text = str(value).lower() if isinstance(value, bool) else json.dumps(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def key_of(field_name: str) -> str:
    """Config key (kebab-case) of a dataclass field."""
    return field_name.replace("_", "-")


_FIELDS = {key_of(f.name): f for f in fields(Config)}
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML file at ``path``, then ``key=value`` overrides; validated."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
        for key, value in raw.items():
            name = _field_name(key)
            values[name] = _typed(key, value)
    for item in overrides or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        name = _field_name(key)
        values[name] = _typed(key, _parse_text(key, text.strip()))
    from fedsim.data import DATASET_DEFAULTS

    dataset = values.get("dataset", Config.dataset)
    for name, value in DATASET_DEFAULTS.get(dataset, {}).items():
        values.setdefault(name, value)
    config = Config(**values)
    config.validate()
    return config


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a config from its ``to_dict()`` form (config.json, Flower run_config)."""
    config = Config(**{_field_name(k): _typed(k, v) for k, v in data.items()})
    config.validate()
    return config


def _field_name(key: str) -> str:
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


def _choice(name: str, value: str, table: dict[str, Any]) -> None:
    if value not in table:
        hint = difflib.get_close_matches(value, list(table), n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"{name} = {value!r} is unknown{extra} (choose from: {', '.join(table)})")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{key_of(name)} = {value}: must be >= {low}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key_of(name)} = {value}: must be > 0")
