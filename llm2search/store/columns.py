"""Arrow columns to and from numpy through their buffers. pyarrow's own converters (`pa.array`,
`to_numpy`, Python scalars in compute calls) import pandas whenever it is installed, and that
import took 0.7-1.2 s on this project's 2-core machine: more than a no-change `index` rerun
is allowed in all (bench/README.md, "Scale"). The paths that must stay light use these."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

Column = pa.Array | pa.ChunkedArray


def _chunks(values: Column) -> list[pa.Array]:
    return list(values.chunks) if isinstance(values, pa.ChunkedArray) else [values]


def _valid(chunk: pa.Array) -> np.ndarray:
    if chunk.null_count == 0:
        return np.ones(len(chunk), dtype=bool)
    bits = np.frombuffer(chunk.buffers()[0], dtype=np.uint8)
    return np.unpackbits(bits, bitorder="little")[chunk.offset:chunk.offset + len(chunk)].astype(bool)


def numbers(values: Column, fill: int | float = 0) -> np.ndarray:
    """A fixed-width numeric column as a numpy array; nulls become `fill`."""
    parts = []
    for chunk in _chunks(values):
        dtype = np.dtype(_NUMPY[chunk.type.id]) if chunk.type.id in _NUMPY else None
        if dtype is None:
            raise TypeError(f"not a fixed-width numeric column: {chunk.type}")
        data = chunk.buffers()[1]
        part = (np.frombuffer(data, dtype=dtype, count=len(chunk), offset=chunk.offset * dtype.itemsize)
                if len(chunk) else np.empty(0, dtype))
        if chunk.null_count:
            part = np.where(_valid(chunk), part, fill)
        parts.append(part)
    if not parts:
        return np.empty(0, dtype=_NUMPY.get(values.type.id, np.int64))
    return np.concatenate(parts) if len(parts) != 1 else parts[0].copy()


def flags(values: Column) -> np.ndarray:
    """A boolean column as a numpy bool array; nulls are False."""
    parts = []
    for chunk in _chunks(values):
        if len(chunk) == 0:
            parts.append(np.zeros(0, dtype=bool))
            continue
        bits = np.frombuffer(chunk.buffers()[1], dtype=np.uint8)
        part = np.unpackbits(bits, bitorder="little")[chunk.offset:chunk.offset + len(chunk)].astype(bool)
        parts.append(part & _valid(chunk))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def valid(values: Column) -> np.ndarray:
    """True where the column holds a value."""
    parts = [_valid(c) for c in _chunks(values)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def array(values: np.ndarray, type: pa.DataType, mask: np.ndarray | None = None) -> pa.Array:
    """A numeric or boolean Arrow array over a numpy array (`mask`: True where null)."""
    n = len(values)
    validity = None if mask is None or not mask.any() else pa.py_buffer(np.packbits(~mask, bitorder="little"))
    if pa.types.is_boolean(type):
        data = pa.py_buffer(np.packbits(np.asarray(values, dtype=bool), bitorder="little"))
    else:
        data = pa.py_buffer(np.ascontiguousarray(values, dtype=_NUMPY[type.id]))
    return pa.Array.from_buffers(type, n, [validity, data])


def strings(values: Sequence[str | None]) -> pa.Array:
    """A UTF-8 string array from Python strings (None is null)."""
    return _variable(pa.string(), [None if v is None else v.encode("utf-8") for v in values])


def binaries(values: Sequence[bytes | None]) -> pa.Array:
    return _variable(pa.binary(), list(values))


def _variable(type: pa.DataType, encoded: list[bytes | None]) -> pa.Array:
    mask = np.fromiter((v is None for v in encoded), dtype=bool, count=len(encoded))
    lengths = np.fromiter((0 if v is None else len(v) for v in encoded), dtype=np.int64, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError("more than 2 GiB of text in one column chunk; split it")
    data = b"".join(v for v in encoded if v)
    validity = pa.py_buffer(np.packbits(~mask, bitorder="little")) if mask.any() else None
    return pa.Array.from_buffers(type, len(encoded), [validity, pa.py_buffer(offsets.astype(np.int32)),
                                                      pa.py_buffer(data)])


def empty_table(schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches([], schema=schema)


_NUMPY = {
    pa.int8().id: np.int8, pa.int16().id: np.int16, pa.int32().id: np.int32, pa.int64().id: np.int64,
    pa.uint8().id: np.uint8, pa.uint16().id: np.uint16, pa.uint32().id: np.uint32, pa.uint64().id: np.uint64,
    pa.float32().id: np.float32, pa.float64().id: np.float64,
}
