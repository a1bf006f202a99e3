"""The coarse search: which `nprobe` lists each query probes, found once per query for every
shard (they all copy one trained quantizer).

An exact scan of the centroids is one matrix product. For a batch, BLAS reads the centroids once
for every query; for one query it reads all of them too: 42 MB at 8,192 x 1,280 float32, 3-6 ms
on a 2-core host, more than the rest of a single search. So a quantizer with many lists also
gets a low-rank copy of its centroids for single searches (and small batches): every centroid is
scored on its `rank` principal directions (8,192 x 128 floats: 4 MB, cache-sized), the best
`shortlist x nprobe` are scored again exactly on the quantizer's own centroids, and the best
`nprobe` of those are the answer. The lists returned and their distances are exact inner
products; what the shortlist can miss is a list the projection ranked too low. On the 5M
index's 8,192 trained centroids (1,280-d, nprobe 32, bench/coarse.py) rank 128 and a shortlist
of 256 found 0.9998 of the exact lists in 0.28 ms against 1.7 ms for the exact scan; single
searches' recall@10 was the same both ways (0.969, bench/scale.py, one process).

The copy is derived data, never stored: it is built from the quantizer on a background thread
the first time a small search could use it (about a second at 8,192 lists), and shared by every
reader of the same trained file in the process. Until it is ready the exact scan answers, so no
search waits for it.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CoarseConfig:
    """When small searches take the low-rank preselection, and its shape."""

    project_min_lists: int = 4096  # quantizers with this many lists use it (0: never, exact scans)
    max_queries: int = 16  # bigger batches use the exact matrix product (BLAS reads it once)
    rank: int = 128  # principal directions of the centroids kept
    shortlist: int = 8  # x nprobe lists scored exactly after the projection


class _Projection:
    """The top principal directions of a quantizer's centroids and the centroids' coordinates
    on them; built once on a background thread. It holds no centroids: each reader rescores on
    its own quantizer's (the same trained file), so none outlives the reader that started it."""

    def __init__(self, quantizer: Any, config: CoarseConfig):
        self._ready = threading.Event()
        self.basis: np.ndarray | None = None  # (d, rank)
        self.projected: Any = None  # a faiss IndexFlatIP of the centroids' (lists, rank) coordinates
        self.error: BaseException | None = None
        # A copy for the build only: the reader that started it may close meanwhile.
        centroids = np.ascontiguousarray(quantizer.reconstruct_n(0, quantizer.ntotal), dtype=np.float32)
        # Not a daemon: a process that exits mid-build waits for it (a second) instead of
        # tearing down BLAS under a running call.
        self._thread = threading.Thread(target=self._build, args=(centroids, config),
                                        name="llm2search-coarse-projection")
        self._thread.start()

    def _build(self, centroids: np.ndarray, config: CoarseConfig) -> None:
        import faiss

        try:
            rank = min(config.rank, centroids.shape[1])
            # The best rank-r approximation of the centroid matrix is its projection on the top
            # r eigenvectors of C^T C (d x d: cheap; eigh in float64).
            gram = (centroids.T @ centroids).astype(np.float64)
            _, vectors = np.linalg.eigh(gram)  # ascending eigenvalues
            basis = np.ascontiguousarray(vectors[:, ::-1][:, :rank], dtype=np.float32)
            projected = faiss.IndexFlatIP(rank)
            projected.add(np.ascontiguousarray(centroids @ basis))
            self.projected = projected
            self.basis = basis
        except BaseException as e:  # reported by CoarseSearch.wait; the exact scan keeps answering
            self.error = e
        finally:
            self._ready.set()

    def ready(self) -> bool:
        return self._ready.is_set() and self.basis is not None

    def wait(self, timeout: float | None) -> bool:
        self._ready.wait(timeout)
        return self.ready()

    def search(self, queries: np.ndarray, centroids: np.ndarray, nprobe: int,
               shortlist: int) -> tuple[np.ndarray, np.ndarray]:
        """(exact inner products, list ids) of each query's nprobe best lists among the
        `shortlist` best by projected score, best first; `centroids` are the quantizer's."""
        assert self.basis is not None and self.projected is not None
        shortlist = min(max(shortlist, nprobe), len(centroids))
        # Neither product goes through numpy's BLAS: its thread pool would fight faiss's OpenMP
        # threads, still spinning after the previous search's shard scans (measured at 5M: 7.5
        # ms for this step with BLAS threads, 0.45 ms without). einsum runs on this thread and
        # faiss searches one query on one thread.
        reduced = np.ascontiguousarray(np.einsum("nd,dr->nr", queries, self.basis), dtype=np.float32)
        _, candidates = self.projected.search(reduced, shortlist)
        exact = np.einsum("nsd,nd->ns", centroids[candidates], queries)
        # best first; ties by list id, as faiss orders them
        order = np.lexsort((candidates, -exact), axis=1)[:, :nprobe]
        return (np.take_along_axis(exact, order, 1).astype(np.float32),
                np.take_along_axis(candidates, order, 1).astype(np.int64))


_PROJECTIONS: "weakref.WeakValueDictionary[tuple, _Projection]" = weakref.WeakValueDictionary()
_PROJECTIONS_LOCK = threading.Lock()


class CoarseSearch:
    """The coarse search of one reader. `key` names the trained file the quantizer came from
    (content-addressed), so readers of later versions with the same training share one copy."""

    def __init__(self, quantizer: Any, nprobe: int, config: CoarseConfig = CoarseConfig(),
                 key: tuple | None = None):
        self.quantizer = quantizer
        self.nprobe = min(nprobe, quantizer.ntotal)
        self.config = config
        self._key = None if key is None else (*key, config.rank)
        self._projection: _Projection | None = None
        self._centroids: np.ndarray | None = None  # a view of the quantizer's, once projecting
        self._lock = threading.Lock()

    @property
    def projects(self) -> bool:
        """Whether small searches go through the low-rank preselection (once it is built)."""
        return 0 < self.config.project_min_lists <= self.quantizer.ntotal and self.nprobe > 0

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inner products, list ids) of each query's nprobe best lists, best first."""
        projection = self._projection_for(len(queries))
        if projection is None:
            return self.quantizer.search(queries, self.nprobe)
        return projection.search(queries, self._quantizer_centroids(), self.nprobe,
                                 self.config.shortlist * self.nprobe)

    def _quantizer_centroids(self) -> np.ndarray:
        """The quantizer's centroids as a float32 (lists, d) array: a view of its own memory
        (an IndexFlat's), valid while the quantizer is, which the reader keeps; a copy for a
        quantizer of another kind."""
        if self._centroids is None:
            import faiss

            q = self.quantizer
            try:
                view = faiss.rev_swig_ptr(q.get_xb(), q.ntotal * q.d).reshape(q.ntotal, q.d)
            except (AttributeError, TypeError, RuntimeError):
                view = q.reconstruct_n(0, q.ntotal)
            self._centroids = view
        return self._centroids

    def _projection_for(self, n: int) -> _Projection | None:
        if n > self.config.max_queries or not self.projects:
            return None
        projection = self._projection or self._start()
        return projection if projection.ready() else None

    def _start(self) -> _Projection:
        with self._lock:
            if self._projection is None:
                with _PROJECTIONS_LOCK:
                    found = _PROJECTIONS.get(self._key) if self._key is not None else None
                    if found is None or found.error is not None:
                        found = _Projection(self.quantizer, self.config)
                        if self._key is not None:
                            _PROJECTIONS[self._key] = found
                self._projection = found
            return self._projection

    def wait(self, timeout: float | None = None) -> bool:
        """Start the low-rank copy if small searches would use one and wait for it (a server's
        warm-up, benchmarks, tests): True when they now take it. A failed build raises its error."""
        if not self.projects:
            return False
        projection = self._projection or self._start()
        ready = projection.wait(timeout)
        if projection.error is not None:
            raise projection.error
        return ready
