"""fedsim: federated personalized learning on Flower + Ray."""

from fedsim.config import Config, ConfigError, load_config
from fedsim.data import DataError, register_flwr_partitioner, register_partitioner

__all__ = ["Config", "ConfigError", "DataError", "load_config", "register_flwr_partitioner",
           "register_partitioner", "run"]


def run(config: Config, out_dir=None, progress: bool = True) -> dict:
    """Run one simulation and return its summary (see :func:`fedsim.simulation.run`)."""
    from fedsim.simulation import run as _run

    return _run(config, out_dir, progress)
