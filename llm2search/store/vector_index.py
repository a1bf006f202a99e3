"""FAISS index choice and training: exact Flat for small collections, IVF-PQ fast-scan past a
threshold, with one trained quantizer shared by every shard so shard results are comparable."""

from __future__ import annotations

import contextlib
import functools
import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

# Chosen by bench/search.py (numbers and reasoning in bench/README.md, "Vector search"): at 500k x
# 1280 on 2 cores IVF2048,PQ160x4fs, nprobe 32, and an exact re-rank of the 15 x k best PQ
# estimates gave recall@10 0.962 at 20x Flat's batch q/s, 114 B/vector in RAM. Recall is flat in
# nprobe (8-64: within 0.007 at every depth); the re-rank depth decides it: x10 0.941, x15 0.962,
# x20 0.971. PQ256x4fs (128 B codes) ranks better but is over the ~120 B/vector RAM budget.
IVF_THRESHOLD = 100_000  # live vectors at which an index switches from Flat to IVF-PQ
DIMS_PER_SUBQUANTIZER = 8  # PQ160 for 1280-d: 80 bytes per vector with 4-bit codes
TRAIN_POINTS_PER_LIST = 64  # k-means sample: faiss wants >= 39 per centroid
MIN_TRAIN_POINTS = 64  # 4-bit PQ needs >= 16 points per sub-quantizer; below this stay Flat
RETRAIN_GROWTH = 4.0  # retrain once the collection is this many times the training sample's base
# Rows per IVF-PQ shard that training and compaction merge shards up to. Each shard pays ~nlist x
# 15.5 x code size bytes of fast-scan block padding (lists are stored in blocks of 32 codes) plus
# 8 B/row of ids: 2.5 MB at 2048 lists; bench/search.py measured 28 B/vector of padding and
# headers for 5 shards of 100k, 5.3 for one of 500k. 500k rows is 1.2 GB of float16 to rewrite.
IVF_SHARD_ROWS = 500_000
# ... and at least this many rows per list, so the padding stays ~15.5 x 80 / 256 = 4.8 B/vector
# whatever nlist is (DESIGN §7): 2.1M rows at 8,192 lists, 16.8M at 65,536.
SHARD_ROWS_PER_LIST = 256
# Rows converted to float32 per faiss add (10 MB at 1280-d) and per k-means step. faiss's add
# and our k-means each hold about 3 copies of a chunk (float32, residuals or the sorted copy, and
# faiss's inner-product block): at 1M rows and 2,048 lists, 16,384-row chunks peaked 97 MiB (add)
# and 258 MiB (one k-means iteration) over the process, 4,096-row chunks 26 and 108 MiB, in the
# same time or less (1 thread: 12.7 vs 13.7 s and 13.2 vs 14.3 s). 2,048 rows: 3 k-means iterations
# on a 131,072-row sample peaked 82 MiB instead of 105, in the same 13-14 s (bench/README.md,
# "At 1M files, streamed"). Shard indexes are now written by ivf_writer.py, which encodes 2,048
# rows per step too; faiss's add here serves the fallback and callers' own indexes.
ADD_CHUNK_ROWS = 2_048
KMEANS_CHUNK_ROWS = 2_048


@dataclass(frozen=True)
class IndexConfig:
    """How shards are indexed and searched; the defaults are what bench/search.py chose."""

    ivf_threshold: int = IVF_THRESHOLD
    nlist: int | None = None  # None: chosen from N (see choose_nlist)
    nprobe: int = 32  # lists probed (one coarse search shared by all shards)
    rerank_factor: int = 15  # IVF-PQ: the rerank_factor x k best PQ estimates over all shards
    # are re-ranked exactly on the float16 vectors (filtered searches: that many per shard)
    retrain_growth: float = RETRAIN_GROWTH
    ivf_shard_rows: int | None = None  # IVF-PQ shards are merged up to this many rows (None:
    # shard_rows_for(nlist): IVF_SHARD_ROWS, or SHARD_ROWS_PER_LIST x nlist when that is more)

    def shard_rows(self, nlist: int) -> int:
        """Rows an IVF-PQ shard with `nlist` lists is merged up to."""
        return self.ivf_shard_rows or shard_rows_for(nlist)


def choose_nlist(n: int) -> int:
    """~4 sqrt(N) lists rounded down to a power of two: 2048 at 500k, 256 floor, 65536 cap."""
    target = 4 * math.sqrt(max(n, 1))
    return int(min(65536, max(256, 2 ** math.floor(math.log2(target)))))


def shard_rows_for(nlist: int) -> int:
    return max(IVF_SHARD_ROWS, SHARD_ROWS_PER_LIST * nlist)


def factory_nlist(factory: str) -> int:
    """nlist of an `IVF{nlist},...` factory string (0 for anything else)."""
    head = factory.split(",", 1)[0]
    digits = head[3:].split("_", 1)[0] if head.startswith("IVF") else ""
    return int(digits) if digits.isdigit() else 0


def index_nlist(index: Any) -> int:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    return int(ivf.nlist) if ivf is not None else 0


def ivfpq_factory(dim: int, nlist: int) -> str:
    m = max(1, dim // DIMS_PER_SUBQUANTIZER)
    while dim % m:
        m -= 1
    return f"IVF{nlist},PQ{m}x4fs"


def new_flat(dim: int) -> Any:
    import faiss

    return faiss.IndexFlatIP(dim)


def train_ivfpq(sample: np.ndarray | Path, nlist: int, seed: int = 1234) -> tuple[Any, str]:
    """Train the shared (empty) IVF-PQ on a sample of unit vectors; returns (index, factory).
    `sample` is an array, or a float16 .npy file that the coarse k-means streams from disk on
    every iteration (store/kmeans.py), so training holds the centroids and one chunk, not the
    sample. The PQ codebooks are trained on the few thousand points faiss uses for them."""
    import faiss

    from .kmeans import spherical_kmeans
    from .vector_file import VectorReader

    if isinstance(sample, np.ndarray):
        n, dim = sample.shape
        chunks: Any = lambda: (sample[i:i + KMEANS_CHUNK_ROWS] for i in range(0, n, KMEANS_CHUNK_ROWS))  # noqa: E731
        take: Any = lambda rows: np.asarray(sample[rows])  # noqa: E731
    else:
        with VectorReader(sample) as reader:
            n, dim = reader.rows, reader.dim

        def chunks() -> Any:
            with VectorReader(sample) as r:
                yield from r.chunks(chunk_rows=KMEANS_CHUNK_ROWS)

        def take(rows: np.ndarray) -> np.ndarray:
            with VectorReader(sample) as r:
                return r.take(rows)

    nlist = min(nlist, max(1, n // 39))
    factory = ivfpq_factory(dim, nlist)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    rng = np.random.default_rng(seed)
    init = take(np.sort(rng.choice(n, nlist, replace=False)))
    centroids = spherical_kmeans(chunks, init, seed=seed)
    ivf.quantizer.add(centroids)  # a trained quantizer with nlist entries: faiss keeps it
    pq_rows = np.sort(rng.choice(n, min(n, max(ivf.train_encoder_num_vectors(), 1)), replace=False))
    index.train(np.ascontiguousarray(take(pq_rows), dtype=np.float32))
    return index, factory


def build_shard_index(vectors: np.ndarray | Iterable[np.ndarray], trained: Any | None,
                      dim: int | None = None, rows: int | None = None) -> Any:
    """A shard's index over `vectors` (ids = row numbers): a copy of the trained IVF-PQ, or Flat.
    `vectors` is an array (float16 or float32) or an iterable of row chunks in order (a merge
    streaming from disk, with `dim`, and `rows` where the caller knows the total); rows go to
    faiss as float32 a chunk at a time. A Flat index of known size is allocated once and filled
    in place (faiss's add grows its buffer by doubling: 200 MiB of peak for 100 MiB of rows)."""
    import faiss

    chunks: Iterable[np.ndarray] = vectors
    if isinstance(vectors, np.ndarray):
        dim, rows, array = vectors.shape[1], len(vectors), vectors
        chunks = (array[i:i + ADD_CHUNK_ROWS] for i in range(0, len(array), ADD_CHUNK_ROWS))
    if trained is None and rows is not None:
        return _filled_flat(chunks, int(dim), rows)  # type: ignore[arg-type]
    index = faiss.clone_index(trained) if trained is not None else new_flat(int(dim))  # type: ignore[arg-type]
    for chunk in chunks:
        for start in range(0, len(chunk), ADD_CHUNK_ROWS):
            index.add(np.ascontiguousarray(chunk[start:start + ADD_CHUNK_ROWS], dtype=np.float32))
    return index


def _filled_flat(chunks: Iterable[np.ndarray], dim: int, rows: int) -> Any:
    """An IndexFlatIP of `rows` vectors: its float32 buffer sized once, the chunks copied in."""
    index = _sized_flat(dim, rows)
    stored = _flat_rows(index, rows, dim)
    at = 0
    for chunk in chunks:
        if at + len(chunk) > rows:
            raise ValueError(f"a Flat index of {rows} rows was given more")
        if len(chunk):
            stored[at:at + len(chunk)] = chunk  # cast in place, no float32 copy
        at += len(chunk)
    if at != rows:
        raise ValueError(f"a Flat index of {rows} rows was given {at}")
    index.ntotal = rows
    return index


def _sized_flat(dim: int, rows: int) -> Any:
    """An empty IndexFlatIP whose float32 buffer already holds `rows` rows (ntotal 0 until set)."""
    index = new_flat(dim)
    index.codes.resize(rows * dim * 4)
    return index


def _flat_rows(index: Any, rows: int, dim: int) -> np.ndarray:
    """A (rows, dim) float32 view of a sized Flat index's buffer."""
    import faiss

    if not rows:
        return np.zeros((0, dim), dtype=np.float32)
    return faiss.rev_swig_ptr(index.codes.data(), rows * dim * 4).view(np.float32).reshape(rows, dim)


class FlatIndexWriter:
    """index.faiss of a Flat (inner-product) shard, written a chunk at a time in faiss's own
    layout (a header, then the rows as float32), so a commit or a merge never holds the shard's
    float32 copy (5 KB a row at 1280-d: 512 MB for a 100k-row shard). Where this faiss lays the
    file out otherwise (checked once per process against faiss.serialize_index), the rows are
    gathered in one preallocated index and written by faiss."""

    def __init__(self, path: Path, rows: int, dim: int):
        self.path, self.rows, self.dim = Path(path), rows, dim
        self.written = 0
        self._fh = None
        self._index = None
        self._stored: np.ndarray | None = None
        if _flat_layout_known():
            self._fh = open(self.path, "wb")
            self._fh.write(_flat_header(dim, rows))
        else:
            self._index = _sized_flat(dim, rows)
            self._stored = _flat_rows(self._index, rows, dim)

    def write(self, chunk: np.ndarray) -> None:
        if chunk.ndim != 2 or chunk.shape[1] != self.dim or self.written + len(chunk) > self.rows:
            raise ValueError(f"chunk {chunk.shape} does not fit {self.path} ({self.rows}, {self.dim})")
        if self._fh is not None:
            for start in range(0, len(chunk), ADD_CHUNK_ROWS):
                part = np.ascontiguousarray(chunk[start:start + ADD_CHUNK_ROWS], dtype="<f4")
                self._fh.write(memoryview(part).cast("B"))
        elif len(chunk):
            self._stored[self.written:self.written + len(chunk)] = chunk  # type: ignore[index]
        self.written += len(chunk)

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()

    def close(self) -> None:
        """The file must hold exactly `rows` rows (the caller fsyncs the shard's files)."""
        try:
            if self.written != self.rows:
                raise ValueError(f"{self.path}: {self.written} of {self.rows} rows written")
            if self._index is not None:
                self._index.ntotal = self.rows
                write_index(self._index, self.path)
        finally:
            self.abort()


def _flat_header(dim: int, rows: int) -> bytes:
    """faiss's IndexFlatIP header for `rows` x `dim`: "IxFI", d (int32), ntotal (int64), two
    dummies (int64), is_trained (uint8), metric (int32), then the code vector's length in
    floats (uint64) that the rows follow."""
    import faiss

    empty = faiss.serialize_index(faiss.IndexFlatIP(dim)).tobytes()
    return empty[:8] + struct.pack("<q", rows) + empty[16:-8] + struct.pack("<Q", rows * dim)


@functools.lru_cache(maxsize=1)
def _flat_layout_known() -> bool:
    import faiss

    try:
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        index = faiss.IndexFlatIP(3)
        index.add(x)
        return sys.byteorder == "little" and bytes(faiss.serialize_index(index)) == _flat_header(3, 2) + x.tobytes()
    except Exception:  # noqa: BLE001 - any surprise means: let faiss write the file
        return False


def write_index(index: Any, path: Path) -> None:
    """Write a whole index (the trained template keeps its coarse centroids here)."""
    import faiss

    faiss.write_index(index, str(path))


def write_shard_index(index: Any, path: Path) -> None:
    """Write a shard's index without its coarse centroids: every IVF-PQ shard is a copy of the
    trained template, so the centroids (nlist x dim floats: 10 MB at 2048 x 1280) are stored and
    loaded once, from the trained file, instead of once per shard. Flat indexes are written whole."""
    import faiss

    with _without_centroids(index):
        faiss.write_index(index, str(path))


def shard_index_bytes(index: Any) -> bytes:
    """What write_shard_index would write, in memory (for small indexes: layout checks)."""
    import faiss

    with _without_centroids(index):
        return bytes(faiss.serialize_index(index))


@contextlib.contextmanager
def _without_centroids(index: Any) -> Iterator[None]:
    """An IVF index's coarse quantizer swapped for an empty one while the block runs."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        yield
        return
    centroids, owned = ivf.quantizer, ivf.own_fields
    placeholder = faiss.IndexFlat(ivf.d, ivf.metric_type)  # empty: a few bytes on disk
    ivf.own_fields = False  # the placeholder belongs to Python; never let faiss free it
    ivf.quantizer = placeholder
    try:
        yield
    finally:
        ivf.quantizer = centroids
        ivf.own_fields = owned


def read_index(path: Path, mmap: bool = True) -> Any:
    import faiss

    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)


def coarse_quantizer(trained: Any) -> Any:
    """The coarse quantizer (centroids) of a trained IVF template."""
    import faiss

    return faiss.extract_index_ivf(trained).quantizer


def read_shard_index(path: Path, quantizer: Any | None) -> Any:
    """A shard's index, memory-mapped where faiss can. An IVF shard written without centroids
    (see write_shard_index) gets `quantizer`, which the caller keeps alive as long as the
    index; shards that carry their own centroids (written before this layout) keep them."""
    import faiss

    index = read_index(path, mmap=True)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.quantizer.ntotal == 0:
        if quantizer is None:
            raise ValueError(f"{path} needs the trained file's coarse quantizer to be searched")
        if quantizer.ntotal != ivf.nlist or quantizer.d != ivf.d:
            raise ValueError(f"{path} has {ivf.nlist} lists; the trained quantizer has {quantizer.ntotal}")
        # The empty placeholder faiss read (an IndexFlat header, ~100 bytes) is left unfreed:
        # handing it to Python's garbage collector corrupts SWIG's type table, and opening an
        # index 3,000 times this way did not move the process's RSS.
        ivf.own_fields = False
        ivf.quantizer = quantizer
    return index


def set_nprobe(index: Any, nprobe: int) -> None:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(nprobe, ivf.nlist)
