"""How a round's weighted updates are summed: in blocks, so that a node can sum its own.

The sample-weighted average Σᵢ wᵢ·xᵢ / Σᵢ wᵢ is summed in float64 in a fixed order that
depends only on the round's sorted client list, never on which node holds which client:
the clients are cut into blocks of ``BLOCK`` consecutive positions of that list; a
block's sum adds its members one at a time, in order, to zeros; the total adds the block
sums in block order to zeros. A node that holds a whole block sums it and replies with one
float64 array per parameter instead of the block's updates (a block's sum is the same
wherever it is computed); the server sums the blocks split between nodes from their
members' updates. With at most ``BLOCK`` clients this is the plain sequential sum.

Each product wᵢ·xᵢ of an integer weight below 2²⁹ (a sample count) and a float32 value is
exact in float64, so only the additions round, and they round alike on every layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

BLOCK = 16  # clients per block: 8x fewer bytes for a full block of float32 updates


def block_of(position: int) -> int:
    """The block of the client at ``position`` in the round's sorted client list."""
    return position // BLOCK


def block_sums(
    weights: Sequence[float], updates: Sequence[Mapping[str, np.ndarray]], blocks: Sequence[int]
) -> dict[int, dict[str, np.ndarray]]:
    """``{block: {name: Σ wᵢ·xᵢ}}`` in float64, every block's members (``blocks[i]`` is
    update i's block) added one at a time in the given order, starting from zeros."""
    if not len(weights) == len(updates) == len(blocks):
        raise ValueError(f"need one weight and one block per update, got {len(weights)} weights, "
                         f"{len(blocks)} blocks and {len(updates)} updates")
    sums: dict[int, dict[str, np.ndarray]] = {}
    scratch: dict[tuple, np.ndarray] = {}  # wᵢ·xᵢ, exact in float64
    for w, update, block in zip(weights, updates, blocks):
        acc = sums.get(int(block))
        if acc is None:
            acc = sums[int(block)] = {name: np.zeros(np.shape(v), dtype=np.float64)
                                      for name, v in update.items()}
        for name, value in update.items():
            product = scratch.get(np.shape(value))
            if product is None:
                product = scratch[np.shape(value)] = np.empty(np.shape(value), dtype=np.float64)
            np.multiply(value, float(w), out=product, dtype=np.float64)
            acc[name] += product
    return sums


def combine(
    sums: Mapping[int, Mapping[str, np.ndarray]], total: float, dtypes: Mapping[str, np.dtype]
) -> dict[str, np.ndarray]:
    """The average from the block sums: added in block order to zeros, divided by
    ``total`` (the sum of the weights), cast to each array's dtype (0-d stays an array)."""
    if not total > 0:
        raise ValueError(f"weights must sum to a positive number, got {total}")
    order = sorted(sums)
    out = {}
    for name, dtype in dtypes.items():
        acc = np.zeros(np.shape(sums[order[0]][name]), dtype=np.float64)
        for block in order:
            acc += sums[block][name]
        out[name] = np.asarray(acc / total).astype(dtype)
    return out
