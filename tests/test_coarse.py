"""The coarse search (search/coarse.py): batches scan the centroids exactly; single searches over
many lists go through a graph that finds nearly the same lists with exact distances, is built
once per trained file and process, and never makes a search wait or fail."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from llm2search.search.coarse import CoarseConfig, CoarseSearch
from llm2search.search.searcher import SearchIndex
from llm2search.store.shard import ShardData
from llm2search.store.vector_index import IndexConfig
from llm2search.store.writer import IndexWriter
from tests.test_filters import DIM, IDENTITY, _meta

GRAPH = CoarseConfig(graph_min_lists=64)


def quantizer(n: int = 512, dim: int = 48, seed: int = 0) -> tuple[faiss.IndexFlatIP, np.ndarray]:
    """A flat quantizer of `n` clustered unit centroids, and queries near some of them."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((8, dim)).astype(np.float32)
    c = rng.standard_normal((n, 8)).astype(np.float32) @ basis + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    q = c[rng.integers(0, n, 60)] + 0.3 * rng.standard_normal((60, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    flat = faiss.IndexFlatIP(dim)
    flat.add(c)
    return flat, q


def test_single_searches_take_the_graph_with_exact_distances_and_nearly_the_same_lists() -> None:
    flat, q = quantizer()
    coarse = CoarseSearch(flat, 16, GRAPH, key=("test-graph-lists",))
    assert coarse.uses_graph and coarse.wait(60)
    exact_d, exact_i = flat.search(q, 16)
    overlap = []
    for i in range(len(q)):
        d, lists = coarse.search(q[i:i + 1])
        assert d.shape == lists.shape == (1, 16)
        found = lists[0] >= 0
        centroids = flat.reconstruct_n(0, flat.ntotal)
        np.testing.assert_allclose(d[0][found], centroids[lists[0][found]] @ q[i], rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(d[0][found]) <= 1e-6), "best list first"
        overlap.append(len(np.intersect1d(lists[0], exact_i[i])) / 16)
    assert np.mean(overlap) >= 0.95, np.mean(overlap)


def test_batches_and_small_quantizers_are_scanned_exactly() -> None:
    flat, q = quantizer()
    coarse = CoarseSearch(flat, 16, GRAPH, key=("test-graph-batches",))
    assert coarse.wait(60)
    batch = q[:GRAPH.graph_max_queries + 1]
    for got, want in zip(coarse.search(batch), flat.search(batch, 16)):
        np.testing.assert_array_equal(got, want)
    small = CoarseSearch(flat, 16, CoarseConfig(graph_min_lists=flat.ntotal + 1))
    assert not small.uses_graph and not small.wait(1)
    for got, want in zip(small.search(q[:1]), flat.search(q[:1], 16)):
        np.testing.assert_array_equal(got, want)
    assert small._graph is None, "no graph is built where none is used"
    off = CoarseSearch(flat, 16, CoarseConfig(graph_min_lists=0))
    assert not off.uses_graph


def test_readers_of_one_trained_file_share_one_graph() -> None:
    flat, _ = quantizer(seed=1)
    a = CoarseSearch(flat, 8, GRAPH, key=("same-trained-file",))
    b = CoarseSearch(flat, 8, GRAPH, key=("same-trained-file",))
    other = CoarseSearch(flat, 8, GRAPH, key=("another-trained-file",))
    assert a.wait(60) and b.wait(60) and other.wait(60)
    assert a._graph is b._graph and a._graph is not other._graph


def test_a_search_before_the_graph_is_ready_is_answered_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm2search.search import coarse as module

    flat, q = quantizer(seed=2)
    monkeypatch.setattr(module._Graph, "_build", lambda self, *args: None)  # never finishes
    coarse = CoarseSearch(flat, 16, GRAPH, key=("never-ready",))
    for got, want in zip(coarse.search(q[:1]), flat.search(q[:1], 16)):
        np.testing.assert_array_equal(got, want)
    assert not coarse.wait(0.05)


def test_a_failed_build_leaves_the_exact_scan_answering(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm2search.search import coarse as module

    def fail(self: module._Graph, *args: object) -> None:
        self.error = MemoryError("no memory for the graph")
        self._ready.set()

    flat, q = quantizer(seed=3)
    monkeypatch.setattr(module._Graph, "_build", fail)
    coarse = CoarseSearch(flat, 16, GRAPH, key=("failed",))
    for got, want in zip(coarse.search(q[:1]), flat.search(q[:1], 16)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(MemoryError):
        coarse.wait(1)


def test_search_index_single_searches_through_the_graph_find_the_exact_scans_hits(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    config = IndexConfig(ivf_threshold=10**9, nlist=128, nprobe=16, rerank_factor=5)
    with IndexWriter(tmp_path / "index", IDENTITY, DIM, config) as writer:
        for s in range(3):
            writer.commit(ShardData(x[s * 1000:(s + 1) * 1000], _meta(1000, s * 1000, rng)))
        assert writer.maybe_train(force=True)
    queries = x[rng.choice(3000, 40, replace=False)] + 0.05 * rng.standard_normal((40, DIM)).astype(np.float32)
    with SearchIndex(tmp_path / "index", config=config, embedder=object(), use_gpu=False,
                     coarse=CoarseConfig(graph_min_lists=64)) as graph, \
         SearchIndex(tmp_path / "index", config=config, embedder=object(), use_gpu=False,
                     coarse=CoarseConfig(graph_min_lists=0)) as exact:
        assert graph.warm_coarse_graph(60) and not exact.warm_coarse_graph(1)
        same = []
        for q in queries:
            a, b = graph.search_vector(q, 10), exact.search_vector(q, 10)
            assert [h.score for h in a] == sorted((h.score for h in a), reverse=True)
            same.append(len({(h.shard, h.row) for h in a} & {(h.shard, h.row) for h in b}) / 10)
        assert np.mean(same) >= 0.95, np.mean(same)
        # batches never take the graph: the same answers as the exact scan
        key = lambda hits: [[(h.shard, h.row) for h in one] for one in hits]  # noqa: E731
        assert key(graph.search_vectors(queries, 10)) == key(exact.search_vectors(queries, 10))
