"""A shard's metadata as an uncompressed Arrow IPC file (meta.arrow) that readers memory-map.
meta.parquet stays the shard's compressed record (merges, export and change detection read it);
meta.arrow is for search: a hit's row is read where it lies, so a searcher's heap holds no
metadata, and the pages it touched are page cache the kernel can take back (bench/scale.py
measures both). Shards written before meta.arrow existed are read from Parquet into memory."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pyarrow as pa

from .columns import array as column_array

META_MAP_FILE = "meta.arrow"
BATCH_ROWS = 65_536  # rows per record batch: a take touches the batches its rows are in
SLICE_MAX_ROWS = 2  # rows of one batch read by slicing rather than by a take (see ShardMeta.rows)


class MetaMapWriter:
    """Writes META_SCHEMA rows to a meta.arrow file, in batches of BATCH_ROWS."""

    def __init__(self, path: Path, schema: pa.Schema):
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, schema)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table, max_chunksize=BATCH_ROWS)

    def close(self) -> None:
        self._writer.close()
        self._sink.close()

    def __enter__(self) -> "MetaMapWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardMeta:
    """A shard's metadata table, with `rows` that reads only the rows it is asked for (pyarrow's
    Table.take concatenates every chunk of a multi-chunk table first: 100 ms for 10 rows of a
    2M-row mapped table, measured; this reads from each record batch)."""

    def __init__(self, batches: list[pa.RecordBatch], schema: pa.Schema):
        self._batches = batches
        self.table = pa.Table.from_batches(batches, schema=schema)
        sizes = np.array([b.num_rows for b in batches], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)])

    @classmethod
    def mapped(cls, path: Path, schema: pa.Schema) -> "ShardMeta":
        """meta.arrow memory-mapped; columns missing from an older file read as nulls."""
        with open(path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        random_access(mapped)
        reader = pa.ipc.open_file(pa.py_buffer(mapped))  # zero-copy: batches point into the map
        batches = [_conform(reader.get_batch(i), schema) for i in range(reader.num_record_batches)]
        return cls(batches, schema)

    @classmethod
    def in_memory(cls, table: pa.Table) -> "ShardMeta":
        table = table.combine_chunks()
        return cls(table.to_batches() or [], table.schema)

    @property
    def num_rows(self) -> int:
        return int(self._starts[-1])

    def rows(self, rows: np.ndarray) -> list[dict]:
        """The rows at positions `rows` as dicts, in that order. A batch holding one or two of
        them is sliced (0.09 ms a row, measured), one holding more is taken from (0.25 ms a
        call, whatever the count), so a query's few hits cost a slice each."""
        rows = np.asarray(rows, dtype=np.int64)
        out: list[dict] = [{}] * len(rows)
        which = np.searchsorted(self._starts, rows, side="right") - 1
        for b in np.unique(which):
            at = np.flatnonzero(which == b)
            batch, local = self._batches[int(b)], rows[at] - self._starts[b]
            if len(at) <= SLICE_MAX_ROWS:
                found = [batch.slice(int(r), 1).to_pylist()[0] for r in local]
            else:
                found = batch.take(column_array(local, pa.int64())).to_pylist()
            for i, row in zip(at.tolist(), found):
                out[i] = row
        return out


def random_access(mapped: mmap.mmap) -> None:
    """Tell the kernel a map is read a row here and a row there: without it every page fault
    also maps up to 128 KB around it (read-around), and after a few hundred queries the whole
    file counted in the searcher's RSS (measured on vectors.npy and meta.arrow, 200k rows)."""
    if hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.names == schema.names:
        return batch
    arrays = [batch.column(f.name) if f.name in batch.schema.names else pa.nulls(batch.num_rows, f.type)
              for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
