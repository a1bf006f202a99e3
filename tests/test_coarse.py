"""The coarse search (search/coarse.py): batches scan the centroids exactly; single searches over
many lists take a low-rank preselection that finds nearly the same lists with exact distances,
is built once per trained file and process, and never makes a search wait or fail."""

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

PROJECT = CoarseConfig(project_min_lists=64, rank=16, shortlist=4)


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


def test_single_searches_take_the_projection_with_exact_distances_and_nearly_the_same_lists() -> None:
    flat, q = quantizer()
    coarse = CoarseSearch(flat, 16, PROJECT, key=("test-projection-lists",))
    assert coarse.projects and coarse.wait(60)
    exact_d, exact_i = flat.search(q, 16)
    centroids = flat.reconstruct_n(0, flat.ntotal)
    overlap = []
    for i in range(len(q)):
        d, lists = coarse.search(q[i:i + 1])
        assert d.shape == lists.shape == (1, 16) and d.dtype == np.float32 and lists.dtype == np.int64
        np.testing.assert_allclose(d[0], centroids[lists[0]] @ q[i], rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(d[0]) <= 1e-6), "best list first"
        assert len(set(lists[0].tolist())) == 16
        overlap.append(len(np.intersect1d(lists[0], exact_i[i])) / 16)
    assert np.mean(overlap) >= 0.95, np.mean(overlap)


def test_a_shortlist_of_every_list_is_the_exact_answer() -> None:
    flat, q = quantizer(n=128)
    coarse = CoarseSearch(flat, 16, CoarseConfig(project_min_lists=64, rank=4, shortlist=8), key=("all-lists",))
    assert coarse.wait(60)
    got_d, got_i = coarse.search(q[:5])  # 8 x 16 >= 128 lists: every one is scored exactly
    want_d, want_i = flat.search(q[:5], 16)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-5, atol=1e-5)


def test_batches_and_small_quantizers_are_scanned_exactly() -> None:
    flat, q = quantizer()
    coarse = CoarseSearch(flat, 16, PROJECT, key=("test-projection-batches",))
    assert coarse.wait(60)
    batch = q[:PROJECT.max_queries + 1]
    for got, want in zip(coarse.search(batch), flat.search(batch, 16)):
        np.testing.assert_array_equal(got, want)
    small = CoarseSearch(flat, 16, CoarseConfig(project_min_lists=flat.ntotal + 1))
    assert not small.projects and not small.wait(1)
    for got, want in zip(small.search(q[:1]), flat.search(q[:1], 16)):
        np.testing.assert_array_equal(got, want)
    assert small._projection is None, "no copy is built where none is used"
    off = CoarseSearch(flat, 16, CoarseConfig(project_min_lists=0))
    assert not off.projects


def test_readers_of_one_trained_file_share_one_projection() -> None:
    flat, _ = quantizer(seed=1)
    a = CoarseSearch(flat, 8, PROJECT, key=("same-trained-file",))
    b = CoarseSearch(flat, 8, PROJECT, key=("same-trained-file",))
    other = CoarseSearch(flat, 8, PROJECT, key=("another-trained-file",))
    assert a.wait(60) and b.wait(60) and other.wait(60)
    assert a._projection is b._projection and a._projection is not other._projection


def test_a_search_before_the_projection_is_ready_is_answered_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm2search.search import coarse as module

    flat, q = quantizer(seed=2)
    monkeypatch.setattr(module._Projection, "_build", lambda self, *args: None)  # never finishes
    coarse = CoarseSearch(flat, 16, PROJECT, key=("never-ready",))
    for got, want in zip(coarse.search(q[:1]), flat.search(q[:1], 16)):
        np.testing.assert_array_equal(got, want)
    assert not coarse.wait(0.05)


def test_a_failed_build_leaves_the_exact_scan_answering(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm2search.search import coarse as module

    def fail(self: module._Projection, *args: object) -> None:
        self.error = MemoryError("no memory for the projection")
        self._ready.set()

    flat, q = quantizer(seed=3)
    monkeypatch.setattr(module._Projection, "_build", fail)
    coarse = CoarseSearch(flat, 16, PROJECT, key=("failed",))
    for got, want in zip(coarse.search(q[:1]), flat.search(q[:1], 16)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(MemoryError):
        coarse.wait(1)


def test_search_index_single_searches_through_the_projection_find_the_exact_scans_hits(tmp_path: Path) -> None:
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
                     coarse=CoarseConfig(project_min_lists=64, rank=24, shortlist=4)) as projected, \
         SearchIndex(tmp_path / "index", config=config, embedder=object(), use_gpu=False,
                     coarse=CoarseConfig(project_min_lists=0)) as exact:
        assert projected.warm_coarse(60) and not exact.warm_coarse(1)
        same = []
        for q in queries:
            a, b = projected.search_vector(q, 10), exact.search_vector(q, 10)
            assert [h.score for h in a] == sorted((h.score for h in a), reverse=True)
            same.append(len({(h.shard, h.row) for h in a} & {(h.shard, h.row) for h in b}) / 10)
        assert np.mean(same) >= 0.95, np.mean(same)
        # batches never take the projection: the same answers as the exact scan
        key = lambda hits: [[(h.shard, h.row) for h in one] for one in hits]  # noqa: E731
        assert key(projected.search_vectors(queries, 10)) == key(exact.search_vectors(queries, 10))
