"""A node's personal arrays in its Flower ``Context`` (everything of its logical clients
that the server does not send: FedRep heads, Ditto's personal models, local BN statistics)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from flwr.app import Array, ArrayRecord, Context

PERSONAL = "personal"  # the key in context.state
RAW = "fedsim.raw"  # stype of stored personal arrays: C-order bytes, no .npy header


class Personal:
    """A node's personal arrays (everything of its logical clients that the server does
    not send), kept in ``context.state["personal"]`` as one stacked array per parameter
    (row = client, ``<param>#clients`` = the row's client ids) in raw bytes.

    Flower pickles the node's whole Context with every message: 5,000 clients × 2 head
    arrays as separate records cost ~0.2 s per message and direction, one stacked
    buffer per parameter is a memcpy. Read with :meth:`of` at a handler's start, write
    back with :meth:`save` at its end."""

    def __init__(self, record: ArrayRecord | None) -> None:
        self.rows: dict[str, dict[int, int]] = {}  # param -> client -> row
        self.stacks: dict[str, np.ndarray] = {}  # param -> rows × shape
        self.added: dict[str, dict[int, np.ndarray]] = {}  # param -> client -> new value
        self.changed: set[str] = set()
        for key, array in (record or {}).items():
            if not key.endswith("#clients"):
                ids = _from_raw(record[f"{key}#clients"])
                self.rows[key] = {int(c): i for i, c in enumerate(ids)}
                self.stacks[key] = _from_raw(array).copy()  # writable

    @classmethod
    def of(cls, context: Context) -> Personal:
        return cls(context.state.get(PERSONAL))

    def get(self, client: int, name: str) -> np.ndarray | None:
        if client in self.added.get(name, {}):
            return self.added[name][client]
        row = self.rows.get(name, {}).get(client)
        return None if row is None else self.stacks[name][row, ...]

    def take(self, clients: list[int], name: str) -> np.ndarray | None:
        """The stored ``name`` rows of ``clients``, stacked (one gather), or None unless
        every one of them has a row saved before this message."""
        rows = self.rows.get(name, {})
        if self.added.get(name) or not all(c in rows for c in clients):
            return None
        return self.stacks[name][[rows[c] for c in clients]]

    def put_rows(self, clients: list[int], name: str, values: np.ndarray) -> None:
        """:meth:`put` of ``values[i]`` for every ``clients[i]`` (one scatter where
        they all have rows)."""
        rows = self.rows.get(name, {})
        if name in self.stacks and not self.added.get(name) and all(c in rows for c in clients):
            self.changed.add(name)
            self.stacks[name][[rows[c] for c in clients]] = values
            return
        for client, value in zip(clients, values):
            self.put(client, name, value)

    def put(self, client: int, name: str, value: np.ndarray) -> None:
        self.changed.add(name)
        row = self.rows.get(name, {}).get(client)
        if row is None:
            self.added.setdefault(name, {})[client] = value.copy()
        else:
            self.stacks[name][row] = value

    def save(self, context: Context) -> None:
        """Write the changed parameters back into ``context.state``."""
        if not self.changed:
            return
        record = context.state.get(PERSONAL) or ArrayRecord()
        for name in sorted(self.changed):
            new = self.added.pop(name, {})
            rows = self.rows.setdefault(name, {})
            parts = [self.stacks[name]] if name in self.stacks else []
            for client, value in new.items():
                rows[client] = len(rows)
                parts.append(value[None])
            self.stacks[name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
            record[name] = _to_raw(self.stacks[name])
            record[f"{name}#clients"] = _to_raw(np.fromiter(rows, dtype=np.int64, count=len(rows)))
        context.state[PERSONAL] = record
        self.changed.clear()

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """(``"<client>/<param>"``, array) of every stored value."""
        for name, rows in self.rows.items():
            for client, row in rows.items():
                yield f"{client}/{name}", self.stacks[name][row, ...]
        for name, added in self.added.items():
            for client, value in added.items():
                yield f"{client}/{name}", value


def personal_arrays(context: Context) -> dict[str, np.ndarray]:
    """Every personal array of a node as ``{"<client>/<param>": array}`` (checkpoints)."""
    return {key: np.array(value) for key, value in Personal.of(context).items()}


def _to_raw(array: np.ndarray) -> Array:
    """Raw bytes: writing and parsing .npy headers (Flower's default) costs more than
    a small head's whole update."""
    array = np.ascontiguousarray(array)
    return Array(dtype=str(array.dtype), shape=tuple(array.shape), stype=RAW, data=array.tobytes())


def _from_raw(array: Array) -> np.ndarray:
    """Inverse of :func:`_to_raw` (a read-only view of the bytes)."""
    return np.frombuffer(array.data, dtype=array.dtype).reshape(array.shape)
