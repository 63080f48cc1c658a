"""fedsim: federated personalized learning on Flower + Ray."""

from fedsim.config import Config, ConfigError
from fedsim.data import DataError, register_flwr_partitioner, register_partitioner
from fedsim.evidence import logme

__all__ = ["Config", "ConfigError", "DataError", "load_config", "logme", "register_flwr_partitioner",
           "register_partitioner", "run"]


def load_config(path=None, overrides: list[str] | None = None) -> Config:
    """Defaults, TOML file, ``--set`` overrides; fully validated (see
    :func:`fedsim.validate.load_config`; imported on use, as it loads the registries)."""
    from fedsim.validate import load_config as _load_config

    return _load_config(path, overrides)


def run(config: Config, out_dir=None, progress: bool = True) -> dict:
    """Run one simulation and return its summary (see :func:`fedsim.simulation.run`)."""
    from fedsim.simulation import run as _run

    return _run(config, out_dir, progress)
