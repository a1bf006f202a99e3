"""The router's view of one index version (Ray Serve's ingress): it pins the version, searches
the shared coarse quantizer once, asks every shard group for its candidates in parallel, merges
their answers exactly as one host merges its shards (search/merge.py), and asks the groups that
hold the final hits for their metadata. SearchService uses it as it uses a SearchIndex.

Hops per search: one to every group with shards (candidates, with the metadata of each group's own
exact top k), and, only for final hits outside their group's own top k, one to the groups holding
them; a text or image query adds one to the query encoder before them."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ..errors import IndexClosedError
from ..search.filters import SearchFilter
from ..search.gpu import SearchPlan
from ..search.merge import Ranked, finish, merge_candidates, merge_ranked
from ..search.searcher import Hit, SearchIndex, check_k
from ..store.manifest import Manifest
from ..store.vector_index import IndexConfig
from .shard_groups import Ticket, assign_groups

NO_FILTER = SearchFilter()
ITEM_CACHE = 1024  # items' metadata, file names and vectors kept per version (5 kB a vector at 1280-d)


class Pending(Protocol):
    def result(self) -> Any: ...


class GroupCalls(Protocol):
    """How the router reaches its groups: Ray deployment handles, or LocalGroups in tests."""

    count: int

    def ticket(self, manifest: Manifest) -> Ticket: ...

    def call(self, group: int, method: str, ticket: Ticket, *args: Any) -> Pending: ...


class RoutedIndex:
    """One pinned version searched through shard groups; the SearchIndex calls the service uses."""

    def __init__(self, index_dir: str | Path, groups: GroupCalls, config: IndexConfig = IndexConfig(),
                 embedder: Any = None):
        # No shard opened here: the lease on the version, its manifest and the coarse quantizer.
        self._view = SearchIndex(index_dir, config=config, embedder=embedder, use_gpu=False, shards=())
        try:
            self.manifest: Manifest = self._view.manifest
            self._groups = groups
            assignment = assign_groups(self.manifest, groups.count)
            self._serving = [g for g, members in enumerate(assignment) if members]
            self._group_of = np.zeros(len(self.manifest.shards), dtype=np.int64)
            for g, members in enumerate(assignment):
                self._group_of[list(members)] = g
            self._by_name = {s.name: int(self._group_of[i]) for i, s in enumerate(self.manifest.shards)}
            self.ticket = groups.ticket(self.manifest)
            self._items: OrderedDict[tuple[str, str], Any] = OrderedDict()
            self._items_lock = threading.Lock()
            self.search_plan = SearchPlan("ray-serve", f"{len(self._serving)} shard group(s) of "
                                          f"{len(self.manifest.shards)} shard(s), searched by their replicas")
            # Every group opens the version before the router answers from it.
            self._each("prepare")
        except BaseException:
            self._view.close()
            raise

    # -- what SearchService uses ---------------------------------------------------------
    @property
    def dir(self) -> Path:
        return self._view.dir

    @property
    def count(self) -> int:
        return self.manifest.count

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def embedder(self) -> Any:
        return self._view.embedder

    @property
    def _embedder(self) -> Any:  # SearchService hands a hot model to the next version
        return self._view._embedder

    @_embedder.setter
    def _embedder(self, value: Any) -> None:
        self._view._embedder = value

    def close(self) -> None:
        self._view.close()

    @property
    def closed(self) -> bool:
        return self._view.closed

    def warm_coarse(self, timeout: float | None = None) -> bool:
        """The router runs the coarse search: its view builds the low-rank copy (search/coarse.py)."""
        return self._view.warm_coarse(timeout)

    def search_vector(self, vector: np.ndarray, k: int = 10, filter: SearchFilter | None = None) -> list[Hit]:
        return self.search_vectors(np.asarray(vector).reshape(1, -1), k, filter)[0]

    def search_vectors(self, vectors: np.ndarray, k: int = 10,
                       filter: SearchFilter | None = None) -> list[list[Hit]]:
        """SearchIndex.search_vectors over the groups: the same hits in the same order."""
        check_k(k)
        flt = filter if filter is not None else NO_FILTER
        if self._view.closed:
            raise IndexClosedError(f"this version of {self.dir} was closed; open the index again")
        queries = self._view.check_queries(vectors)
        if not self._serving:
            return [[] for _ in queries]
        if flt.restricts_rows:  # each group's exact top-k per query; the best k of those
            answers = self._each("filtered", queries, k, flt)
            ranked = _stack([merge_ranked([a[0][i] for a in answers], k) for i in range(len(queries))], k)
        else:  # each group's best `depth` by PQ estimate, scored; the global best `depth` of those
            answers = self._each("candidates", queries, k, self._view.coarse(queries))
            ranked = merge_candidates([a[0] for a in answers], self._view.rerank_depth(k), k)
        known = {(h.shard, h.row): h for a in answers for h in a[1]}
        return finish(ranked, flt, lambda *found: self._hits(*found, known=known))

    def item(self, item_id: str) -> dict[str, Any]:
        return dict(self._item_call("item", str(item_id)))

    def file_path(self, item_id: str) -> str:
        return self._item_call("file_path", str(item_id))

    def vector_by_id(self, item_id: str) -> np.ndarray:
        return self._item_call("vector", str(item_id)).copy()

    def _item_call(self, method: str, item_id: str) -> Any:
        """An item's metadata, file name or vector from the group holding it. A version never
        changes, so answers are kept (a thumbnail asks for both metadata and file name)."""
        key = (method, item_id)
        with self._items_lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = self._call(self._group_for(item_id), method, item_id)
        with self._items_lock:
            self._items[key] = value
            while len(self._items) > ITEM_CACHE:
                self._items.popitem(last=False)
        return value

    # -- fan-out -------------------------------------------------------------------------
    def _each(self, method: str, *args: Any) -> list[Any]:
        """`method` on every group that has shards, in parallel; answers in group order."""
        pending = [self._groups.call(g, method, self.ticket, *args) for g in self._serving]
        return [p.result() for p in pending]

    def _call(self, group: int, method: str, *args: Any) -> Any:
        return self._groups.call(group, method, self.ticket, *args).result()

    def _group_for(self, item_id: str) -> int:
        """The group holding an item's shard; an unknown shard goes to a group, which says so."""
        name = str(item_id).rpartition(":")[0]
        return self._by_name.get(name, self._serving[0] if self._serving else 0)

    def _hits(self, scores: np.ndarray, owners: np.ndarray, rows: np.ndarray, ranks: np.ndarray,
              known: dict[tuple[str, int], Hit]) -> list[Hit]:
        """Hits of the final rows: from the hits the groups sent with their candidates, and for
        the rest (rows past a group's own top k) from the groups holding them, in parallel."""
        out: list[Any] = [None] * len(rows)
        for j, (owner, row) in enumerate(zip(owners, rows)):
            hit = known.get((self.manifest.shards[int(owner)].name, int(row)))
            if hit is not None:
                out[j] = replace(hit, rank=int(ranks[j]), score=float(scores[j]))
        missing = np.array([j for j, hit in enumerate(out) if hit is None], dtype=np.int64)
        groups = self._group_of[owners[missing]]
        pending = []
        for g in np.unique(groups):
            mine = missing[groups == g]
            pending.append((mine, self._groups.call(int(g), "hits", self.ticket, scores[mine], owners[mine],
                                                    rows[mine], ranks[mine])))
        for mine, p in pending:
            for j, hit in zip(mine, p.result()):
                out[j] = hit
        return out


def _stack(per_query: Sequence[Ranked], k: int) -> Ranked:
    """One (n, k) Ranked from one (1, <= k) per query, padded with -inf / -1."""
    n = len(per_query)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    owners = np.zeros((n, k), dtype=np.int64)
    rows = np.full((n, k), -1, dtype=np.int64)
    for i, r in enumerate(per_query):
        m = r.rows.shape[1]
        scores[i, :m], owners[i, :m], rows[i, :m] = r.scores[0], r.owners[0], r.rows[0]
    return Ranked(scores, owners, rows)
