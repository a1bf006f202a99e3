"""The manifest: the one commit point of an index. Anything it does not name is crash garbage."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import IndexCorruptError, IndexNotFoundError
from .atomic import write_json_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAINED = "trained.faiss"
TRAINED_PREFIX = "trained-"  # trained-<sha256[:16]>.faiss: the empty IVF-PQ every shard copies
SHARDS = "shards"
ERRORS = "errors.parquet"
METRIC = "inner_product"


@dataclass(frozen=True)
class ShardInfo:
    name: str
    count: int  # rows in meta.parquet / vectors in index.faiss
    files: dict[str, str]  # file name -> sha256, checked by `info --verify`
    tombstones: str | None = None  # file of deleted row ids (int64 .npy), copy-on-write
    deleted: int = 0

    @property
    def live(self) -> int:
        return self.count - self.deleted


@dataclass(frozen=True)
class Manifest:
    model: dict[str, Any]  # ModelSpec.identity() of the model that made every vector
    dim: int
    index_type: str = "flat"  # "flat" (exact) or "ivfpq" (trained.faiss shared by all shards)
    factory: str = "Flat"  # faiss index_factory string of every shard
    trained: dict[str, Any] | None = None  # {"file", "sha256", "trained_on", "factory"} (ivfpq)
    shards: tuple[ShardInfo, ...] = ()
    errors_file: str | None = None  # errors.parquet when any file failed
    created: str = field(default_factory=lambda: _now())
    updated: str = field(default_factory=lambda: _now())
    generation: int = 0  # bumped on every commit
    format_version: int = FORMAT_VERSION
    metric: str = METRIC

    @property
    def count(self) -> int:
        return sum(s.live for s in self.shards)

    @property
    def total_rows(self) -> int:
        return sum(s.count for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shards"] = [asdict(s) for s in self.shards]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Manifest":
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexCorruptError(
                f"index format version {version} is not supported by this llm2search "
                f"(it reads version {FORMAT_VERSION}); upgrade llm2search or rebuild the index"
            )
        shards = tuple(ShardInfo(**s) for s in d.get("shards", []))
        return cls(**{**d, "shards": shards})


def manifest_path(index_dir: Path) -> Path:
    return Path(index_dir) / MANIFEST


def index_exists(index_dir: Path) -> bool:
    return manifest_path(index_dir).is_file()


def read_manifest(index_dir: Path) -> Manifest:
    path = manifest_path(index_dir)
    if not path.is_file():
        raise IndexNotFoundError(
            f"no index at {index_dir}; build one with `llm2search index PHOTO_DIR --index {index_dir}`"
        )
    try:
        return Manifest.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise IndexCorruptError(f"{path} is not a valid manifest: {e}") from e


def commit_manifest(index_dir: Path, manifest: Manifest) -> Manifest:
    """Atomically publish `manifest`; returns it with its new generation and time."""
    committed = replace(manifest, generation=manifest.generation + 1, updated=_now())
    write_json_atomic(manifest_path(index_dir), committed.to_json())
    return committed


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
