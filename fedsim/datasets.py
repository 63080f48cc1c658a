"""Real and generated datasets, registered in ``fedsim.data.DATASETS``.

Readers live in ``fedsim.readers`` (real on-disk formats) and ``fedsim.synth_digits``
(the offline Digit-5 stand-in). Nothing is downloaded unless ``download = true``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedsim import readers
from fedsim.data import DATASETS, ClientSplit, DataError, Dataset

if TYPE_CHECKING:
    from fedsim.config import Config


def _joined(name: str, train: tuple, test: tuple, num_classes: int, **extra) -> Dataset:
    """One Dataset from the official train and test parts (test_mask marks the latter)."""
    x = np.concatenate([train[0], test[0]]).astype(np.float32, copy=False)
    y = np.concatenate([train[1], test[1]]).astype(np.int64, copy=False)
    mask = np.zeros(len(y), dtype=bool)
    mask[len(train[1]):] = True
    return Dataset(name, x, y, num_classes, test_mask=mask, **extra)


def _root(config: Config, name: str) -> Path:
    if not config.data_root:
        raise DataError(f"dataset = {name!r} needs data-root = DIR (where its files are)")
    return Path(config.data_root).expanduser()


def _download(config: Config, name: str) -> None:
    """Fetch with torchvision into data-root, only when the user asked (download = true)."""
    if not config.download:
        return
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise DataError(
            f"download = true for {name!r} needs torchvision: pip install 'fedsim[torchvision]'"
        ) from None
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10,
           "cifar100": tvd.CIFAR100}[name]
    for train in (True, False):
        cls(str(_root(config, name)), train=train, download=True)


def fashion_mnist(config: Config) -> Dataset:
    """Fashion-MNIST (60k + 10k, 28×28 grey, 10 classes). Without data-root it reads the
    Debian package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist)."""
    _download(config, "fashion-mnist")
    root = Path(config.data_root).expanduser() if config.data_root else None
    return _joined("fashion-mnist", *readers.read_mnist_like(root, "fashion-mnist"), 10)


def mnist(config: Config) -> Dataset:
    """MNIST from data-root (IDX files, also torchvision's MNIST/raw layout)."""
    _download(config, "mnist")
    return _joined("mnist", *readers.read_mnist_like(_root(config, "mnist"), "mnist"), 10)


def cifar(name: str, num_classes: int):
    def load(config: Config) -> Dataset:
        """CIFAR from data-root in torchvision's layout (python pickles, read safely)."""
        _download(config, name)
        return _joined(name, *readers.read_cifar(_root(config, name), name), num_classes)

    return load


def femnist(config: Config) -> Dataset:
    """FEMNIST from LEAF JSON under data-root (62 classes). ``partitioner = "natural"``
    makes each writer a client (the first num-clients writers, sorted by id); any other
    partitioner pools the writers (e.g. ``shards`` for FedRep's few-classes-per-user)."""
    writers = readers.read_leaf_femnist(_root(config, "femnist"))
    if config.partitioner == "natural" and len(writers) < config.num_clients:
        raise DataError(f"femnist: {len(writers)} writers under {config.data_root!r}, "
                        f"fewer than num-clients = {config.num_clients}")
    chosen = sorted(writers, key=lambda w: w[0])[: config.num_clients]
    xs, ys, natural, offset = [], [], [], 0
    mask_parts = []
    for _, x_train, y_train, x_test, y_test in chosen:
        if len(x_test) == 0:  # one folder of JSON: cut each writer by test-fraction
            cut = int(round(len(y_train) * (1 - config.test_fraction)))
            x_train, y_train, x_test, y_test = x_train[:cut], y_train[:cut], x_train[cut:], y_train[cut:]
        n_train, n_test = len(y_train), len(y_test)
        xs += [x_train, x_test]
        ys += [y_train, y_test]
        mask_parts += [np.zeros(n_train, bool), np.ones(n_test, bool)]
        natural.append(ClientSplit(offset + np.arange(n_train), offset + n_train + np.arange(n_test)))
        offset += n_train + n_test
    return Dataset("femnist", np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64),
                   62, natural=natural, test_mask=np.concatenate(mask_parts))


DIGIT5 = ("mnist", "mnistm", "usps", "syn", "svhn")


def _domains(name: str, parts: list[tuple[tuple, tuple]]) -> Dataset:
    xs, ys, doms, mask = [], [], [], []
    for d, (train, test) in enumerate(parts):
        for (x, y), is_test in ((train, False), (test, True)):
            xs.append(x)
            ys.append(y)
            doms.append(np.full(len(y), d))
            mask.append(np.full(len(y), is_test))
    return Dataset(name, np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64), 10,
                   model="cnn32bn", domains=np.concatenate(doms), domain_names=DIGIT5,
                   test_mask=np.concatenate(mask))


def digit5(config: Config) -> Dataset:
    """KD3A's Digit-5 ``.mat`` files (mnist, mnistm, usps, syn, svhn) from data-root."""
    return _domains("digit5", [readers.read_digit5(_root(config, "digit5"), d) for d in DIGIT5])


def digit5_synth(config: Config) -> Dataset:
    """The offline Digit-5 stand-in (``fedsim.synth_digits``): five 32×32 colour domains,
    ``synth-per-class`` training and half as many test images per class and domain,
    generated from ``seed`` and cached under ~/.cache/fedsim."""
    from fedsim.synth_digits import cached_digit5_synth

    n = config.synth_per_class
    parts = []
    for domain in DIGIT5:
        x, y = cached_digit5_synth(domain, n + max(1, n // 2), config.seed)
        train = np.zeros(len(y), dtype=bool)
        for c in range(10):
            train[np.flatnonzero(y == c)[:n]] = True
        parts.append(((x[train], y[train]), (x[~train], y[~train])))
    return _domains("digit5-synth", parts)


DATASETS.update({
    "fashion-mnist": fashion_mnist,
    "mnist": mnist,
    "cifar10": cifar("cifar10", 10),
    "cifar100": cifar("cifar100", 100),
    "femnist": femnist,
    "digit5": digit5,
    "digit5-synth": digit5_synth,
})
