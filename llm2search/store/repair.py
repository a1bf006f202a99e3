"""`llm2search verify --repair`: make a damaged index whole again without guessing. A shard whose
rows cannot be trusted is dropped (its photos are re-embedded by the next `llm2search index` of
their folders, which sees them as new); a shard whose only damage is its faiss index gets a new
one from its stored vectors; a damaged quantizer is retrained from the stored vectors; a damaged
error list is dropped (those files are retried). One manifest commit, under the writer lock."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .manifest import commit_manifest, read_manifest
from .meta_map import META_MAP_FILE
from .shard import INDEX_FILE, read_shard_meta, reindex_shard
from .verify import Problem, verify_index
from .writer import IndexWriter, collect_garbage


@dataclass
class RepairReport:
    problems: list[Problem] = field(default_factory=list)  # what verify found
    dropped: dict[str, int] = field(default_factory=dict)  # shard -> live photos dropped
    rebuilt: list[str] = field(default_factory=list)  # shards given a new faiss index
    retrained: bool = False
    errors_dropped: bool = False
    folders: list[str] = field(default_factory=list)  # where the dropped photos were (when known)

    @property
    def changed(self) -> bool:
        return bool(self.dropped or self.rebuilt or self.retrained or self.errors_dropped)

    def to_json(self) -> dict[str, Any]:
        return {"dropped": self.dropped, "rebuilt": self.rebuilt, "retrained": self.retrained,
                "errors_dropped": self.errors_dropped, "folders": self.folders,
                "reembed": sum(self.dropped.values())}


def repair_index(index_dir: Path) -> RepairReport:
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    with IndexWriter(index_dir, manifest.model, manifest.dim) as writer:
        found = verify_index(index_dir)  # again, under the lock: nobody else writes now
        report = RepairReport(problems=found.problems)
        if found.ok:
            return report
        m = writer.manifest
        by_shard: dict[str, list[Problem]] = {}
        for p in found.problems:
            by_shard.setdefault(p.shard or "", []).append(p)
        loose = by_shard.pop("", [])
        trained_bad = any(m.trained and p.file == m.trained.get("file") for p in loose)
        report.errors_dropped = any(p.file == m.errors_file for p in loose)
        shards = []
        for shard in m.shards:
            problems = by_shard.get(shard.name)
            if not problems:
                shards.append(shard)
            elif all(p.file.endswith(("/" + INDEX_FILE, "/" + META_MAP_FILE)) for p in problems):
                # Both are rebuilt from the shard's vectors and meta.parquet (reindex_shard).
                if trained_bad:
                    shards.append(shard)  # retraining below gives it a new index anyway
                else:
                    shards.append(reindex_shard(index_dir, shard, writer._next_name(), writer._trained_index()))
                report.rebuilt.append(shard.name)
            else:
                report.dropped[shard.name] = shard.live
                report.folders += _folders(index_dir, shard)
        report.folders = sorted(set(report.folders))
        updates: dict[str, Any] = {"shards": tuple(shards)}
        if report.errors_dropped:
            updates.update(errors_file=None, errors_sha256=None, errors_size=None, errors_count=None)
        writer.manifest = commit_manifest(index_dir, replace(m, **updates))
        if trained_bad:
            writer._trained = None
            if not writer.maybe_train(force=True):  # too few vectors left to train: exact search
                flat = [reindex_shard(index_dir, s, writer._next_name(), None) for s in writer.manifest.shards]
                writer.manifest = commit_manifest(index_dir, replace(
                    writer.manifest, shards=tuple(flat), index_type="flat", factory="Flat", trained=None))
            report.retrained = True
        collect_garbage(index_dir, writer.manifest)
    return report


def _folders(index_dir: Path, shard: Any) -> list[str]:
    """The folders a dropped shard's photos were in, when its metadata can still be read."""
    try:
        paths = read_shard_meta(index_dir, shard, ["path"]).column("path").to_pylist()
    except Exception:  # noqa: BLE001 - the metadata may be what is damaged
        return []
    return sorted({os.path.dirname(p) for p in paths if isinstance(p, str)})[:20]


