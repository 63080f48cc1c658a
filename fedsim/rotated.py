"""The rotated-image benchmark (IFCA, Ghosh et al., NeurIPS 2020): planted client groups.

``partitioner = "rotated"``: client c belongs to planted group g = c mod ``num-rotations``
and every image it holds, training and test, is rotated by g·90°. The training pool is
cut among all clients like ``shards`` (``classes-per-client`` classes each, every image
used once) and each client's test set is drawn with its class mix (as for every
partitioner); the dataset then holds ``num-rotations`` rotated copies of every image and
a client's indices point into its group's copy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from fedsim.data import VIEWS, ClientSplit, DataError, Dataset, _pools, match_test_split, shards

if TYPE_CHECKING:
    from fedsim.config import Config


def planted_groups(config: Config) -> list[int]:
    """Every client's planted group (c mod ``num-rotations``)."""
    return [c % config.num_rotations for c in range(config.num_clients)]


PAIR_KINDS = tuple((angle, shared) for angle in (0, 90, 180) for shared in (True, False))
"""(angle between two clients' rotations, whether they share a class), in table order."""


def pairs_by_kind(
    z: np.ndarray, planted: list[int], turns: int, classes: list[set[int]]
) -> list[list[float]]:
    """The finite off-diagonal entries Z[i, j] of a clients × clients matrix, one list per
    :data:`PAIR_KINDS` entry: the angle between i's and j's rotations (planted groups of
    ``turns`` quarter turns; 0° = the same group) and whether their ``classes`` meet."""
    kinds: dict[tuple[int, bool], list[float]] = {kind: [] for kind in PAIR_KINDS}
    for i in range(len(z)):
        for j in range(len(z)):
            if i != j and np.isfinite(z[i, j]):
                apart = (planted[i] - planted[j]) % turns
                kinds[(90 * min(apart, turns - apart), bool(classes[i] & classes[j]))].append(z[i, j])
    return [kinds[kind] for kind in PAIR_KINDS]


def rotate(x: np.ndarray, quarter_turns: int) -> np.ndarray:
    """Images rotated by ``quarter_turns``·90° counter-clockwise: the last two axes of
    N×C×H×W or N×H×W, or a flat N×D with D a square (8×8 digits)."""
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise DataError(f"partitioner = 'rotated' needs square images; inputs of {x.shape[1]} "
                            f"features are not a square")
        return rotate(x.reshape(len(x), side, side), quarter_turns).reshape(x.shape)
    if x.shape[-1] != x.shape[-2]:
        raise DataError(f"partitioner = 'rotated' needs square images, not {x.shape[-2]}×{x.shape[-1]}")
    return np.ascontiguousarray(np.rot90(x, quarter_turns, axes=(-2, -1)))


def rotated_dataset(data: Dataset, rotations: int) -> Dataset:
    """``data`` with ``rotations`` copies: sample g·N + i is sample i rotated by g·90°."""
    if data.num_classes == 0:
        raise DataError(f"partitioner = 'rotated' needs a classification dataset; {data.name!r} is "
                        f"regression")
    if data.domains is not None:
        raise DataError(f"partitioner = 'rotated' needs a single-domain dataset; {data.name!r} has domains")
    x = np.concatenate([rotate(data.x, g) for g in range(rotations)])
    mask = None if data.test_mask is None else np.tile(data.test_mask, rotations)
    return dataclasses.replace(
        data, name=f"{data.name}-rotated", x=x, y=np.tile(data.y, rotations), natural=None, test_mask=mask,
        domains=np.repeat(np.arange(rotations), len(data.y)),
        domain_names=tuple(f"{90 * g}deg" for g in range(rotations)))


def rotated_split(config: Config, data: Dataset, rng: np.random.Generator) -> list[ClientSplit]:
    """The split of :func:`rotated_dataset`'s ``data``: shards over the unrotated images,
    then client c's indices moved into copy c mod ``num-rotations``."""
    n = len(data.y) // config.num_rotations
    base = dataclasses.replace(data, x=data.x[:n], y=data.y[:n], domains=None,
                               test_mask=None if data.test_mask is None else data.test_mask[:n])
    train_pool, test_pool = _pools(base, config.test_fraction, rng)
    parts = shards(base.y[train_pool], config.num_clients, rng, config)
    trains = [train_pool[np.asarray(p, dtype=np.int64)] for p in parts]
    tests = match_test_split([base.y[t] for t in trains], test_pool, base.y[test_pool], rng)
    groups = planted_groups(config)
    return [ClientSplit(np.sort(train) + g * n, np.sort(test) + g * n)
            for train, test, g in zip(trains, tests, groups)]


VIEWS["rotated"] = (lambda data, config: rotated_dataset(data, config.num_rotations), rotated_split)
