"""`llm2search export`: the live photos of an index as one Parquet file, metadata and vectors,
for DuckDB, pandas, Polars or any Arrow reader. This, not the shard files, is the interchange
format: it holds live rows only (no `deleted` column, no tombstones to apply) and its vectors
are a fixed-size list column any reader takes as it is."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputPathError, InvalidQueryError
from ..search.filters import SearchFilter
from ..store.manifest import read_manifest
from ..store.shard import META_SCHEMA, open_shard_vectors, read_shard_meta, read_tombstones

FORMATS = ("parquet",)
VECTOR_TYPES = {"float32": (np.float32, pa.float32()), "float16": (np.float16, pa.float16())}
CHUNK_ROWS = 32_768  # rows per row group: 160 MB of float32 1280-d vectors at most in memory
# Shard-internal columns the export leaves out: every exported row is live.
INTERNAL = ("deleted",)


@dataclass(frozen=True)
class ExportConfig:
    format: str = "parquet"
    vectors: str = "float32"  # or "float16": half the size, read as float by DuckDB too
    folder: str | None = None  # absolute folder: only photos in it or below


@dataclass(frozen=True)
class ExportReport:
    path: str
    rows: int
    dim: int
    vectors: str
    bytes: int


def export_schema(dim: int, vectors: str) -> pa.Schema:
    fields = [f for f in META_SCHEMA if f.name not in INTERNAL]
    return pa.schema(fields + [pa.field("vector", pa.list_(VECTOR_TYPES[vectors][1], dim))])


def export_index(index_dir: str | Path, out: str | Path, config: ExportConfig = ExportConfig()) -> ExportReport:
    """Write the live photos (under `config.folder` if set) of the index's committed version to
    `out`, atomically (a temporary file renamed into place)."""
    if config.format not in FORMATS:
        raise InvalidQueryError(f"unknown export format {config.format!r}; use one of {', '.join(FORMATS)}")
    if config.vectors not in VECTOR_TYPES:
        raise InvalidQueryError(f"vectors must be float32 or float16, got {config.vectors!r}")
    out = Path(out)
    if out.is_dir():
        raise InputPathError(f"{out} is a folder; give a file name such as {out / 'photos.parquet'}")
    if not out.parent.is_dir():
        raise InputPathError(f"{out.parent} does not exist; create it first")
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    dtype, _ = VECTOR_TYPES[config.vectors]
    schema = export_schema(manifest.dim, config.vectors).with_metadata({
        "llm2search": json.dumps({"model": manifest.model, "dim": manifest.dim, "metric": manifest.metric,
                                  "generation": manifest.generation, "vectors": config.vectors}),
    })
    selector = SearchFilter(folder=config.folder) if config.folder else None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for shard in manifest.shards:
                meta = read_shard_meta(index_dir, shard)
                live = np.ones(shard.count, dtype=bool)
                live[read_tombstones(index_dir, shard)] = False
                if selector is not None:
                    live &= selector.row_mask(meta)
                keep = np.flatnonzero(live)
                if not len(keep):
                    continue
                vectors = open_shard_vectors(index_dir, shard)
                for start in range(0, len(keep), CHUNK_ROWS):
                    part = keep[start:start + CHUNK_ROWS]
                    table = meta.take(pa.array(part)).drop_columns(list(INTERNAL))
                    flat = np.ascontiguousarray(np.take(vectors, part, axis=0), dtype=dtype).reshape(-1)
                    column = pa.FixedSizeListArray.from_arrays(pa.array(flat), manifest.dim)
                    writer.write_table(table.append_column("vector", column).cast(schema))
                    rows += len(part)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportReport(str(out), rows, manifest.dim, config.vectors, out.stat().st_size)
