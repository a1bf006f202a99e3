"""Shard groups: which shards of a version each group serves, and what one group replica does
with them (Ray-free; serve/ray_app.py wraps it in a deployment).

A request is pinned to one version by the router and carries a `Ticket` naming it. A replica
answers from that version, opening it on first sight (the router's own lease keeps its files
while any request uses it), and closes an older version once a newer one is open and its last
request has ended; a replica that gets no request meanwhile closes a version that is idle and no
longer current (`sweep`). So a request never sees a mix of versions, groups move to a new
version together (each as soon as the router's requests name it), and an old version's files
are released once no request needs them."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..search.filters import SearchFilter
from ..search.merge import Ranked, Scored, top_exact
from ..search.searcher import Hit, SearchIndex
from ..store.manifest import Manifest
from ..store.vector_index import IndexConfig


def assign_groups(manifest: Manifest, groups: int) -> tuple[tuple[int, ...], ...]:
    """Shard positions of each of `groups` groups, balanced by rows: the largest shard goes to
    the group with the fewest rows so far (ties: the lower group). Each group lists its shards
    in manifest order; a group may get none when there are fewer shards than groups."""
    load, members = [0] * groups, [[] for _ in range(groups)]
    for at in sorted(range(len(manifest.shards)), key=lambda i: (-manifest.shards[i].count, i)):
        g = min(range(groups), key=lambda j: (load[j], j))
        load[g] += manifest.shards[at].count
        members[g].append(at)
    return tuple(tuple(sorted(m)) for m in members)


def version_key(manifest: Manifest) -> tuple[int, str, str]:
    """What tells two versions apart (store.readers.same_version), and orders them."""
    return (manifest.generation, manifest.updated, manifest.created)


@dataclass(frozen=True)
class Ticket:
    """The version a request is pinned to: its key, and the manifest itself (or, on Ray, a
    reference to it in the object store, fetched only by a replica that has not opened it)."""

    key: tuple[int, str, str]
    manifest: Any


class GroupView:
    """One group's shards of one version. Shard positions in and out are the manifest's, so
    the router merges groups without knowing their layout."""

    def __init__(self, index_dir: Path, manifest: Manifest, positions: Sequence[int], config: IndexConfig,
                 use_gpu: bool):
        self.positions = np.asarray(positions, dtype=np.int64)  # manifest position of each local shard
        names = [manifest.shards[int(i)].name for i in self.positions]
        self.index = SearchIndex(index_dir, config=config, embedder=object(), use_gpu=use_gpu,
                                 version=manifest, shards=names)

    def candidates(self, queries: np.ndarray, k: int,
                   coarse: tuple[np.ndarray, np.ndarray] | None) -> tuple[Scored, list[Hit]]:
        """Each query's candidates (scored_candidates), and the hits of this group's own exact
        top k: most final hits are among them, so the router rarely needs a metadata hop."""
        part = self.index.scored_candidates(queries, k, coarse)
        return part._replace(owners=self._global(part.owners)), self._top_hits(top_exact(part, k))

    def filtered(self, queries: np.ndarray, k: int, flt: SearchFilter) -> tuple[list[Ranked], list[Hit]]:
        """Each query's exact top k among the rows `flt` allows, and their hits (every final hit
        of a filtered search is one of them)."""
        parts = [self.index.filtered_top(q[None], k, flt) for q in queries]
        hits = self._top_hits(Ranked(*(np.concatenate(a, axis=1) for a in zip(*parts)))) if parts else []
        return [p._replace(owners=self._global(p.owners)) for p in parts], hits

    def hits(self, scores: np.ndarray, owners: np.ndarray, rows: np.ndarray, ranks: np.ndarray) -> list[Hit]:
        local = np.searchsorted(self.positions, owners)
        return self.index.join_hits(scores, local, rows, ranks)

    def item(self, item_id: str) -> dict[str, Any]:
        return self.index.item(item_id)

    def vector(self, item_id: str) -> np.ndarray:
        return self.index.vector_by_id(item_id)

    def file_path(self, item_id: str) -> str:
        return self.index.file_path(item_id)

    def close(self) -> None:
        self.index.close()

    def _global(self, owners: np.ndarray) -> np.ndarray:
        return self.positions[owners]

    def _top_hits(self, top: Ranked) -> list[Hit]:
        """Hits of the distinct live rows in `top` (local shard positions), metadata joined."""
        keep = (top.rows >= 0) & np.isfinite(top.scores)
        pairs = np.unique(np.stack([top.owners[keep], top.rows[keep]], axis=1), axis=0).reshape(-1, 2)
        return self.index.join_hits(np.zeros(len(pairs)), pairs[:, 0], pairs[:, 1], np.zeros(len(pairs), np.int64))


@dataclass
class _Open:
    view: GroupView
    users: int = 0
    retired: bool = False
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class GroupReplica:
    """The versions one replica of group `group` (of `groups`) has open."""

    index_dir: Path
    group: int
    groups: int
    config: IndexConfig = IndexConfig()
    use_gpu: bool = False
    resolve: Callable[[Any], Manifest] = lambda manifest: manifest  # Ticket.manifest -> Manifest
    _open: dict[tuple, _Open] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def use(self, ticket: Ticket) -> Iterator[GroupView]:
        entry = self._acquire(ticket)
        try:
            yield entry.view
        finally:
            with self._lock:
                entry.users -= 1
                entry.last_used = time.monotonic()
                done = entry.retired and entry.users == 0
                if done and self._open.get(ticket.key) is entry:
                    del self._open[ticket.key]
            if done:
                entry.view.close()

    def sweep(self, current: tuple, idle_s: float) -> None:
        """Close versions other than `current` (the key of the manifest on disk) that no request
        has used for `idle_s`: a request that still names one opens it again."""
        now = time.monotonic()
        with self._lock:
            idle = [k for k, e in self._open.items() if k != current and e.users == 0 and now - e.last_used >= idle_s]
            closing = [self._open.pop(k) for k in idle]
        for entry in closing:
            entry.view.close()

    def open_keys(self) -> list[tuple]:
        with self._lock:
            return sorted(self._open)

    def _acquire(self, ticket: Ticket) -> _Open:
        # Opened under the lock: versions change rarely, and a second request for the same new
        # version must wait for the first one's open rather than open it again.
        with self._lock:
            entry = self._open.get(ticket.key)
            if entry is None:
                manifest = self.resolve(ticket.manifest)
                positions = assign_groups(manifest, self.groups)[self.group]
                entry = _Open(GroupView(self.index_dir, manifest, positions, self.config, self.use_gpu))
                newest = max(self._open, default=ticket.key)
                entry.retired = ticket.key < newest  # a late request for an older version
                self._open[ticket.key] = entry
                closing = [] if entry.retired else self._retire_older(ticket.key)
            else:
                closing = []
            entry.users += 1
        for old in closing:
            old.view.close()
        return entry

    def _retire_older(self, key: tuple) -> list[_Open]:
        """Mark versions older than `key` retired; returns those no request uses any more."""
        idle = []
        for other in [k for k in self._open if k < key]:
            old = self._open[other]
            old.retired = True
            if old.users == 0:
                idle.append(old)
                del self._open[other]
        return idle


class LocalGroups:
    """The groups in this process, called like the Ray deployments (tests; no Ray needed)."""

    def __init__(self, index_dir: Path, groups: int, config: IndexConfig = IndexConfig()):
        self.count = groups
        self.replicas = [GroupReplica(Path(index_dir), g, groups, config) for g in range(groups)]

    def ticket(self, manifest: Manifest) -> Ticket:
        return Ticket(version_key(manifest), manifest)

    def call(self, group: int, method: str, ticket: Ticket, *args: Any) -> Future:
        done: Future = Future()
        try:
            done.set_result(call_view(self.replicas[group], method, ticket, *args))
        except Exception as e:  # noqa: BLE001 - delivered to the caller, as Ray would
            done.set_exception(e)
        return done


def call_view(replica: GroupReplica, method: str, ticket: Ticket, *args: Any) -> Any:
    """Run `method` of the replica's view of `ticket`'s version (prepare: just open it)."""
    with replica.use(ticket) as view:
        return None if method == "prepare" else getattr(view, method)(*args)
