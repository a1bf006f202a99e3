"""Keep a long run's memory from stacking up: freed memory given back to the OS between phases,
and large buffers taken from the OS directly, so freeing them gives their pages back.

Arrow's allocator (mimalloc in the pyarrow wheels) keeps the pages of freed tables for reuse,
and glibc keeps freed heap; neither can hand its pages to the other. An indexing run frees its
change plan (Arrow: a path per file) before training and compaction, which allocate through
numpy and faiss (glibc): without `release_freed_memory`, both peaks stack. At the end of a
150k-file run (no-op embedder) it took the main process from 489 to 429 MiB RSS before training.

glibc serves a request above its mmap threshold from its own mapping, but raises that threshold
to the largest block freed so far (up to 32 MiB): after the first 10-20 MiB chunk is freed, every
later chunk of a merge or a training step comes from the heap, whose freed space is kept.
`map_large_blocks` pins the threshold at 1 MiB.

Arrow's mimalloc pool keeps freed pages per thread (Parquet decodes on a thread pool) in a
1 GiB reservation that `release_unused` does not empty: merging 17 shards (510k rows) of
metadata and vectors peaked 124 MiB over the process and kept 67 MiB after a release; through
Arrow's system pool (glibc, with large blocks mapped) it peaked 59 MiB over, kept 30, and took
9 s instead of 16. Arrow reads its C++ default pool once, when pyarrow loads: `import llm2search` sets
ARROW_DEFAULT_MEMORY_POOL=system unless the user set it; `lean_memory` also switches
pyarrow's own default (what Python-level calls allocate from) for a run where pyarrow was
loaded first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import contextlib
import functools
from typing import Any, Iterator

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
LARGE_BLOCK_BYTES = 1 << 20


def release_freed_memory() -> None:
    """Return freed Arrow pool pages and glibc heap to the OS (best effort; a no-op elsewhere)."""
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except (ImportError, AttributeError):
        pass
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def peak_rss_mib() -> float:
    """This process's own high-water mark of resident memory (VmHWM), in MiB. Not getrusage's
    ru_maxrss: Python starts children with vfork, and Linux folds the parent's high-water mark
    into the child's at exec. Under a parent holding 1 GiB, a child whose own VmHWM was 13 MiB
    reported ru_maxrss 1,037 MiB (checked), and under the test suite's pytest a bench child read
    394 MiB with its sampled process tree at 372. ru_maxrss only where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def map_large_blocks(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Serve glibc allocations of `threshold` bytes or more from their own mappings for the rest
    of the process (freed at once, never kept in the heap). False where this is not glibc."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))


@contextlib.contextmanager
def lean_memory() -> Iterator[None]:
    """For a long run (indexing, training, compaction): glibc maps large blocks (see
    map_large_blocks; it stays so for the process), and Arrow allocates from its system pool
    until the block ends (buffers made meanwhile keep their pool; the default comes back)."""
    import pyarrow as pa

    map_large_blocks()
    before = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(before)


@functools.lru_cache(maxsize=1)
def _glibc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is None or not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
            return None  # not glibc (musl, macOS, Windows)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except OSError:
        return None
