"""The manifest: the one commit point of an index. Anything it does not name is crash garbage."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
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
ERRORS = "errors.parquet"  # the error list's name before lists were content-named
ERRORS_PREFIX = "errors-"  # errors-<sha256[:16]>.parquet
METRIC = "inner_product"


# Names the manifest may use. Anything else is refused, so a damaged or hostile manifest can
# never make a reader open, or the garbage collector delete, a file outside the index.
SHARD_NAME = re.compile(r"[0-9]{6,}-[0-9a-f]{8}")
TOMBSTONES_NAME = re.compile(r"tombstones-[0-9a-f]{12}\.npy")
TRAINED_NAME = re.compile(r"trained(-[0-9a-f]{16})?\.faiss")
SHARD_FILES = ("index.faiss", "meta.parquet", "vectors.npy")
OPTIONAL_SHARD_FILES = ("meta.arrow",)  # the memory-mapped metadata searches read (store/meta_map.py)
ERRORS_NAME = re.compile(r"errors(-[0-9a-f]{16})?\.parquet")
SHA256 = re.compile(r"[0-9a-f]{64}")
JOB_ID = re.compile(r"[0-9a-f]{16}")  # a distributed run's folder under jobs/ (store/jobs.py)
JOB_STATE_NAME = re.compile(r"state-[0-9a-f]{16}\.json")


@dataclass(frozen=True)
class ShardInfo:
    name: str
    count: int  # rows in meta.parquet / vectors in index.faiss
    files: dict[str, str]  # file name -> sha256, checked by `llm2search verify`
    tombstones: str | None = None  # file of deleted row ids (int64 .npy), copy-on-write
    deleted: int = 0
    # Byte size of each file in `files` and of the tombstone file (checked on every open);
    # empty in manifests written before sizes were recorded.
    sizes: dict[str, int] = field(default_factory=dict)
    tombstones_sha256: str | None = None  # None in manifests written before it was recorded

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
    errors_sha256: str | None = None  # with its size; None in older manifests
    errors_size: int | None = None
    errors_count: int | None = None  # rows of the error list, so `info` needs no Parquet reader
    roots: tuple[str, ...] = ()  # canonical folders indexed into it (files are served from these)
    # An unfinished distributed run: {"id", "file", "sha256", "size"} of its state file
    # (store/jobs.py). Absent in older manifests, and dropped by every commit that does not name it.
    job: dict[str, Any] | None = None
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
    def from_json(cls, d: Any) -> "Manifest":
        """A manifest from its JSON, every field checked: ValueError says what is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"it holds {type(d).__name__}, not an object")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexCorruptError(
                f"index format version {version!r} is not supported by this llm2search "
                f"(it reads version {FORMAT_VERSION}); upgrade llm2search or rebuild the index"
            )
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}  # fields of newer versions are ignored
        _want(d, "model", dict, required=True)
        _want(d, "dim", int, required=True)
        if d["dim"] < 1:
            raise ValueError(f"dim is {d['dim']}")
        for key in ("index_type", "factory", "created", "updated", "metric"):
            _want(d, key, str)
        if d.get("index_type", "flat") not in ("flat", "ivfpq"):
            raise ValueError(f"index_type is {d['index_type']!r}")
        _want(d, "generation", int)
        _want(d, "trained", dict)
        if d.get("trained") is not None:
            t = d["trained"]
            if not isinstance(t.get("file"), str) or not TRAINED_NAME.fullmatch(t["file"]):
                raise ValueError(f"trained.file is {t.get('file')!r}")
            _want(t, "sha256", str)
            _want(t, "size", int)
            _want(t, "trained_on", int)
        _want(d, "errors_file", str)
        if d.get("errors_file") is not None and not ERRORS_NAME.fullmatch(str(d["errors_file"])):
            raise ValueError(f"errors_file is {d['errors_file']!r}")
        _want(d, "errors_sha256", str)
        _want(d, "errors_size", int)
        _want(d, "errors_count", int)
        _want(d, "roots", list)
        if not all(isinstance(r, str) for r in d.get("roots") or ()):
            raise ValueError("roots holds something that is not a path")
        _want(d, "job", dict)
        if d.get("job") is not None:
            _check_job(d["job"])
        _want(d, "shards", list)
        shards = tuple(_shard_from_json(i, s) for i, s in enumerate(d.get("shards") or ()))
        if len({s.name for s in shards}) != len(shards):
            raise ValueError("a shard is listed twice")
        if d.get("index_type") == "ivfpq" and d.get("trained") is None:
            raise ValueError("an ivfpq index without its trained file")
        return cls(**{**d, "shards": shards, "roots": tuple(d.get("roots") or ())})


def _want(d: dict[str, Any], key: str, kind: type, required: bool = False) -> None:
    value = d.get(key)
    if value is None:
        if required:
            raise ValueError(f"{key} is missing")
        return
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{key} is {type(value).__name__}, not {kind.__name__}")


def _check_job(job: dict[str, Any]) -> None:
    if not isinstance(job.get("id"), str) or not JOB_ID.fullmatch(job["id"]):
        raise ValueError(f"job.id is {job.get('id')!r}")
    if not isinstance(job.get("file"), str) or not JOB_STATE_NAME.fullmatch(job["file"]):
        raise ValueError(f"job.file is {job.get('file')!r}")
    if not isinstance(job.get("sha256"), str) or not SHA256.fullmatch(job["sha256"]):
        raise ValueError("job.sha256 is not a sha256")
    _want(job, "size", int)


def _shard_from_json(i: int, s: Any) -> ShardInfo:
    if not isinstance(s, dict):
        raise ValueError(f"shard {i} is {type(s).__name__}, not an object")
    if not isinstance(s.get("name"), str) or not SHARD_NAME.fullmatch(s["name"]):
        raise ValueError(f"shard {i} has the name {s.get('name')!r}")
    where = f"shard {s['name']}"
    _want(s, "count", int, required=True)
    _want(s, "deleted", int)
    _want(s, "files", dict, required=True)
    _want(s, "sizes", dict)
    _want(s, "tombstones", str)
    _want(s, "tombstones_sha256", str)
    files, sizes = s["files"], s.get("sizes") or {}
    if (not set(SHARD_FILES) <= set(files) <= set(SHARD_FILES + OPTIONAL_SHARD_FILES)
            or not all(isinstance(v, str) and SHA256.fullmatch(v) for v in files.values())):
        raise ValueError(f"{where} does not name its three files with their sha256")
    if s.get("tombstones") is not None and not TOMBSTONES_NAME.fullmatch(s["tombstones"]):
        raise ValueError(f"{where} names the tombstone file {s['tombstones']!r}")
    allowed = set(files) | ({s["tombstones"]} if s.get("tombstones") else set())
    if not set(sizes) <= allowed or not all(isinstance(v, int) and v >= 0 for v in sizes.values()):
        raise ValueError(f"{where} records sizes of unknown files")
    deleted = s.get("deleted") or 0
    if s["count"] < 0 or not 0 <= deleted <= s["count"]:
        raise ValueError(f"{where} has count {s['count']} and deleted {deleted}")
    known = {f.name for f in fields(ShardInfo)}
    return ShardInfo(**{k: v for k, v in s.items() if k in known})


def manifest_path(index_dir: Path) -> Path:
    return Path(index_dir) / MANIFEST


def index_exists(index_dir: Path) -> bool:
    return manifest_path(index_dir).is_file()


def read_manifest(index_dir: Path) -> Manifest:
    index_dir = Path(index_dir)
    path = manifest_path(index_dir)
    if index_dir.exists() and not index_dir.is_dir():
        raise IndexNotFoundError(f"{index_dir} is a file, not an index directory; give --index a directory")
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise IndexNotFoundError(
            f"no index at {index_dir}; build one with `llm2search index PHOTO_DIR --index {index_dir}`"
        ) from e
    except OSError as e:
        raise IndexCorruptError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        return Manifest.from_json(json.loads(raw.decode("utf-8")))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, RecursionError) as e:
        raise IndexCorruptError(
            f"{path} is not a valid manifest ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "restore it from a backup, or rebuild the index into a new --index directory"
        ) from e


def commit_manifest(index_dir: Path, manifest: Manifest, keep_job: bool = False) -> Manifest:
    """Atomically publish `manifest`; returns it with its new generation and time. An unfinished
    distributed run survives only commits that say so (`keep_job`): any other change ends it."""
    committed = replace(manifest, generation=manifest.generation + 1, updated=_now(),
                        job=manifest.job if keep_job else None)
    write_json_atomic(manifest_path(index_dir), committed.to_json())
    return committed


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
