"""What `llm2search info` reports about an index. It reads the manifest and lists the index's
files, nothing else: no Arrow, numpy or model import, so it answers in a fraction of a second
at any size (bench/README.md, "Scale")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..store.manifest import Manifest, read_manifest


def index_info(index_dir: str | Path) -> dict[str, Any]:
    index_dir = Path(index_dir)
    m = read_manifest(index_dir)
    return {
        "index": str(index_dir),
        "count": m.count,
        "deleted": m.total_rows - m.count,
        "shards": len(m.shards),
        "index_type": m.index_type,
        "factory": m.factory,
        "dim": m.dim,
        "metric": m.metric,
        "model": m.model,
        "errors": _error_count(index_dir, m),
        "size_bytes": _du(index_dir),
        "created": m.created,
        "updated": m.updated,
        "generation": m.generation,
        "format_version": m.format_version,
    }


def index_errors(index_dir: str | Path) -> list[dict[str, Any]]:
    from ..store.writer import read_errors

    index_dir = Path(index_dir)
    return read_errors(index_dir, read_manifest(index_dir)).to_pylist()


def _error_count(index_dir: Path, m: Manifest) -> int:
    if not m.errors_file:
        return 0
    if m.errors_count is not None:
        return m.errors_count
    from ..store.writer import read_errors  # a manifest from before errors_count was recorded

    return read_errors(index_dir, m).num_rows


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
