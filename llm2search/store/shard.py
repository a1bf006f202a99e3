"""A shard: index.faiss + meta.parquet + vectors.npy, written whole under a temporary name,
fsynced, then renamed into place. Shards never change after publication; deletions are
tombstone files named by the manifest."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .columns import array as column_array
from .atomic import fsync_dir, fsync_file, write_atomic
from .manifest import SHARD_NAME, SHARDS, ShardInfo
from .ivf_writer import IvfPqIndexWriter, layout_known as ivf_layout_known
from .meta_map import META_MAP_FILE, MetaMapWriter, ShardMeta, random_access
from .vector_file import VectorReader, VectorSpool, VectorWriter
from .vector_index import FlatIndexWriter, build_shard_index, read_shard_index, write_shard_index

INDEX_FILE = "index.faiss"
META_FILE = "meta.parquet"
VECTORS_FILE = "vectors.npy"
META_BATCH_ROWS = 65_536  # metadata rows read per step of a merge

META_SCHEMA = pa.schema([
    ("path", pa.string()),  # absolute path (surrogate-escaped if the name is not UTF-8)
    ("size", pa.int64()),
    ("mtime_ns", pa.int64()),
    ("content_hash", pa.string()),  # blake2b-128 of the file bytes
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("format", pa.string()),
    ("exif_time", pa.int64()),  # capture time, epoch seconds; null when the file has none
    ("indexed_at", pa.int64()),  # epoch seconds
    ("deleted", pa.bool_()),  # false at write; deletions live in tombstone files
    ("path_bytes", pa.binary()),  # exact file name when it is not UTF-8 (see pathnames.py)
    # EXIF, added after format_version 1 was first written: shards without these columns read
    # them as nulls (read_shard_meta), so old indexes open and filter unchanged.
    ("camera_make", pa.string()),
    ("camera_model", pa.string()),
    ("lens", pa.string()),
    ("gps_lat", pa.float64()),  # degrees, north positive
    ("gps_lon", pa.float64()),  # degrees, east positive
    ("gps_alt", pa.float64()),  # metres above sea level
    # From a Parquet listing indexed with --ray (its optional `caption` and `id` columns); null
    # otherwise, and in shards written before (read_shard_meta fills them in).
    ("caption", pa.string()),
    ("item_id", pa.string()),
])


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def storable_ns(ns: int) -> int:
    """A modification time the index can store (int64 nanoseconds: years 1678-2262). Times
    outside are clamped, so the file is still indexed; a change between two such times is not
    seen (docs/reliability.md)."""
    return min(max(ns, INT64_MIN), INT64_MAX)


@dataclass
class ShardData:
    """What a shard is made of before it is written. `vectors` is one (n, dim) array of unit
    vectors, its rows as chunks in order (batches, written without first being copied into one
    array), or a VectorSpool holding them on disk (an indexer's gathered rows)."""

    vectors: np.ndarray | list[np.ndarray] | VectorSpool
    meta: pa.Table  # META_SCHEMA, one row per vector, same order

    def chunks(self) -> Iterable[np.ndarray]:
        """The rows in order, a chunk at a time (a spool is read back from its file)."""
        if isinstance(self.vectors, VectorSpool):
            return self.vectors.chunks()
        chunks = [self.vectors] if isinstance(self.vectors, np.ndarray) else list(self.vectors)
        if not chunks:
            raise ValueError("a shard's vectors need at least one chunk (an empty (0, dim) array for none)")
        return chunks

    @property
    def rows(self) -> int:
        if isinstance(self.vectors, VectorSpool):
            return self.vectors.rows
        return int(sum(len(c) for c in self.chunks()))

    @property
    def dim(self) -> int:
        if isinstance(self.vectors, VectorSpool):
            return self.vectors.dim
        return int(next(iter(self.chunks())).shape[1])


@dataclass(frozen=True)
class StagedShard:
    """A shard written by some process (a distributed run's worker) under a name of its own
    attempt. It is garbage, deleted by the next garbage collection, until a manifest commit
    names it (IndexWriter.commit with `staged`)."""

    info: ShardInfo
    trained: str | None  # the trained quantizer file its index copies (None: Flat)


def new_shard_name(seq: int) -> str:
    """`seq` orders shards; the random part makes every attempt's name its own, so two attempts
    at the same work (a retried task) never write into each other's files."""
    return f"{seq:06d}-{uuid.uuid4().hex[:8]}"


def stage_shard(index_dir: Path, seq: int, data: ShardData, trained_file: str | None) -> StagedShard:
    """Write a complete shard under a fresh per-attempt name, from any process that sees the
    index directory; `trained_file` is the manifest's trained quantizer (None for Flat)."""
    trained = _trained_index(Path(index_dir) / trained_file) if trained_file else None
    return StagedShard(write_shard(index_dir, new_shard_name(seq), data, trained), trained_file)


def check_staged(index_dir: Path, staged: StagedShard, trained_file: str | None) -> None:
    """Before a commit adopts a staged shard: it exists whole (every file of its recorded size)
    and was built with the index's current quantizer. ValueError otherwise."""
    info = staged.info
    if not SHARD_NAME.fullmatch(info.name):
        raise ValueError(f"staged shard name {info.name!r} is not a shard name")
    if staged.trained != trained_file:
        raise ValueError(f"staged shard {info.name} was built for quantizer {staged.trained!r}, the index "
                         f"uses {trained_file!r}")
    folder = shard_dir(index_dir, info.name)
    for name, size in info.sizes.items():
        try:
            actual = (folder / name).stat().st_size
        except OSError as e:
            raise ValueError(f"staged shard {info.name} lacks {name} ({e.strerror or e})") from e
        if actual != size:
            raise ValueError(f"staged shard {info.name}: {name} is {actual} bytes, {size} were written")


_trained_cache: dict[str, Any] = {}


def _trained_index(path: Path) -> Any:
    """One copy of a trained quantizer per process (content-named files never change)."""
    key = str(path)
    if key not in _trained_cache:
        from .vector_index import read_index

        _trained_cache[key] = read_index(path, mmap=False)
    return _trained_cache[key]


def write_shard(index_dir: Path, name: str, data: ShardData, trained: Any | None) -> ShardInfo:
    """Build the shard in `shards/.tmp-<name>`, fsync every file, rename to `shards/<name>`."""
    tmp = _fresh_tmp(index_dir, name)
    _write_vectors_and_index(tmp, data.chunks(), data.rows, data.dim, trained)
    meta = conform_meta(data.meta)
    pq.write_table(meta, tmp / META_FILE, compression="zstd")
    with MetaMapWriter(tmp / META_MAP_FILE, META_SCHEMA) as mapped:
        mapped.write(meta)
    return _publish(index_dir, tmp, name, data.rows)


def merge_shards(index_dir: Path, name: str, parts: list[tuple[ShardInfo, np.ndarray]], dim: int,
                 trained: Any | None) -> ShardInfo:
    """One new shard holding rows `keep` (sorted) of each (shard, keep) part, in order. It is
    streamed: vectors are read and written a chunk at a time and added to the new index as
    they pass (store/vector_file.py), metadata a Parquet batch at a time, so the process holds
    one chunk and the new index's codes, never the shards' vectors."""
    tmp = _fresh_tmp(index_dir, name)
    total = int(sum(len(keep) for _, keep in parts))

    def chunks() -> Iterator[np.ndarray]:
        for shard, keep in parts:
            with VectorReader(shard_dir(index_dir, shard.name) / VECTORS_FILE) as reader:
                yield from reader.chunks(keep)

    _write_vectors_and_index(tmp, chunks(), total, dim, trained)
    with (pq.ParquetWriter(tmp / META_FILE, META_SCHEMA, compression="zstd") as writer,
          MetaMapWriter(tmp / META_MAP_FILE, META_SCHEMA) as mapped):
        for shard, keep in parts:
            for table in _meta_batches(index_dir, shard, keep):
                writer.write_table(table)
                mapped.write(table)
    return _publish(index_dir, tmp, name, total)


def _write_vectors_and_index(tmp: Path, chunks: Iterable[np.ndarray], rows: int, dim: int, trained: Any | None) -> None:
    """vectors.npy and index.faiss of a shard in `tmp`, from its rows' chunks in order: each
    chunk is written as float16 and added to the index as it passes (the index is built from
    the stored float16 values, so re-rank and index agree exactly); one chunk is held at a time,
    and an IVF-PQ index's codes (see _write_index)."""
    out = VectorWriter(tmp / VECTORS_FILE, rows, dim)

    def stored() -> Iterator[np.ndarray]:
        for chunk in chunks:
            chunk16 = np.ascontiguousarray(chunk, dtype=np.float16)
            out.write(chunk16)
            yield chunk16

    try:
        _write_index(tmp / INDEX_FILE, stored(), rows, dim, trained)
    except BaseException:
        out.abort()
        raise
    out.close()


def _write_index(path: Path, chunks: Iterable[np.ndarray], rows: int, dim: int, trained: Any | None) -> None:
    """A shard's index.faiss from its rows' chunks in order, written as they pass: Flat by
    FlatIndexWriter (never the shard's float32 copy in memory), IVF-PQ by IvfPqIndexWriter
    (codes to a scratch file, then packed list by list; without the shared centroids). Where
    this faiss's layout differs, faiss builds the IVF-PQ index in memory and writes it."""
    if trained is not None and not ivf_layout_known(trained, path.parent):
        write_shard_index(build_shard_index(chunks, trained, dim, rows), path)
        return
    writer: FlatIndexWriter | IvfPqIndexWriter
    writer = FlatIndexWriter(path, rows, dim) if trained is None else IvfPqIndexWriter(path, rows, trained, path.parent)
    try:
        for chunk in chunks:
            writer.write(chunk)
        writer.close()
    except BaseException:
        writer.abort()
        raise


def _meta_batches(index_dir: Path, shard: ShardInfo, keep: np.ndarray | None = None) -> Iterator[pa.Table]:
    """The shard's metadata rows (all, or the sorted positions `keep`) as META_SCHEMA tables
    of at most META_BATCH_ROWS rows, read a Parquet batch at a time."""
    with pq.ParquetFile(shard_dir(index_dir, shard.name) / META_FILE) as f:
        start = 0
        for batch in f.iter_batches(batch_size=META_BATCH_ROWS):
            table = pa.Table.from_batches([batch])
            if keep is not None:
                lo, hi = np.searchsorted(keep, [start, start + batch.num_rows])
                table = table.take(column_array(keep[lo:hi] - start, pa.int64())) if hi > lo else None
            start += batch.num_rows
            if table is not None:
                yield conform_meta(table)


def reindex_shard(index_dir: Path, old: ShardInfo, new_name: str, trained: Any | None) -> ShardInfo:
    """Same rows under a new name with an index built from the stored vectors (after training a
    new quantizer). Metadata and vectors are hard-linked, so nothing is re-embedded or copied;
    the vectors are read a chunk at a time (store/vector_file.py). meta.arrow is written anew
    from meta.parquet (shards of older versions gain one; a damaged one is replaced)."""
    src = shard_dir(index_dir, old.name)
    shards = Path(index_dir) / SHARDS
    tmp = _fresh_tmp(index_dir, new_name)
    for f in (META_FILE, VECTORS_FILE):
        _link_or_copy(src / f, tmp / f)
    with VectorReader(src / VECTORS_FILE) as reader:
        _write_index(tmp / INDEX_FILE, reader.chunks(), reader.rows, reader.dim, trained)
    with MetaMapWriter(tmp / META_MAP_FILE, META_SCHEMA) as mapped:
        for table in _meta_batches(index_dir, old):
            mapped.write(table)
    files = dict(old.files)
    for f in (INDEX_FILE, META_MAP_FILE):
        fsync_file(tmp / f)
        files[f] = sha256_file(tmp / f)
    sizes = {f: (tmp / f).stat().st_size for f in files}
    if old.tombstones:
        _link_or_copy(src / old.tombstones, tmp / old.tombstones)
        sizes[old.tombstones] = (tmp / old.tombstones).stat().st_size
    fsync_dir(tmp)
    os.replace(tmp, shards / new_name)
    fsync_dir(shards)
    return replace(old, name=new_name, files=files, sizes=sizes)


def _fresh_tmp(index_dir: Path, name: str) -> Path:
    shards = Path(index_dir) / SHARDS
    shards.mkdir(parents=True, exist_ok=True)
    tmp = shards / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _publish(index_dir: Path, tmp: Path, name: str, count: int) -> ShardInfo:
    """fsync the shard's files, record their sha256 and sizes, rename it into place."""
    shards = Path(index_dir) / SHARDS
    files, sizes = {}, {}
    for f in (INDEX_FILE, META_FILE, VECTORS_FILE, META_MAP_FILE):
        fsync_file(tmp / f)
        files[f] = sha256_file(tmp / f)
        sizes[f] = (tmp / f).stat().st_size
    fsync_dir(tmp)
    os.replace(tmp, shards / name)
    fsync_dir(shards)
    return ShardInfo(name=name, count=count, files=files, sizes=sizes)


def write_tombstones(index_dir: Path, shard: ShardInfo, rows: np.ndarray) -> ShardInfo:
    """A new tombstone file for `shard` holding all deleted rows (old and new); copy-on-write."""
    all_rows = np.union1d(read_tombstones(index_dir, shard), rows.astype(np.int64))
    digest = hashlib.sha256(all_rows.tobytes()).hexdigest()[:12]
    name = f"tombstones-{digest}.npy"
    path = shard_dir(index_dir, shard.name) / name
    if not path.exists():
        write_atomic(path, lambda tmp: _save_npy(tmp, all_rows))
    sizes = {f: n for f, n in shard.sizes.items() if f in shard.files}
    sizes[name] = path.stat().st_size
    return replace(shard, tombstones=name, deleted=int(len(all_rows)), sizes=sizes,
                   tombstones_sha256=sha256_file(path))


def read_tombstones(index_dir: Path, shard: ShardInfo) -> np.ndarray:
    """Deleted row ids of `shard`; ValueError when the file does not hold them."""
    if not shard.tombstones:
        return np.empty(0, dtype=np.int64)
    try:
        rows = np.load(shard_dir(index_dir, shard.name) / shard.tombstones, allow_pickle=False)
    except EOFError as e:  # an empty file (click would turn EOFError into "Aborted!")
        raise ValueError(f"tombstones of shard {shard.name} are empty") from e
    if rows.ndim != 1 or rows.dtype.kind not in "iu" or (len(rows) and (rows.min() < 0 or rows.max() >= shard.count)):
        raise ValueError(f"tombstones of shard {shard.name} are not row numbers of the shard")
    return rows.astype(np.int64, copy=False)


def shard_dir(index_dir: Path, name: str) -> Path:
    return Path(index_dir) / SHARDS / name


def open_shard_index(index_dir: Path, shard: ShardInfo, quantizer: Any | None = None) -> Any:
    """The shard's faiss index; IVF-PQ shards share `quantizer`, the trained file's centroids."""
    return read_shard_index(shard_dir(index_dir, shard.name) / INDEX_FILE, quantizer)


def open_shard_vectors(index_dir: Path, shard: ShardInfo) -> np.ndarray:
    """The shard's float16 vectors, memory-mapped for random rows (the exact re-rank)."""
    vectors = np.load(shard_dir(index_dir, shard.name) / VECTORS_FILE, mmap_mode="r")
    mapped = getattr(vectors, "_mmap", None)
    if mapped is not None:
        random_access(mapped)
    return vectors


def open_shard_meta(index_dir: Path, shard: ShardInfo) -> ShardMeta:
    """The shard's metadata for search: meta.arrow memory-mapped when the shard has one, else
    meta.parquet read into memory (shards written before meta.arrow)."""
    if META_MAP_FILE in shard.files:
        return ShardMeta.mapped(shard_dir(index_dir, shard.name) / META_MAP_FILE, META_SCHEMA)
    return ShardMeta.in_memory(read_shard_meta(index_dir, shard))


def read_shard_meta(index_dir: Path, shard: ShardInfo, columns: list[str] | None = None) -> pa.Table:
    """The shard's metadata, only `columns` (default: all of META_SCHEMA) read from disk. A
    column the shard's file predates comes back as nulls of its type."""
    wanted = list(columns) if columns is not None else META_SCHEMA.names
    # ParquetFile, not pq.read_table: the dataset reader imports pandas (see columns.py).
    with pq.ParquetFile(shard_dir(index_dir, shard.name) / META_FILE) as f:
        present = set(f.schema_arrow.names)
        table = f.read(columns=[c for c in wanted if c in present])
    return _with_columns(table, wanted)


def conform_meta(table: pa.Table) -> pa.Table:
    """`table` as META_SCHEMA: missing columns as nulls, in order, cast to their types."""
    return _with_columns(table, META_SCHEMA.names).cast(META_SCHEMA)


def _with_columns(table: pa.Table, names: list[str]) -> pa.Table:
    n = table.num_rows
    columns = []
    for name in names:
        if name in table.column_names:
            columns.append(table.column(name))
        else:
            columns.append(pa.nulls(n, META_SCHEMA.field(name).type if name in META_SCHEMA.names else pa.null()))
    return pa.table(columns, names=names)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, arr)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
