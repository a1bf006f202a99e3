"""`llm2search duplicates`: groups of near-identical photos (re-saves, resizes, recompressions,
burst shots) found from the stored vectors. Exact shards (Flat) are range-searched with faiss:
every pair above the threshold, however large the group. IVF-PQ shards are searched for each
photo's nearest neighbours, re-ranked exactly. Pairs are joined into groups by union-find, so a
group is every photo linked to another of it by a chain of close pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidQueryError
from ..search.filters import SearchFilter
from ..search.searcher import SearchIndex

DEFAULT_THRESHOLD = 0.95  # cosine similarity; bench/duplicates.py measures precision and recall
QUERY_BATCH = 1024  # stored vectors searched per step


@dataclass(frozen=True)
class DuplicatesConfig:
    threshold: float = DEFAULT_THRESHOLD
    neighbors: int = 32  # per photo, for IVF-PQ indexes (Flat range search has no cap)
    folder: str | None = None  # absolute folder: only photos in it or below


@dataclass(frozen=True)
class Member:
    id: str
    path: str
    size: int
    width: int
    height: int
    format: str
    similarity: float  # cosine similarity to the group's first photo

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DuplicateGroup:
    members: tuple[Member, ...]  # largest picture first: the one to keep, if any

    def to_json(self) -> dict[str, Any]:
        return {"count": len(self.members), "photos": [m.to_json() for m in self.members]}


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def find_duplicates(index: SearchIndex, config: DuplicatesConfig = DuplicatesConfig()) -> list[DuplicateGroup]:
    """Groups of two or more live photos whose vectors are within `config.threshold` cosine of
    another photo of the group; largest groups first."""
    if not -1 <= config.threshold <= 1:
        raise InvalidQueryError(f"the threshold is a cosine similarity in [-1, 1], got {config.threshold}")
    if config.neighbors < 1:
        raise InvalidQueryError("neighbors must be at least 1")
    flt = SearchFilter(folder=config.folder) if config.folder else SearchFilter()
    offsets = np.cumsum([0] + [s.info.count for s in index.shards])
    allowed = [np.asarray(s.allowed(flt)[0]) for s in index.shards]
    ok = np.zeros(int(offsets[-1]), dtype=bool)
    for i, rows in enumerate(allowed):
        ok[offsets[i] + rows] = True
    uf = _UnionFind(len(ok))
    for i, shard in enumerate(index.shards):
        rows = allowed[i]
        for start in range(0, len(rows), QUERY_BATCH):
            part = rows[start:start + QUERY_BATCH]
            queries = np.ascontiguousarray(shard.vectors[part], dtype=np.float32)
            for a, b in _close_pairs(index, queries, offsets[i] + part, offsets, config):
                if ok[b] and a != b:
                    uf.union(int(a), int(b))
    return _groups(index, uf, np.flatnonzero(ok), offsets)


def _close_pairs(index: SearchIndex, queries: np.ndarray, ids: np.ndarray, offsets: np.ndarray,
                 config: DuplicatesConfig) -> list[tuple[int, int]]:
    """(query id, neighbour id) pairs scoring at least the threshold, in global ids."""
    pairs: list[tuple[int, int]] = []
    if index.manifest.index_type == "flat":
        # Flat shards hold the stored vectors exactly: a range search finds every close pair.
        for j, target in enumerate(index.shards):
            if not target.info.count:
                continue
            # faiss keeps scores strictly above the radius; step just below the threshold.
            lims, scores, rows = target.index.range_search(queries, float(np.nextafter(np.float32(config.threshold), -2)))
            for q in range(len(queries)):
                found = rows[lims[q]:lims[q + 1]]
                found = found[(found >= 0) & ~target.dead[np.maximum(found, 0)]]
                pairs.extend((int(ids[q]), int(offsets[j] + r)) for r in found)
        return pairs
    hits = index.search_vectors(queries, k=min(config.neighbors + 1, max(1, index.count)))
    by_name = {s.info.name: offsets[k] for k, s in enumerate(index.shards)}
    for q, row_hits in enumerate(hits):
        pairs.extend((int(ids[q]), int(by_name[h.shard] + h.row)) for h in row_hits if h.score >= config.threshold)
    return pairs


def _groups(index: SearchIndex, uf: _UnionFind, candidates: np.ndarray, offsets: np.ndarray) -> list[DuplicateGroup]:
    roots: dict[int, list[int]] = {}
    for g in candidates:
        roots.setdefault(uf.find(int(g)), []).append(int(g))
    groups = []
    for members in roots.values():
        if len(members) < 2:
            continue
        owners = np.searchsorted(offsets, members, side="right") - 1
        rows = np.asarray(members) - offsets[owners]
        hits = index.hits_at(owners, rows)
        order = sorted(range(len(hits)), key=lambda i: (-(hits[i].width * hits[i].height), -hits[i].size, hits[i].path))
        first = index.vector_at(int(owners[order[0]]), int(rows[order[0]]))
        out = []
        for i in order:
            h, v = hits[i], index.vector_at(int(owners[i]), int(rows[i]))
            out.append(Member(h.id, h.path, h.size, h.width, h.height, h.format, round(float(v @ first), 6)))
        groups.append(DuplicateGroup(tuple(out)))
    groups.sort(key=lambda g: (-len(g.members), g.members[0].path))
    return groups
