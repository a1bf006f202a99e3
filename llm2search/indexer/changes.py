"""What the index already holds for a folder: live entries by path, stored vectors by content."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..store.manifest import Manifest
from ..store.shard import read_shard_meta, read_tombstones


@dataclass(frozen=True)
class StoredEntry:
    shard: str
    row: int
    size: int
    mtime_ns: int
    content_hash: str


@dataclass
class IndexedState:
    by_path: dict[str, StoredEntry] = field(default_factory=dict)  # live rows
    by_hash: dict[str, tuple[str, int]] = field(default_factory=dict)  # any stored row


def load_state(index_dir: Path, manifest: Manifest) -> IndexedState:
    state = IndexedState()
    for shard in manifest.shards:
        meta = read_shard_meta(index_dir, shard, ["path", "size", "mtime_ns", "content_hash"])
        dead = np.zeros(shard.count, dtype=bool)
        dead[read_tombstones(index_dir, shard)] = True
        cols = [meta.column(c).to_pylist() for c in ("path", "size", "mtime_ns", "content_hash")]
        for row, (path, size, mtime, digest) in enumerate(zip(*cols)):
            state.by_hash.setdefault(digest, (shard.name, row))
            if not dead[row]:
                state.by_path[path] = StoredEntry(shard.name, row, size, mtime, digest)
    return state


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/\\") + ("/" if "/" in root else "\\"))
