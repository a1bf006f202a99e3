"""Shard-group views of one version, merged as a router merges them, answer exactly what one view
of every shard answers: same hits, same scores, same order, ties included (duplicate photos share
a vector, so their PQ estimates and exact scores tie). No Ray here: the primitives alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llm2search.errors import ItemNotFoundError
from llm2search.search.filters import SearchFilter
from llm2search.search.merge import Ranked, Scored, finish, merge_candidates, merge_ranked, top_exact
from llm2search.search.searcher import SearchIndex
from llm2search.store.readers import live_readers
from llm2search.store.shard import ShardData
from llm2search.store.vector_index import IndexConfig
from llm2search.store.writer import IndexWriter
from tests.test_filters import DIM, IDENTITY, _meta

# A shallow re-rank (2 x k) and few probed lists: a group's own best candidates by PQ estimate
# then differ from its part of the global best, which is what the merge must get right.
CONFIG = IndexConfig(ivf_threshold=10**9, nlist=16, nprobe=3, rerank_factor=2, ivf_shard_rows=300)
FILTERS = [SearchFilter(folder="/p/a"), SearchFilter(types=("png", "webp"), min_width=1000),
           SearchFilter(min_score=0.2, sort="date"), SearchFilter(folder="/p/c", sort="date_asc")]


def build(index: Path, seed: int = 3) -> np.ndarray:
    """4 IVF-PQ shards of 300 rows, a tenth of them copies of rows of other shards (ties in both
    scores), tombstones in two shards. Returns some stored vectors to query with."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1200, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    copies = rng.choice(1200, size=120, replace=False)
    x[copies] = x[rng.choice(1200, size=120)]
    with IndexWriter(index, IDENTITY, DIM, CONFIG) as writer:
        for s in range(4):
            writer.commit(ShardData(x[s * 300:(s + 1) * 300], _meta(300, s * 300, rng)))
        assert writer.maybe_train(force=True)
        shards = writer.manifest.shards
        writer.commit(deletions={shards[0].name: rng.choice(300, 30, replace=False),
                                 shards[2].name: rng.choice(300, 30, replace=False)})
        assert len(writer.manifest.shards) == 4 and writer.manifest.index_type == "ivfpq"
    return x[copies[:20]]


class Router:
    """What serve/ does with these primitives, in a few lines: groups answer in their own shard
    positions, the router maps them to manifest positions and merges."""

    def __init__(self, index: Path, groups: list[list[int]]):
        self.view = SearchIndex(index, config=CONFIG, use_gpu=False, shards=())
        names = [s.name for s in self.view.manifest.shards]
        self.groups = [(SearchIndex(index, config=CONFIG, use_gpu=False, version=self.view.manifest,
                                    shards=[names[i] for i in g]), np.array(sorted(g))) for g in groups]

    def search(self, queries: np.ndarray, k: int, flt: SearchFilter) -> list[list]:
        if flt.restricts_rows:
            out = []
            for q in queries:
                parts = [self._global(g.filtered_top(q[None], k, flt), at) for g, at in self.groups]
                out += finish(merge_ranked(parts, k), flt, self.hits)
            return out
        depth = self.view.rerank_depth(k)
        coarse = self.view.coarse(queries)
        parts = [self._global(g.scored_candidates(queries, k, coarse), at) for g, at in self.groups]
        return finish(merge_candidates(parts, depth, k), flt, self.hits)

    @staticmethod
    def _global(part: Scored | Ranked, at: np.ndarray) -> Scored | Ranked:
        return part._replace(owners=at[part.owners])

    def hits(self, scores: np.ndarray, owners: np.ndarray, rows: np.ndarray, ranks: np.ndarray) -> list:
        out = [None] * len(rows)
        for g, at in self.groups:
            mine = np.flatnonzero(np.isin(owners, at))
            local = np.searchsorted(at, owners[mine])
            for j, hit in zip(mine, g.join_hits(scores[mine], local, rows[mine], ranks[mine])):
                out[j] = hit
        return out


def answer(hits_per_query: list[list]) -> list[list[tuple]]:
    return [[(h.rank, h.id, h.score, h.path) for h in hits] for hits in hits_per_query]


@pytest.mark.parametrize("groups", [[[0, 1], [2, 3]], [[0, 2], [1, 3]], [[3], [0, 1, 2]], [[0], [1], [2], [3]]])
def test_groups_merged_equal_one_view_of_every_shard(tmp_path: Path, groups: list[list[int]]) -> None:
    stored = build(tmp_path)
    rng = np.random.default_rng(9)
    noise = rng.standard_normal((40, DIM)).astype(np.float32)
    queries = np.concatenate([stored, noise / np.linalg.norm(noise, axis=1, keepdims=True)])
    one = SearchIndex(tmp_path, config=CONFIG, use_gpu=False)
    router = Router(tmp_path, groups)
    for k in (1, 5, 40):
        for flt in [SearchFilter()] + FILTERS:
            expected = answer(one.search_vectors(queries, k, flt))
            assert answer(router.search(queries, k, flt)) == expected, (k, flt)
            assert all(len(hits) == k for hits in expected) or flt.restricts_rows or flt.min_score
    # Every view pinned the same generation, with leases of its own.
    assert {r["generation"] for r in live_readers(tmp_path)} == {one.generation}


def test_a_group_returning_only_its_own_top_k_would_differ(tmp_path: Path) -> None:
    """The trap the merge avoids: each group re-ranking its own best rerank_factor x k and
    returning its exact top-k sees a superset of one host's candidates, so it answers otherwise."""
    stored = build(tmp_path)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((60, DIM)).astype(np.float32)
    queries = np.concatenate([stored, noise / np.linalg.norm(noise, axis=1, keepdims=True)])
    router = Router(tmp_path, [[0, 1], [2, 3]])
    k, depth = 5, 10
    coarse = router.view.coarse(queries)
    parts = [router._global(g.scored_candidates(queries, k, coarse), at) for g, at in router.groups]
    naive = merge_ranked([top_exact(p, k) for p in parts], k)
    right = merge_candidates(parts, depth, k)
    one = SearchIndex(tmp_path, config=CONFIG, use_gpu=False)._top_rows(queries, k)
    assert np.array_equal(right.rows, one.rows) and np.array_equal(right.owners, one.owners)
    differs = ~np.all((naive.rows == right.rows) & (naive.owners == right.owners), axis=1)
    assert differs.any()
    # ... and where it differs it scores at least as well (a superset of candidates).
    assert np.all(naive.scores.sum(axis=1) >= right.scores.sum(axis=1) - 1e-6)


def test_a_view_of_a_given_version_keeps_it_while_the_index_moves_on(tmp_path: Path) -> None:
    build(tmp_path)
    router = Router(tmp_path, [[0, 1], [2, 3]])
    pinned = router.view.manifest
    with IndexWriter(tmp_path, IDENTITY, DIM, CONFIG) as writer:
        writer.compact(min_rows=10**6, max_rows=10**6)  # every shard merged into one: new files
        assert not {s.name for s in writer.manifest.shards} & {s.name for s in pinned.shards}
    group, _ = router.groups[1]
    assert not group.refresh() and group.generation == pinned.generation
    q = np.ones((1, DIM), np.float32) / np.sqrt(DIM)
    assert answer(router.search(q, 5, SearchFilter())) and len(group.shards) == 2


# -- the router and group replicas of serve/ (Ray Serve runs the same code; here in-process) ---
def test_routed_index_over_local_groups_equals_one_view(tmp_path: Path) -> None:
    from llm2search.serve.router import RoutedIndex
    from llm2search.serve.shard_groups import LocalGroups

    stored = build(tmp_path)
    one = SearchIndex(tmp_path, config=CONFIG, use_gpu=False)
    routed = RoutedIndex(tmp_path, LocalGroups(tmp_path, 2, CONFIG), CONFIG, embedder=object())
    noise = np.random.default_rng(4).standard_normal((10, DIM)).astype(np.float32)
    queries = np.concatenate([stored[:10], noise / np.linalg.norm(noise, axis=1, keepdims=True)])
    for k in (3, 12):
        for flt in [SearchFilter()] + FILTERS:
            assert answer(routed.search_vectors(queries, k, flt)) == answer(one.search_vectors(queries, k, flt))
    item = one.search_vector(stored[0], 1)[0].id
    assert routed.item(item) == one.item(item) and routed.file_path(item) == one.file_path(item)
    assert np.array_equal(routed.vector_by_id(item), one.vector_by_id(item))
    for bad in ("nope:1", f"{one.shards[1].info.name}:999999", "zzz"):
        with pytest.raises(ItemNotFoundError) as a:
            routed.item(bad)
        with pytest.raises(ItemNotFoundError) as b:
            one.item(bad)
        assert str(a.value) == str(b.value)


def test_a_group_replica_moves_to_a_new_version_and_lets_the_old_one_go(tmp_path: Path) -> None:
    from llm2search.serve.shard_groups import GroupReplica, Ticket, version_key

    build(tmp_path)
    old = SearchIndex(tmp_path, config=CONFIG, use_gpu=False, shards=())  # the router's lease
    replica = GroupReplica(tmp_path, 1, 2, CONFIG)
    old_ticket = Ticket(version_key(old.manifest), old.manifest)
    with replica.use(old_ticket) as view:
        first = view.index.generation
        with IndexWriter(tmp_path, IDENTITY, DIM, CONFIG) as writer:
            writer.commit(deletions={writer.manifest.shards[1].name: np.array([5])})
        new = SearchIndex(tmp_path, config=CONFIG, use_gpu=False, shards=())
        new_ticket = Ticket(version_key(new.manifest), new.manifest)
        with replica.use(new_ticket) as fresh:  # the old version is in use: it stays open
            assert fresh.index.generation == new.generation != first
            assert [k[0] for k in replica.open_keys()] == [first, new.generation]
        assert not view.index.closed
    assert [k[0] for k in replica.open_keys()] == [new.generation]  # its last request ended
    assert view.index.closed
    with replica.use(old_ticket) as late:  # a late request for the old version is still answered
        assert late.index.generation == first
    assert [k[0] for k in replica.open_keys()] == [new.generation]
    replica.sweep(version_key(new.manifest), idle_s=0.0)  # the current version stays
    assert [k[0] for k in replica.open_keys()] == [new.generation]
    replica.sweep(("other",), idle_s=0.0)  # not current and idle: closed, reopened on demand
    assert replica.open_keys() == []
    held = {r["generation"] for r in live_readers(tmp_path)}
    assert held == {first, new.generation}  # only the two router views hold leases now
