"""The model zoo's names and which one a dataset gets, without torch: a config's
``model`` is checked before torch loads (and before Ray starts, :mod:`fedsim.simulation`).
The networks themselves are in :mod:`fedsim.models`."""

from __future__ import annotations

from fedsim.config import ConfigError
from fedsim.data import Dataset

MODELS = ("auto", "mlp", "cnn28", "cnn32", "cnn32bn")


def model_for(shape: tuple[int, ...]) -> str:
    """The zoo entry that fits an input shape: CNNs for 28×28 and 32×32 images, else MLP."""
    if len(shape) == 3 and shape[1:] == (28, 28):
        return "cnn28"
    if len(shape) == 3 and shape[1:] == (32, 32):
        return "cnn32"
    return "mlp"


def model_name(data: Dataset, name: str = "auto") -> str:
    """The network ``model = name`` builds for ``data`` (``auto``: the dataset's choice);
    a ConfigError for a CNN whose input size the data does not have."""
    if name == "auto":
        name = data.model if data.model != "auto" else model_for(data.input_shape)
    if name.startswith("cnn"):
        side = int(name[3:5])
        if len(data.input_shape) != 3 or data.input_shape[1:] != (side, side):
            raise ConfigError(f"model = {name!r} needs C×{side}×{side} images, the dataset "
                              f"has inputs of shape {data.input_shape}; use model = 'auto' or 'mlp'")
    return name
