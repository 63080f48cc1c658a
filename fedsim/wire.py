"""The wire format of a cohort: several clients' arrays as one array per parameter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord


def pack_client_arrays(states: dict[int, dict[str, Any]]) -> ArrayRecord:
    """Several clients' arrays as one array per parameter, the clients stacked along a
    first axis in ``states`` order: a cohort's reply costs one (de)serialisation per
    parameter, not one per client and parameter. All clients have the same names."""
    if not states:
        return ArrayRecord()
    first = next(iter(states.values()))
    return ArrayRecord({
        name: Array(np.stack([np.asarray(state[name]) for state in states.values()]))
        for name in first
    })


def split_client_arrays(record: ArrayRecord, ids: Sequence[int]) -> dict[int, dict[str, np.ndarray]]:
    """Undo :func:`pack_client_arrays`: ``{client: {name: array}}`` for ``ids`` in order."""
    stacks = {name: array.numpy() for name, array in record.items()}
    for name, stack in stacks.items():
        if len(stack) != len(ids):
            raise ValueError(f"array {name!r} holds {len(stack)} clients, expected {len(ids)}")
    return {int(c): {name: stack[i, ...] for name, stack in stacks.items()} for i, c in enumerate(ids)}
