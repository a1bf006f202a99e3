"""What `llm2search info` reports about an index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..store.manifest import read_manifest
from ..store.writer import read_errors


def index_info(index_dir: str | Path) -> dict[str, Any]:
    index_dir = Path(index_dir)
    m = read_manifest(index_dir)
    errors = read_errors(index_dir, m)
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
        "errors": errors.num_rows,
        "size_bytes": _du(index_dir),
        "created": m.created,
        "updated": m.updated,
        "generation": m.generation,
        "format_version": m.format_version,
    }


def index_errors(index_dir: str | Path) -> list[dict[str, Any]]:
    index_dir = Path(index_dir)
    return read_errors(index_dir, read_manifest(index_dir)).to_pylist()


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
