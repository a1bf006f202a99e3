"""The coarse search: which `nprobe` lists each query probes, found once per query for every
shard (they all copy one trained quantizer).

By default every search takes the exact answer: one matrix product over the centroids. Single
searches (and small batches) can instead go through an HNSW graph over the centroids
(`CoarseConfig.graph_min_lists`); an exact scan of 8,192 x 1,280 float32 centroids reads 42 MB
per query, 3-6 ms on a 2-core host. The graph is off by default because it failed on recall: on
a 5M-vector index (bench/scale.py) single searches through it had recall@10 0.596 against 0.968
for the exact scan, for a p50 only 1.16x lower. When enabled, the graph is derived data, never
stored: it is built from the quantizer on a background thread the first time a small search
could use it, and is shared by every reader of the same trained file in the process. Until it is
ready the exact scan answers, so no search waits for it. The distances of the lists it returns
are exact inner products; what it can miss are lists of the exact top `nprobe`.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CoarseConfig:
    """When single searches take the graph, and its shape (faiss IndexHNSWFlat)."""

    graph_min_lists: int = 0  # 0: never a graph (the default: at 5M it cut single-search recall@10
    # to 0.596 from 0.968, bench/scale.py); N: quantizers with N+ lists take one for single searches
    graph_max_queries: int = 16  # bigger batches use the exact matrix product (BLAS)
    graph_m: int = 32  # neighbours per node
    ef_construction: int = 80
    ef_search: int = 128  # candidates kept while searching; >= nprobe


class _Graph:
    """An HNSW graph over a quantizer's centroids, built once on a background thread."""

    def __init__(self, quantizer: Any, config: CoarseConfig):
        self._ready = threading.Event()
        self.index: Any = None
        self.error: BaseException | None = None
        centroids = quantizer.reconstruct_n(0, quantizer.ntotal)  # a copy: the reader's quantizer may go
        # Not a daemon: a process that exits mid-build waits for it (seconds) instead of tearing
        # down OpenMP under a running faiss call.
        self._thread = threading.Thread(target=self._build, args=(centroids, quantizer.d, config),
                                        name="llm2search-coarse-graph")
        self._thread.start()

    def _build(self, centroids: np.ndarray, dim: int, config: CoarseConfig) -> None:
        import faiss

        try:
            graph = faiss.IndexHNSWFlat(dim, config.graph_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = config.ef_construction
            graph.add(centroids)
            graph.hnsw.efSearch = config.ef_search
            self.index = graph
        except BaseException as e:  # reported by CoarseSearch.wait; the exact scan keeps answering
            self.error = e
        finally:
            self._ready.set()

    def ready(self) -> bool:
        return self._ready.is_set() and self.index is not None

    def wait(self, timeout: float | None) -> bool:
        self._ready.wait(timeout)
        return self.ready()


_GRAPHS: "weakref.WeakValueDictionary[tuple, _Graph]" = weakref.WeakValueDictionary()
_GRAPHS_LOCK = threading.Lock()


class CoarseSearch:
    """The coarse search of one reader. `key` names the trained file the quantizer came from
    (content-addressed), so readers of later versions with the same training share one graph."""

    def __init__(self, quantizer: Any, nprobe: int, config: CoarseConfig = CoarseConfig(),
                 key: tuple | None = None):
        self.quantizer = quantizer
        self.nprobe = min(nprobe, quantizer.ntotal)
        self.config = config
        self._key = None if key is None else (*key, config.graph_m, config.ef_construction, config.ef_search)
        self._graph: _Graph | None = None
        self._lock = threading.Lock()

    @property
    def uses_graph(self) -> bool:
        """Whether small searches go through a graph (once it is built)."""
        return 0 < self.config.graph_min_lists <= self.quantizer.ntotal and self.nprobe > 0

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inner products, list ids) of each query's nprobe best lists, best first."""
        graph = self._graph_for(len(queries))
        if graph is None:
            return self.quantizer.search(queries, self.nprobe)
        distances, lists = graph.index.search(queries, self.nprobe)
        return distances, lists  # a list the graph could not reach is -1: faiss skips it

    def _graph_for(self, n: int) -> _Graph | None:
        if n > self.config.graph_max_queries or not self.uses_graph:
            return None
        graph = self._graph or self._start()
        return graph if graph.ready() else None

    def _start(self) -> _Graph:
        with self._lock:
            if self._graph is None:
                with _GRAPHS_LOCK:
                    graph = _GRAPHS.get(self._key) if self._key is not None else None
                    if graph is None or graph.error is not None:
                        graph = _Graph(self.quantizer, self.config)
                        if self._key is not None:
                            _GRAPHS[self._key] = graph
                self._graph = graph
            return self._graph

    def wait(self, timeout: float | None = None) -> bool:
        """Start the graph if small searches would use one and wait for it (a server's warm-up,
        benchmarks, tests): True when searches now take it. A failed build raises its error."""
        if not self.uses_graph:
            return False
        graph = self._graph or self._start()
        ready = graph.wait(timeout)
        if graph.error is not None:
            raise graph.error
        return ready
