"""Every client's seed for a round: ``SeedSequence([seed, round, client, stream])``'s first
word, for a whole cohort at once.

A node draws two seeds per client and round (training and evaluation), ~10 µs each through
``numpy.random.SeedSequence``. :func:`client_seeds` runs the same hash (numpy's
``SeedSequence``, after O'Neill's ``seed_seq_fe``: pool of 4 words, ``hashmix`` and ``mix``
with the same constants) on uint32 arrays, one pass for the cohort, and returns the same
numbers (tested against numpy); values of 2³² and more take numpy's own path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_MASK = 0xFFFFFFFF
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715


def client_seed(seed: int, server_round: int, client: int, stream: int = 0) -> int:
    """The seed of ``client``'s generator in ``server_round`` for ``stream``."""
    return int(np.random.SeedSequence([seed, server_round, client, stream]).generate_state(1)[0])


def client_seeds(seed: int, server_round: int, clients: Sequence[int], stream: int = 0) -> list[int]:
    """``[client_seed(seed, server_round, c, stream) for c in clients]``, vectorized."""
    values = [seed, server_round, stream, *clients]
    if not clients or min(values) < 0 or max(values) > _MASK:
        return [client_seed(seed, server_round, c, stream) for c in clients]
    n = len(clients)
    words = [np.full(n, seed, np.uint32), np.full(n, server_round, np.uint32),
             np.asarray(clients, np.uint32), np.full(n, stream, np.uint32)]
    constant = _INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal constant
        value = value ^ np.uint32(constant)
        constant = (constant * _MULT_A) & _MASK
        value = value * np.uint32(constant)
        return value ^ (value >> np.uint32(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
        return result ^ (result >> np.uint32(16))

    pool = [hashmix(word) for word in words]
    for source in range(4):
        for target in range(4):
            if source != target:
                pool[target] = mix(pool[target], hashmix(pool[source]))
    state = (pool[0] ^ np.uint32(_INIT_B)) * np.uint32((_INIT_B * _MULT_B) & _MASK)
    return (state ^ (state >> np.uint32(16))).tolist()
