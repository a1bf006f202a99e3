"""What runs on the cluster. Decode tasks read their chunk of the plan and run the project's
decoder (a bad file becomes a row with its reason, never a task failure Ray would retry); embed
actors load the model once, from its path, and embed batches; write tasks build a unit's shard
with the store's code under a per-attempt name. Rows are Arrow tables:

    file (int64, position in the plan), unit, the shard metadata columns (store/shard.META_SCHEMA),
    old_shard/old_row (the row it replaces), error, pixels (uint8 crop, until embedded),
    vector (float16 bytes: embedded, or reused from a stored row with the same content hash)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..indexer.decode import DecodeOptions, decode_file
from ..indexer.rows import meta_row
from ..indexer.scan import FileEntry
from ..models.spec import ModelSpec
from ..store import columns
from ..store.jobs import read_group
from ..store.manifest import ShardInfo
from ..store.pathnames import from_stored
from ..store.shard import META_SCHEMA, ShardData, StagedShard, open_shard_vectors, stage_shard
from .progress import report

PIXELS = "pixels"
VECTOR = "vector"


class Reuse:
    """Stored rows by content hash (indexer/state.VectorLookup's arrays) with the shards they are
    in, so a decode task can copy the vector of a renamed or duplicated file instead of sending
    it to the model. Shared through the object store: one copy per node."""

    def __init__(self, index_dir: str, dim: int, hashes: np.ndarray, shard: np.ndarray, row: np.ndarray,
                 shards: list[ShardInfo]):
        self.index_dir, self.dim = index_dir, dim
        self.hashes, self.shard, self.row, self.shards = hashes, shard, row, shards

    def find(self, digest: str | None) -> tuple[ShardInfo, int] | None:
        if not digest or not len(self.hashes):
            return None
        key = np.array(digest, dtype=self.hashes.dtype)
        at = int(np.searchsorted(self.hashes, key))
        if at < len(self.hashes) and self.hashes[at] == key:
            return self.shards[int(self.shard[at])], int(self.row[at])
        return None


_intact: dict[str, bool] = {}  # per worker process: shards whose checksums were verified


def _reused_vector(reuse: Reuse | None, digest: str | None) -> np.ndarray | None:
    found = reuse.find(digest) if reuse is not None else None
    if found is None:
        return None
    shard, row = found
    if shard.name not in _intact:  # never copy a vector out of a damaged shard (as on one host)
        from ..errors import ShardCorruptError
        from ..store.verify import require_intact

        try:
            require_intact(Path(reuse.index_dir), shard, reuse.dim)
            _intact[shard.name] = True
        except ShardCorruptError:
            _intact[shard.name] = False
    if not _intact[shard.name]:
        return None
    return np.asarray(open_shard_vectors(Path(reuse.index_dir), shard)[row], dtype=np.float16)


def decode_groups(batch: dict[str, np.ndarray], units_path: str, options: DecodeOptions, dim: int,
                  reuse: Any, tally: str) -> pa.Table:
    """Decode the files of the plan's row groups named in `batch["data"]`."""
    import ray

    reuse_table = ray.get(reuse) if isinstance(reuse, ray.ObjectRef) else reuse
    parts = [_decode_group(Path(units_path), int(g), options, dim, reuse_table) for g in batch["data"]]
    out = pa.concat_tables(parts)
    report(tally, "decoded", out.num_rows)
    return out


def _decode_group(units_path: Path, group: int, options: DecodeOptions, dim: int, reuse: Reuse | None) -> pa.Table:
    plan = read_group(units_path, group)
    first = _first_row(units_path, group)
    side = (options.preprocess.image_size ** 2) * 3
    rows, errors, pixels, vectors = [], [], [], []
    cols = {c: plan.column(c).to_pylist() for c in ("path", "path_bytes", "size", "mtime_ns", "caption", "item_id")}
    for i in range(plan.num_rows):
        entry = FileEntry(from_stored(cols["path"][i], cols["path_bytes"][i]), cols["size"][i], cols["mtime_ns"][i])
        item = decode_file(entry, options)
        row = meta_row(item)
        row["caption"], row["item_id"] = cols["caption"][i], cols["item_id"][i]
        rows.append(row)
        errors.append(item.error)
        vector = _reused_vector(reuse, item.content_hash) if item.error is None else None
        vectors.append(vector)
        pixels.append(item.pixels if item.error is None and vector is None else None)
    n = plan.num_rows
    meta = pa.Table.from_pylist(rows, schema=META_SCHEMA)
    table = pa.Table.from_arrays(
        [columns.array(np.arange(first, first + n, dtype=np.int64), pa.int64()), plan.column("unit"),
         *meta.columns, plan.column("old_shard"), plan.column("old_row"), columns.strings(errors),
         columns.array(np.array([v is not None for v in vectors], dtype=bool), pa.bool_()),
         _fixed(pixels, side, np.uint8), _fixed(vectors, dim * 2, np.float16)],
        names=["file", "unit", *META_SCHEMA.names, "old_shard", "old_row", "error",
               "reused", PIXELS, VECTOR])
    return table


_row_offsets: dict[str, np.ndarray] = {}


def _first_row(units_path: Path, group: int) -> int:
    """Position in the plan of the first file of a row group (its files' ids)."""
    key = str(units_path)
    if key not in _row_offsets:
        import pyarrow.parquet as pq

        with pq.ParquetFile(units_path) as f:
            sizes = [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)]
        _row_offsets[key] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return int(_row_offsets[key][group])


def _fixed(values: list[np.ndarray | None], width: int, dtype: Any) -> pa.Array:
    """A fixed-size binary column (null where None) from equal-sized arrays."""
    n = len(values)
    mask = np.array([v is None for v in values], dtype=bool)
    data = np.zeros((n, width), dtype=np.uint8)
    for i, v in enumerate(values):
        if v is not None:
            data[i] = np.ascontiguousarray(v, dtype=dtype).view(np.uint8).reshape(-1)
    validity = pa.py_buffer(np.packbits(~mask, bitorder="little")) if mask.any() else None
    return pa.Array.from_buffers(pa.binary(width), n, [validity, pa.py_buffer(data)])


def fixed_values(column: pa.ChunkedArray | pa.Array, width: int, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """(rows as a numpy array of `dtype`, valid mask) of a fixed-size binary column."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    raw = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=n * width, offset=arr.offset * width) if n else \
        np.zeros(0, np.uint8)
    return raw.reshape(n, width).view(dtype), columns.valid(arr)


class EmbedActor:
    """One model per actor, loaded from its path when the actor starts (never shipped as weights)."""

    def __init__(self, spec: ModelSpec, device: str, threads: int, tally: str):
        import ray

        if device == "cpu":
            import torch

            torch.set_num_threads(max(1, threads))
        from ..models.embedder import Embedder

        self.spec, self.tally = spec, tally
        self.embedder = Embedder(spec, device)
        self.embedder.image_encoder  # load now, once, not on the first batch
        self.side = spec.preprocess.image_size
        report(tally, "actors", 1, actor=ray.get_runtime_context().current_actor)

    def __call__(self, table: pa.Table) -> pa.Table:
        side, dim = self.side, self.spec.dim
        pixels, todo = fixed_values(table.column(PIXELS), side * side * 3, np.uint8)
        vectors, have = fixed_values(table.column(VECTOR), dim * 2, np.float16)
        vectors = vectors.copy()
        if todo.any():
            batch = pixels[todo].reshape(-1, side, side, 3)
            vectors[todo] = self.embedder.embed_pixels(batch).astype(np.float16)
        report(self.tally, "embedded", table.num_rows)  # every row through, embedded or not
        done = have | todo
        out = table.drop_columns([PIXELS, VECTOR])
        return out.append_column(VECTOR, _fixed([vectors[i] if done[i] else None for i in range(len(done))],
                                                dim * 2, np.float16))


def write_unit(index_dir: str, seq: int, vectors: np.ndarray, meta: pa.Table,
               trained_file: str | None) -> StagedShard:
    """A unit's shard, written whole under a fresh name (a retried attempt writes its own)."""
    return stage_shard(Path(index_dir), seq, ShardData(vectors, meta), trained_file)


def worker_env() -> dict[str, str]:
    """Environment every task and actor of a run gets (tests set the same in their cluster)."""
    return {k: v for k, v in os.environ.items() if k in ("HF_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}
