"""The wire format: Flower's ``Array`` (``.npy`` bytes) written and read with one copy,
and a cohort's arrays as one stacked array per parameter."""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

NUMPY = "numpy.ndarray"  # Flower's SType.NUMPY


def to_array(value: np.ndarray) -> Array:
    """``flwr.app.Array(value)``, byte for byte (the same ``.npy`` bytes as ``np.save``),
    with one copy of the data instead of ``np.save``'s two or three into a ``BytesIO``:
    a node's reply is MBs, every round."""
    value = np.asarray(value)
    value = value if value.flags.c_contiguous else value.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
    if value.dtype.hasobject:
        return Array(value)
    data = _npy_header(value.dtype.str, value.shape) + value.tobytes()
    return Array(dtype=str(value.dtype), shape=tuple(value.shape), stype=NUMPY, data=data)


def from_array(array: Array, copy: bool = True) -> np.ndarray:
    """``array.numpy()`` read straight out of its bytes: a copy (``copy=False``: a
    read-only view of the message's bytes), the header parsed once per layout."""
    data = array.data
    if array.stype != NUMPY or data[:6] != b"\x93NUMPY":
        return array.numpy()
    width = 2 if data[6] == 1 else 4  # the header length's bytes: 2 in format 1.0, 4 beyond
    size = 8 + width + int.from_bytes(data[8:8 + width], "little")
    dtype, shape, fortran = _parse_header(bytes(data[:size]))
    if fortran or dtype.hasobject:
        return array.numpy()
    view = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=size).reshape(shape)
    return view.copy() if copy else view


@functools.lru_cache(maxsize=1024)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        out, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    return out.getvalue()


@functools.lru_cache(maxsize=1024)
def _parse_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    stream = io.BytesIO(header)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    version = np.lib.format.read_magic(stream)
    if version not in read:  # (3, 0): utf-8 field names; left to numpy
        return np.dtype(object), (), True
    shape, fortran, dtype = read[version](stream, max_header_size=len(header) + 1)
    return dtype, shape, fortran


def pack_client_arrays(states: dict[int, dict[str, Any]]) -> ArrayRecord:
    """Several clients' arrays as one array per parameter, the clients stacked along a
    first axis in ``states`` order: a cohort's reply costs one (de)serialisation per
    parameter, not one per client and parameter. All clients have the same names."""
    if not states:
        return ArrayRecord()
    first = next(iter(states.values()))
    return ArrayRecord({
        name: to_array(np.stack([np.asarray(state[name]) for state in states.values()]))
        for name in first
    })


def split_client_arrays(
    record: ArrayRecord, ids: Sequence[int], copy: bool = True
) -> dict[int, dict[str, np.ndarray]]:
    """Undo :func:`pack_client_arrays`: ``{client: {name: array}}`` for ``ids`` in order
    (``copy=False``: read-only views of the record's bytes, for a reader that only reads)."""
    stacks = {name: from_array(array, copy=copy) for name, array in record.items()}
    for name, stack in stacks.items():
        if len(stack) != len(ids):
            raise ValueError(f"array {name!r} holds {len(stack)} clients, expected {len(ids)}")
    return {int(c): {name: stack[i, ...] for name, stack in stacks.items()} for i, c in enumerate(ids)}
