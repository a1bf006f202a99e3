"""A shard's float16 vectors (vectors.npy) read and written a chunk at a time with plain file
I/O. Merges, compaction, re-indexing and training go through here, not through memory maps:
every page a process reads or writes through a map counts in its RSS until the map is closed
(a 512 MB file read through np.load(mmap_mode="r") adds 512 MB of RssFile; measured), so a
mapped merge of a 5M-vector index would show 12.8 GB. Reads here land in the page cache, which
the kernel reclaims, and the process holds one chunk. The searcher keeps its memory maps: it
reads a few rows per query, and its mapped pages are accounted separately (bench/scale.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

CHUNK_ROWS = 4_096  # rows per read or write: 10 MB of float16 at 1280-d (a 16,384-row chunk
# and its float32 copy for faiss held 120 MB over a merge or a re-index, 4,096 rows 30 MB, at the
# same speed)
# Below this fraction of a shard's rows, rows are read one by one (pread), else in ranges.
SPARSE_FRACTION = 1 / 16


class VectorReader:
    """Rows of one .npy file of float16 (n, dim) vectors."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh = open(self.path, "rb")
        try:
            version = np.lib.format.read_magic(self._fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(self._fh)
        except Exception:
            self._fh.close()
            raise
        if fortran or len(shape) != 2:
            self._fh.close()
            raise ValueError(f"{self.path} is not a C-ordered (rows, dim) array")
        self.rows, self.dim = int(shape[0]), int(shape[1])
        self.dtype = np.dtype(dtype)
        self._offset = self._fh.tell()
        self._row_bytes = self.dim * self.dtype.itemsize

    def __enter__(self) -> "VectorReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._fh.close()

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a new array."""
        stop = min(stop, self.rows)
        out = np.empty((max(0, stop - start), self.dim), dtype=self.dtype)
        if len(out):
            self._fh.seek(self._offset + start * self._row_bytes)
            view = memoryview(out).cast("B")
            got = self._fh.readinto(view)
            if got != len(view):
                raise ValueError(f"{self.path} is truncated: rows {start}-{stop} are not all there")
        return out

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at sorted positions `rows`: one pread per row when they are sparse, else the
        ranges that hold them, a chunk at a time."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=self.dtype)
        if len(rows) == 0:
            return out
        if len(rows) < SPARSE_FRACTION * self.rows:
            fd = self._fh.fileno()
            for i, r in enumerate(rows.tolist()):
                data = os.pread(fd, self._row_bytes, self._offset + r * self._row_bytes)
                if len(data) != self._row_bytes:
                    raise ValueError(f"{self.path} is truncated at row {r}")
                out[i] = np.frombuffer(data, dtype=self.dtype)
            return out
        at = 0
        for start in range(0, self.rows, CHUNK_ROWS):
            lo, hi = np.searchsorted(rows, [start, start + CHUNK_ROWS])
            if hi > lo:
                chunk = self.read(start, start + CHUNK_ROWS)
                out[at:at + hi - lo] = chunk[rows[lo:hi] - start]
                at += hi - lo
        return out

    def chunks(self, keep: np.ndarray | None = None, chunk_rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        """The rows (all, or the sorted positions `keep`) in order, at most `chunk_rows` at a time."""
        for start in range(0, self.rows, chunk_rows):
            chunk = self.read(start, start + chunk_rows)
            if keep is not None:
                lo, hi = np.searchsorted(keep, [start, start + chunk_rows])
                chunk = chunk[keep[lo:hi] - start]
            if len(chunk):
                yield chunk


class VectorWriter:
    """Writes a (rows, dim) float16 .npy file of a known size, a chunk at a time."""

    def __init__(self, path: Path, rows: int, dim: int, dtype: np.dtype = np.dtype(np.float16)):
        self.path, self.rows, self.dim, self.dtype = Path(path), rows, dim, np.dtype(dtype)
        self._fh = open(self.path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (rows, dim)}
        np.lib.format.write_array_header_1_0(self._fh, header)
        self.written = 0

    def write(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        if chunk.ndim != 2 or chunk.shape[1] != self.dim or self.written + len(chunk) > self.rows:
            raise ValueError(f"chunk {chunk.shape} does not fit {self.path} ({self.rows}, {self.dim})")
        self._fh.write(memoryview(chunk).cast("B"))
        self.written += len(chunk)

    def abort(self) -> None:
        self._fh.close()

    def close(self) -> None:
        """Flush and fsync; the file must hold exactly `rows` rows."""
        try:
            if self.written != self.rows:
                raise ValueError(f"{self.path}: {self.written} of {self.rows} rows written")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        finally:
            self._fh.close()


class VectorSpool:
    """Rows of one width appended to a scratch file in a directory (the index's: on the same
    disk, never a RAM-backed /tmp) and read back in order, a chunk at a time: an indexing run
    gathers the next shard's vectors here instead of in RAM (100k rows of 1280-d float16 is
    256 MB). The file has no name (O_TMPFILE where the file system has it, else unlinked at
    once): a killed run leaves nothing behind, and the kernel drops its pages when it is closed."""

    def __init__(self, directory: Path, dim: int, dtype: np.dtype = np.dtype(np.float16)):
        self.dim, self.dtype = dim, np.dtype(dtype)
        self.rows = 0
        self._fh = tempfile.TemporaryFile(dir=directory, prefix=".spool.tmp-")
        self._row_bytes = dim * self.dtype.itemsize

    def __enter__(self) -> "VectorSpool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"rows {rows.shape} do not fit a spool of width {self.dim}")
        if len(rows):
            os.pwrite(self._fh.fileno(), memoryview(rows).cast("B"), self.rows * self._row_bytes)
            self.rows += len(rows)

    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        """Every row appended so far, in order, at most `chunk_rows` at a time."""
        for start in range(0, self.rows, chunk_rows):
            out = np.empty((min(chunk_rows, self.rows - start), self.dim), dtype=self.dtype)
            view = memoryview(out).cast("B")
            got = os.preadv(self._fh.fileno(), [view], start * self._row_bytes)
            if got != len(view):
                raise OSError(f"the vector spool lost rows {start}-{start + len(out)}")
            yield out

    def close(self) -> None:
        self._fh.close()
