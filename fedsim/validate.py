"""Config checks that need the registries, and the loaders that apply them.

:mod:`fedsim.config` is a leaf (types, ranges, fixed choices). The names ``strategy``,
``dataset``, ``partitioner`` and ``model`` may take live in registries above it, which
plugins extend, so they are read here, when a config is checked or the help is shown.
Everything that turns text into a Config for a run comes through here: ``load_config``
(defaults, TOML file, ``--set``, dataset defaults), ``config_from_dict`` (config.json,
Flower's run config, every Ray actor) and ``validate``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import textwrap
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import fedsim.datasets  # noqa: F401 - registers the real datasets
import fedsim.rotated  # noqa: F401 - registers the rotated benchmark's view of the data
from fedsim.algorithms import ALGORITHMS  # the strategy table; imported here and nowhere else
from fedsim.config import (
    REGISTRY,
    STRATEGY_DEFAULTS,
    Config,
    ConfigError,
    check_choice,
    declared_choices,
    key_of,
    meaning,
    read_values,
    toml_value,
    typed_values,
)
from fedsim.data import BUILTIN_PARTITIONERS, DATASET_DEFAULTS, DATASETS, PARTITIONERS
from fedsim.zoo import MODELS

REGISTRIES: dict[str, Any] = {
    "strategy": ALGORITHMS, "dataset": DATASETS, "partitioner": PARTITIONERS, "model": MODELS,
}
"""Config key -> the registry whose names it may take (read live: plugins add names)."""
BUILTIN_NAMES = {key: tuple(registry) for key, registry in REGISTRIES.items()}  # before any plugin


def choices(key: str, builtin: bool = False) -> list[str] | None:
    """The values config key ``key`` allows now (registry names included; ``builtin``:
    only fedsim's own, not a plugin's), or None when any value of its type is allowed."""
    declared = declared_choices(key)
    if declared == REGISTRY:
        return list(BUILTIN_NAMES[key] if builtin else REGISTRIES[key])
    return list(declared) if declared else None


def validate(config: Config) -> None:
    """The full check: import ``plugins``, check the registry keys against their
    registries, then every value (:meth:`Config.check`). Raises ConfigError."""
    load_plugins(config.plugins)
    for key in REGISTRIES:
        check_choice(key, getattr(config, key), choices(key))
    config.check()
    if config.tensorboard:
        from fedsim.events import require

        try:
            require()
        except ImportError as exc:
            raise ConfigError(str(exc)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the strategy's (``STRATEGY_DEFAULTS``) and the dataset's defaults
    (``DATASET_DEFAULTS``) for keys left unset,
    then the TOML file at ``path``, then ``key=value`` overrides; validated."""
    values = _absolute_paths(read_values(path, overrides))
    explicit = set(values)
    load_plugins(values.get("plugins", ""))  # a plugin may register the dataset and its defaults
    dataset = values.get("dataset", Config.dataset)
    for name, value in STRATEGY_DEFAULTS.get(values.get("strategy", Config.strategy), {}).items():
        values.setdefault(name, value)  # a strategy's defaults (KD3A's optimiser) yield to set keys
    for name, value in DATASET_DEFAULTS.get(dataset, {}).items():
        values.setdefault(name, value)
    config = Config(**values)
    validate(config)
    for text in unread_split_keys(config, explicit):
        warnings.warn(text, UserWarning, stacklevel=2)
    return config


def _absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """``plugins`` files, ``split-file`` and ``data-root`` as absolute paths: config.json
    keeps them, and ``fedsim resume`` (or a sweep's rerun) may start in another directory."""
    out = dict(values)
    if out.get("plugins"):
        out["plugins"] = ",".join(str(Path(item).resolve()) if item.endswith(".py") else item
                                  for item in filter(None, (p.strip() for p in out["plugins"].split(","))))
    for name in ("split_file", "data_root"):
        if out.get(name):
            out[name] = str(Path(out[name]).expanduser().resolve())
    return out


SPLIT_KEYS: dict[str, tuple[Any, str]] = {
    "classes_per_client": (lambda c: c.partitioner in ("shards", "rotated")
                           or (c.partitioner == "domain" and c.domain_split == "shards"),
                           "partitioner shards or rotated, or domain with domain-split = 'shards'"),
    "dirichlet_alpha": (lambda c: c.partitioner == "dirichlet", "partitioner dirichlet"),
    "size_sigma": (lambda c: c.partitioner == "size", "partitioner size"),
    "domain_split": (lambda c: c.partitioner == "domain", "partitioner domain"),
    "num_rotations": (lambda c: c.partitioner == "rotated", "partitioner rotated"),
    "split_file": (lambda c: c.partitioner == "file", "partitioner file"),
}
"""Keys only some built-in partitioners read: name -> (whether ``config`` reads it, who does)."""


def unread_split_keys(config: Config, explicit: set[str]) -> list[str]:
    """A sentence for every key in ``explicit`` (set by the user) that this config's
    built-in partitioner never reads, e.g. classes-per-client with the iid domain split
    (a plugin's partitioner may read any key: nothing is said)."""
    if config.partitioner not in BUILTIN_PARTITIONERS:
        return []
    return [f"{key_of(name)} = {toml_value(getattr(config, name))} has no effect here: "
            f"partitioner = {config.partitioner!r}"
            + (f" with domain-split = {config.domain_split!r}" if config.partitioner == "domain" else "")
            + f" does not read it (read by {who})"
            for name, (reads, who) in SPLIT_KEYS.items() if name in explicit and not reads(config)]


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a config from its ``to_dict()`` form (config.json, Flower's run config);
    validated, which also imports its plugins (so every Ray actor has them)."""
    config = Config(**typed_values(data))
    validate(config)
    return config


def flwr_run_values(run_config: dict[str, Any]) -> dict[str, Any]:
    """Flower's run config with the strategy's and the dataset's defaults applied as
    :func:`load_config` applies them. pyproject.toml declares every key with fedsim's
    generic default (``flwr run --run-config`` only takes declared keys), so a key still at
    that value counts as unset: KD3A's optimiser, linear-regression's split and solver,
    fedrep-groups' ``affinity-every`` (a value set equal to the generic default yields to
    them too; ``fedsim run`` tells the two apart)."""
    out = dict(run_config)
    load_plugins(str(out.get("plugins", "")))  # a plugin may register the dataset and its defaults
    generic = {f.name: f.default for f in fields(Config)}
    tables = (STRATEGY_DEFAULTS.get(str(out.get("strategy", Config.strategy)), {}),
              DATASET_DEFAULTS.get(str(out.get("dataset", Config.dataset)), {}))
    for table in tables:  # the strategy's first: it wins where both set a key, as in load_config
        for name, value in table.items():
            if out.get(key_of(name), generic[name]) == generic[name]:
                out[key_of(name)] = value
    return out


def load_plugins(spec: str) -> None:
    """Import each comma-separated module name or ``.py`` path once (they register
    partitioners, datasets or algorithms). Runs in the driver and in every Ray actor."""
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


def describe(key: str, quote: str = "", builtin: bool = False) -> str:
    """``key``'s meaning and, for a choice key, its allowed values (each in ``quote``;
    ``builtin``: fedsim's own names only)."""
    allowed = choices(key, builtin)
    if not allowed:
        return meaning(key)
    return f"{meaning(key)}; one of: {', '.join(f'{quote}{v}{quote}' for v in allowed)}"


def help_text(width: int = 100) -> str:
    """Every config key with its default, meaning and allowed values (``fedsim run --help``)."""
    lines = ["config keys (in the TOML file, or --set KEY=VALUE), default, meaning:"]
    for key, value in Config().to_dict().items():
        lines.append(f"  {key} = {toml_value(value)}")
        lines += textwrap.wrap(describe(key), width, initial_indent=" " * 6, subsequent_indent=" " * 6,
                               break_on_hyphens=False)
    return "\n".join(lines)


def config_table() -> str:
    """The README's table of config keys (see :func:`write_readme_table`)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for f in fields(Config):
        value = f.default
        shown = "" if value == "" else f"`{str(value).lower() if isinstance(value, bool) else value}`"
        text = describe(key_of(f.name), "`", builtin=True).replace("|", "\\|")  # a pipe would end the cell
        rows.append(f"| `{key_of(f.name)}` | {shown} | {text} |")
    return "\n".join(rows) + "\n"


README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_BEGIN, TABLE_END = "<!-- config-keys", "<!-- /config-keys -->"


def readme_table(text: str) -> str:
    """The config table in README text (between its two markers)."""
    begin = text.index(TABLE_BEGIN)
    return text[text.index("\n", begin) + 1:text.index(TABLE_END)]


def write_readme_table(readme: Path = README) -> None:
    """Rewrite the README's config table from the declarations, after a key or a
    registered name changed: ``python -c "import fedsim.validate as v; v.write_readme_table()"``."""
    text = readme.read_text()
    readme.write_text(text.replace(readme_table(text), config_table()))
