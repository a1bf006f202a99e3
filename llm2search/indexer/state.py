"""What the index already holds, as columns: live rows by path, stored vectors by content hash.
One Arrow table and a few numpy arrays, never one Python object per file (DESIGN §7)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..store import columns
from ..store.manifest import Manifest
from ..store.shard import read_shard_meta, read_tombstones

# The index's live rows: one per indexed file. `shard` is the position in `IndexState.shards`.
LIVE_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("size", pa.int64()),
    ("mtime_ns", pa.int64()),
    ("shard", pa.int32()),
    ("row", pa.int64()),
])
HASH_WIDTH = 32  # content_hash is 32 hex digits (blake2b-128)


class IndexState:
    """The rows of one manifest generation that change detection needs."""

    def __init__(self, index_dir: Path, manifest: Manifest, live: pa.Table):
        self.dir = Path(index_dir)
        self.manifest = manifest
        self.shards: tuple[str, ...] = tuple(s.name for s in manifest.shards)
        self.live = live
        self._lookup: VectorLookup | None = None

    @classmethod
    def load(cls, index_dir: Path, manifest: Manifest) -> "IndexState":
        """Read path, size and mtime of every live row (three Parquet columns per shard)."""
        parts = []
        for i, shard in enumerate(manifest.shards):
            meta = read_shard_meta(index_dir, shard, ["path", "size", "mtime_ns"])
            rows = np.arange(shard.count, dtype=np.int64)
            dead = read_tombstones(index_dir, shard)
            keep = np.setdiff1d(rows, dead, assume_unique=True) if len(dead) else rows
            table = pa.Table.from_arrays([
                meta.column("path"), meta.column("size"), meta.column("mtime_ns"),
                columns.array(np.full(shard.count, i, dtype=np.int32), pa.int32()),
                columns.array(rows, pa.int64()),
            ], schema=LIVE_SCHEMA)
            parts.append(table.take(columns.array(keep, pa.int64())) if len(keep) < shard.count else table)
        live = pa.concat_tables(parts).combine_chunks() if parts else columns.empty_table(LIVE_SCHEMA)
        return cls(index_dir, manifest, live)

    def vectors_by_hash(self) -> "VectorLookup":
        """Where a stored vector with a given content hash lives (read on first use: a run that
        embeds nothing never reads the hashes)."""
        if self._lookup is None:
            self._lookup = VectorLookup.load(self.dir, self.manifest)
        return self._lookup


class VectorLookup:
    """Stored rows by content hash: sorted fixed-width hashes with their (shard, row). Rows that
    are tombstoned still hold their vector until compaction, so they count too (a file renamed
    in this run reuses the row its old name is about to lose)."""

    def __init__(self, shards: Sequence[str], hashes: np.ndarray, shard: np.ndarray, row: np.ndarray):
        self.shards = tuple(shards)
        self.hashes, self.shard, self.row = hashes, shard, row

    @classmethod
    def load(cls, index_dir: Path, manifest: Manifest) -> "VectorLookup":
        hashes, shard, row = [], [], []
        for i, s in enumerate(manifest.shards):
            column = read_shard_meta(index_dir, s, ["content_hash"]).column("content_hash")
            hashes.append(_fixed_width(column))
            shard.append(np.full(s.count, i, dtype=np.int32))
            row.append(np.arange(s.count, dtype=np.int64))
        if not hashes:
            return cls((), np.empty(0, dtype=f"S{HASH_WIDTH}"), np.empty(0, np.int32), np.empty(0, np.int64))
        all_hashes = np.concatenate(hashes)
        # Stable: among equal hashes the first stored row (manifest order) is found first.
        order = np.argsort(all_hashes, kind="stable")
        return cls([s.name for s in manifest.shards], all_hashes[order],
                   np.concatenate(shard)[order], np.concatenate(row)[order])

    def __len__(self) -> int:
        return len(self.hashes)

    def find(self, digest: str | None) -> tuple[str, int] | None:
        """(shard name, row) of a stored vector of these exact bytes, or None."""
        if not digest or len(self.hashes) == 0:
            return None
        key = np.array(digest, dtype=f"S{HASH_WIDTH}")
        at = int(np.searchsorted(self.hashes, key))
        if at < len(self.hashes) and self.hashes[at] == key:
            return self.shards[self.shard[at]], int(self.row[at])
        return None

    def find_many(self, digests: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """For a batch of hashes: (shard position or -1, row or -1) each; for callers that hash
        many files before deciding (a distributed indexer)."""
        keys = np.array(list(digests), dtype=f"S{HASH_WIDTH}")
        at = np.minimum(np.searchsorted(self.hashes, keys), max(len(self.hashes) - 1, 0))
        found = (self.hashes[at] == keys) if len(self.hashes) else np.zeros(len(keys), bool)
        return np.where(found, self.shard[at], -1), np.where(found, self.row[at], -1)


def _fixed_width(column: pa.ChunkedArray) -> np.ndarray:
    """A string column of hex hashes as a numpy `S32` array (nulls and odd lengths as empty)."""
    lengths = columns.numbers(pc.binary_length(column), fill=-1)
    if column.null_count == 0 and len(column) and bool(np.all(lengths == HASH_WIDTH)):
        fixed = column.cast(pa.binary(HASH_WIDTH)).combine_chunks()
        return np.frombuffer(fixed.buffers()[1], dtype=f"S{HASH_WIDTH}", count=len(fixed),
                             offset=fixed.offset * HASH_WIDTH).copy()
    return np.array([h or "" for h in column.to_pylist()], dtype=f"S{HASH_WIDTH}")
