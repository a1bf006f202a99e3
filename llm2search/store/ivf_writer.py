"""index.faiss of an IVF-PQ fast-scan shard written from its rows as they pass, in faiss's own
layout, without building the index in memory.

faiss holds a fast-scan index's lists in blocks whose buffers grow by doubling, and adds through
float32 copies, residuals and a coarse-assignment block: building one 510k-row shard of 1280-d
(IVF2048,PQ160x4fs) peaked 106 MiB over the process. Here each chunk is assigned to its list and
encoded as faiss's add does (quantizer.assign, encode_vectors), its codes go to an unnamed
scratch file, and the file is then written list by list: a group of lists at a time is read
back, packed into faiss's blocks (the index's own CodePacker) and written after the header
that faiss writes for the empty shard. Whether this gives faiss's bytes is checked once per
trained quantizer against faiss.serialize_index of the same rows; where it does not, the caller
builds the index with faiss instead (vector_index.build_shard_index)."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import IO, Any

import numpy as np

from .vector_file import VectorSpool
from .vector_index import shard_index_bytes

ENCODE_CHUNK_ROWS = 2_048  # rows assigned and encoded per step (10 MB of float32 at 1280-d)
GROUP_BYTES = 8 << 20  # codes of the lists packed per step
_checked: dict[bytes, bool] = {}  # layout check by digest of the empty template's file


class IvfPqIndexWriter:
    """Rows in, index.faiss out: `write` the shard's rows in order (any float dtype), then
    `close` (the caller fsyncs). `trained` is the empty trained template; the shard is written
    without its coarse centroids, as vector_index.write_shard_index writes it."""

    def __init__(self, path: Path | IO[bytes], rows: int, trained: Any, scratch: Path):
        import faiss

        self.rows, self._trained = rows, trained
        self._ivf = faiss.extract_index_ivf(trained)
        self._packer = self._ivf.get_CodePacker()
        self._lists = np.empty(rows, dtype=np.int32)
        self._codes = VectorSpool(scratch, int(self._ivf.code_size), np.dtype(np.uint8))
        self._path = path
        self.written = 0

    def write(self, chunk: np.ndarray) -> None:
        import faiss

        if chunk.ndim != 2 or chunk.shape[1] != self._ivf.d or self.written + len(chunk) > self.rows:
            raise ValueError(f"chunk {chunk.shape} does not fit an index of {self.rows} x {self._ivf.d}")
        for start in range(0, len(chunk), ENCODE_CHUNK_ROWS):
            x = np.ascontiguousarray(chunk[start:start + ENCODE_CHUNK_ROWS], dtype=np.float32)
            lists = np.ascontiguousarray(self._ivf.quantizer.assign(x, 1).ravel(), dtype=np.int64)
            codes = np.empty((len(x), self._ivf.code_size), dtype=np.uint8)
            self._ivf.encode_vectors(len(x), faiss.swig_ptr(x), faiss.swig_ptr(lists), faiss.swig_ptr(codes), False)
            self._lists[self.written:self.written + len(x)] = lists
            self._codes.append(codes)
            self.written += len(x)

    def abort(self) -> None:
        self._codes.close()

    def close(self) -> None:
        """Write the file; it must hold exactly `rows` rows."""
        try:
            if self.written != self.rows:
                raise ValueError(f"an index of {self.rows} rows was given {self.written}")
            if isinstance(self._path, (str, Path)):
                with open(self._path, "wb") as out:
                    self._write(out)
            else:
                self._write(self._path)
        finally:
            self.abort()

    def _write(self, out: IO[bytes]) -> None:
        nlist = int(self._ivf.nlist)
        head, lists_head = _empty_layout(self._trained)
        out.write(head[:8] + struct.pack("<q", self.rows) + head[16:])
        out.write(lists_head)
        counts = np.bincount(self._lists, minlength=nlist)
        code_size = int(self._ivf.code_size)
        group_lists = max(1, GROUP_BYTES // max(1, code_size * max(1, int(counts.mean()))))
        for lo in range(0, nlist, group_lists):
            hi = min(nlist, lo + group_lists)
            rows, lists, codes = self._group(lo, hi)  # sorted by list, then row
            bounds = np.searchsorted(lists, np.arange(lo, hi + 1))
            for i in range(hi - lo):
                a, b = int(bounds[i]), int(bounds[i + 1])
                out.write(struct.pack("<Q", b - a))
                out.write(rows[a:b].astype("<i8").tobytes())
                packed = self._pack(codes[a:b])
                out.write(struct.pack("<Q", len(packed)))
                out.write(packed.tobytes())

    def _group(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row numbers, list numbers and codes of the rows in lists [lo, hi), by list then row."""
        rows, codes, at = [], [], 0
        for chunk in self._codes.chunks():
            lists = self._lists[at:at + len(chunk)]
            keep = np.flatnonzero((lists >= lo) & (lists < hi))
            rows.append(keep + at)
            codes.append(chunk[keep])
            at += len(chunk)
        row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        code = np.concatenate(codes) if codes else np.zeros((0, self._ivf.code_size), dtype=np.uint8)
        lists = self._lists[row]
        order = np.argsort(lists, kind="stable")
        return row[order], lists[order], code[order]

    def _pack(self, codes: np.ndarray) -> np.ndarray:
        import faiss

        nvec, block = int(self._packer.nvec), int(self._packer.block_size)
        blocks = (len(codes) + nvec - 1) // nvec
        flat = np.zeros((blocks * nvec, codes.shape[1]), dtype=np.uint8)
        flat[:len(codes)] = codes
        out = np.zeros(blocks * block, dtype=np.uint8)
        for b in range(blocks):
            self._packer.pack_all(faiss.swig_ptr(flat[b * nvec:]), faiss.swig_ptr(out[b * block:]))
        return out


def _empty_layout(trained: Any) -> tuple[bytes, bytes]:
    """faiss's file of the empty shard (no centroids) cut where its lists begin: the header up
    to the lists, and the lists' own header ("ilbl", nlist, code size, codes per block, block
    bytes), without the two empty vectors per list that follow."""
    import faiss

    data = shard_index_bytes(trained)
    nlist = int(faiss.extract_index_ivf(trained).nlist)
    lists_at = len(data) - (4 + 4 * 8 + 16 * nlist)
    if data[lists_at:lists_at + 4] != b"ilbl" or data[lists_at + 4 + 32:] != bytes(16 * nlist):
        raise ValueError("this faiss lays out fast-scan lists differently")
    return data[:lists_at], data[lists_at:lists_at + 4 + 32]


def layout_known(trained: Any, scratch: Path) -> bool:
    """True when IvfPqIndexWriter writes exactly faiss's bytes for `trained` (checked once per
    template, on 300 rows, against faiss's own add; the answer is kept per template)."""
    import hashlib

    try:
        key = hashlib.sha256(shard_index_bytes(trained)).digest()
    except Exception:  # noqa: BLE001 - not an index faiss can write
        return False
    if key in _checked:
        return _checked[key]
    import faiss

    try:
        ivf = faiss.extract_index_ivf(trained)
        ok = ivf.ntotal == 0 and type(faiss.downcast_InvertedLists(ivf.invlists)).__name__ == "BlockInvertedLists"
        if ok:
            # 80 rows near each of a few centroids (lists of several blocks, a partial last
            # block) and 60 anywhere (lists of one code, empty lists)
            rng = np.random.default_rng(0)
            near = ivf.quantizer.reconstruct_n(0, min(3, int(ivf.nlist)))
            x = np.concatenate([np.repeat(near, 80, axis=0) + 0.01 * rng.standard_normal((80 * len(near), ivf.d)),
                                rng.standard_normal((60, ivf.d))]).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            mine = io.BytesIO()
            w = IvfPqIndexWriter(mine, len(x), trained, scratch)
            try:
                w.write(x)
                w.close()
            except BaseException:
                w.abort()  # its scratch file goes either way
                raise
            index = faiss.clone_index(trained)
            index.add(x)
            ok = mine.getvalue() == shard_index_bytes(index)
            del index
    except Exception:  # noqa: BLE001 - any surprise means: let faiss build the index
        ok = False
    _checked[key] = ok
    return ok
