"""A shard's metadata as an uncompressed Arrow IPC file (meta.arrow) that readers memory-map.
meta.parquet stays the shard's compressed record (merges, export and change detection read it);
meta.arrow is for search: a hit's row is read where it lies, so a searcher's heap holds no
metadata, and the pages it touched are page cache the kernel can take back (bench/scale.py
measures both). Shards written before meta.arrow existed are read from Parquet into memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from .columns import array as column_array

META_MAP_FILE = "meta.arrow"
BATCH_ROWS = 65_536  # rows per record batch: a take touches the batches its rows are in


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
    """A shard's metadata table, with a `take` that reads only the rows it is asked for (pyarrow's
    Table.take concatenates every chunk of a multi-chunk table first: 100 ms for 10 rows of a
    2M-row mapped table, measured; this takes from each record batch)."""

    def __init__(self, batches: list[pa.RecordBatch], schema: pa.Schema):
        self._batches = batches
        self.table = pa.Table.from_batches(batches, schema=schema)
        sizes = np.array([b.num_rows for b in batches], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)])

    @classmethod
    def mapped(cls, path: Path, schema: pa.Schema) -> "ShardMeta":
        """meta.arrow memory-mapped; columns missing from an older file read as nulls."""
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        batches = [_conform(reader.get_batch(i), schema) for i in range(reader.num_record_batches)]
        return cls(batches, schema)

    @classmethod
    def in_memory(cls, table: pa.Table) -> "ShardMeta":
        table = table.combine_chunks()
        return cls(table.to_batches() or [], table.schema)

    @property
    def num_rows(self) -> int:
        return int(self._starts[-1])

    def take(self, rows: np.ndarray) -> pa.Table:
        """Rows at positions `rows` (any order, repeats allowed), as a small table in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(self._batches) == 1:
            return self.table.take(column_array(rows, pa.int64()))
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        which = np.searchsorted(self._starts, sorted_rows, side="right") - 1
        parts = []
        for b in np.unique(which):
            local = sorted_rows[which == b] - self._starts[b]
            parts.append(self._batches[int(b)].take(column_array(local, pa.int64())))
        taken = pa.Table.from_batches(parts, schema=self.table.schema).combine_chunks()
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return taken.take(column_array(back, pa.int64()))


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.names == schema.names:
        return batch
    arrays = [batch.column(f.name) if f.name in batch.schema.names else pa.nulls(batch.num_rows, f.type)
              for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
