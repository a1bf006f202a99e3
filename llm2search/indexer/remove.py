"""`llm2search remove PATH`: drop a folder's (or one file's) entries from the index, whether or
not it still exists on disk: the way to forget a moved or deleted folder. One commit of
tombstones; the rows go at the next compaction."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import IndexCorruptError, InputPathError, reason
from ..store.manifest import read_manifest
from ..store.pathnames import display
from ..store.shard import read_shard_meta, read_tombstones
from ..store.writer import IndexWriter, read_errors
from .pipeline import canonical


@dataclass(frozen=True)
class RemoveReport:
    path: str
    removed: int  # live photos dropped
    errors_removed: int  # entries of the error list dropped
    live: int  # photos left in the index


def remove_path(path: str | Path, index_dir: str | Path, shard_size: int = 100_000) -> RemoveReport:
    """Tombstone every live entry at `path` or below it, and forget its recorded errors."""
    index_dir = Path(index_dir)
    # Both spellings: entries written before paths were canonical carry the path as given.
    targets = sorted({display(str(canonical(path))), display(os.path.abspath(os.path.expanduser(os.fspath(path))))})
    manifest = read_manifest(index_dir)
    with IndexWriter(index_dir, manifest.model, manifest.dim) as writer:
        deletions = {}
        for shard in writer.manifest.shards:
            try:
                paths = read_shard_meta(index_dir, shard, ["path"]).column("path")
                dead = read_tombstones(index_dir, shard)
            except (OSError, ValueError, pa.ArrowException) as e:
                raise IndexCorruptError(f"shard {shard.name} cannot be read ({reason(e)}); run "
                                        f"`llm2search verify --index {index_dir} --repair`") from e
            rows = np.setdiff1d(np.flatnonzero(_under(paths, targets)), dead)
            if len(rows):
                deletions[shard.name] = rows
        errors = read_errors(index_dir, writer.manifest)
        keep = ~_under(errors.column("path"), targets)
        removed = int(sum(len(r) for r in deletions.values()))
        errors_removed = int((~keep).sum())
        if not removed and not errors_removed:
            raise InputPathError(f"nothing in the index at {index_dir} is at or under {targets[0]}; "
                                 "see what is indexed with `llm2search query ... --json`")
        writer.commit(None, deletions, errors.filter(pa.array(keep)) if errors_removed else None)
        for target in targets:
            writer.record_roots([], drop=target)
        writer.compact_after_run(shard_size)
        return RemoveReport(targets[0], removed, errors_removed, writer.manifest.count)


def _under(paths: pa.ChunkedArray | pa.Array, targets: list[str]) -> np.ndarray:
    mask = np.zeros(len(paths), dtype=bool)
    for t in targets:
        prefix = t.rstrip("/\\") + os.sep
        hit = pc.or_(pc.equal(paths, t), pc.starts_with(paths, prefix))
        mask |= pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
    return mask
