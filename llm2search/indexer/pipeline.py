"""Index a folder: scan, skip what is unchanged, decode in workers, embed in batches, and commit
shards as it goes, so a killed run loses at most the last uncommitted minute of work."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from ..errors import IndexCorruptError, InputPathError, reason
from ..models.embedder import Embedder
from ..models.loading import share_cpu_with_workers
from ..models.preprocess import DEFAULT_MAX_PIXELS
from ..models.presets import resolve_model, spec_for_index
from ..models.spec import ModelSpec
from ..store.manifest import index_exists, read_manifest
from ..store.pathnames import display, to_stored
from ..store.shard import META_SCHEMA, ShardData, open_shard_vectors
from ..store.vector_index import IndexConfig
from ..store.writer import ERRORS_SCHEMA, IndexWriter, read_errors
from .changes import IndexedState, StoredEntry, load_state, under
from .decode import DecodeOptions, Decoded, decode_stream, default_workers
from .scan import FileEntry, ScanProblem, scan


@dataclass(frozen=True)
class IndexingConfig:
    """Options of one indexing run."""

    model: str | None = None  # preset, `demo` or model dir; None: the index's model, else default
    device: str | None = None  # auto: first GPU if any, else CPU
    batch_size: int | None = None  # None: 32 on the CPU, sized to free memory on a GPU
    workers: int | None = None  # decode processes; None: cores - 1; 0: decode in-process
    shard_size: int = 100_000  # rows per shard before a new one starts
    commit_seconds: float = 60.0  # a partial shard is committed at least this often
    max_pixels: int = DEFAULT_MAX_PIXELS
    retry_errors: bool = False  # retry files that failed before even if unchanged
    retrain: bool = False  # retrain the IVF-PQ quantizer from stored vectors now (else automatic)
    index: IndexConfig = field(default_factory=IndexConfig)
    progress: bool = True


@dataclass
class IndexReport:
    folder: str
    index: str
    scanned: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    reused: int = 0  # renamed or duplicate files whose stored vector was reused
    embedded: int = 0
    failed: int = 0
    known_bad: int = 0  # failed before and unchanged since: not retried
    seconds: float = 0.0
    live: int = 0
    index_type: str = ""
    warnings: list[str] = field(default_factory=list)  # e.g. damaged shards left out of compaction

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_second": round(self.images_per_second, 2)}


def index_folder(
    folder: str | Path,
    index_dir: str | Path,
    config: IndexingConfig = IndexingConfig(),
    embedder: Embedder | None = None,
) -> IndexReport:
    """Bring the index up to date with `folder`: add new files, re-embed changed ones, tombstone
    deleted ones, record unreadable ones with their reason."""
    folder = Path(os.path.abspath(os.fspath(folder)))
    index_dir = Path(index_dir)
    if not folder.exists():
        raise InputPathError(f"{folder} does not exist; give the folder of photos to index")
    if embedder is None:
        spec = _choose_model(index_dir, config.model)
        embedder = Embedder(spec, config.device)
    spec = embedder.spec
    started = time.monotonic()
    report = IndexReport(str(folder), str(index_dir))
    with IndexWriter(index_dir, spec.identity(), spec.dim, config.index) as writer:
        run = _Run(writer, embedder, spec, config, report, str(folder))
        run.execute()
        writer.maybe_train(force=config.retrain)
        writer.compact_after_run(config.shard_size)
        report.live = writer.manifest.count
        report.index_type = writer.manifest.index_type
        report.warnings = list(writer.warnings)
    report.seconds = time.monotonic() - started
    return report


def _choose_model(index_dir: Path, requested: str | None) -> ModelSpec:
    if index_exists(index_dir):
        return spec_for_index(read_manifest(index_dir).model, requested)
    return resolve_model(requested)


class _Run:
    """State of one pass over a folder."""

    def __init__(self, writer: IndexWriter, embedder: Embedder, spec: ModelSpec,
                 config: IndexingConfig, report: IndexReport, root: str):
        self.writer, self.embedder, self.spec, self.config = writer, embedder, spec, config
        self.report, self.root = report, root
        try:
            self.state: IndexedState = load_state(writer.dir, writer.manifest)
        except FileNotFoundError as e:
            raise IndexCorruptError(f"{e.filename or e} is missing from the index at {writer.dir}; "
                                    f"run `llm2search verify --index {writer.dir} --repair`") from e
        except (OSError, ValueError, pa.ArrowException) as e:
            raise IndexCorruptError(f"the index at {writer.dir} cannot be read ({reason(e)}); run "
                                    f"`llm2search verify --index {writer.dir} --repair`") from e
        self.errors = {r["path"]: r for r in read_errors(writer.dir, writer.manifest).to_pylist()}
        self.errors_dirty = False
        self.vectors: list[np.ndarray] = []
        self.rows: list[dict[str, Any]] = []
        self.pending_pixels: list[np.ndarray] = []
        self.pending_rows: list[dict[str, Any]] = []
        self.deletions: dict[str, list[int]] = {}
        self.vector_files: dict[str, np.ndarray] = {}
        self.last_commit = time.monotonic()
        self.batch_size = config.batch_size or getattr(embedder, "batch_size", lambda: 32)()

    def execute(self) -> None:
        todo, seen = self._plan()
        options = DecodeOptions(self.spec.preprocess, self.config.max_pixels)
        workers = default_workers() if self.config.workers is None else self.config.workers
        if getattr(self.embedder, "device", "cpu") == "cpu":
            share_cpu_with_workers(workers)
        progress = _progress(len(todo), self.config.progress)
        for item in decode_stream(todo, options, workers):
            self._take(item)
            progress(1)
            if len(self.pending_pixels) >= self.batch_size:
                self._encode_pending()
            if self._due():
                self._commit()
        self._encode_pending()
        for path, entry in self.state.by_path.items():
            if under(path, self.root) and path not in seen:
                self._delete(entry)
                self.report.deleted += 1
        for path in [p for p in self.errors if under(p, self.root) and p not in seen]:
            del self.errors[path]
            self.errors_dirty = True
        self._commit(final=True)
        progress(0, close=True)

    def _plan(self) -> tuple[list[FileEntry], set[str]]:
        todo: list[FileEntry] = []
        seen: set[str] = set()
        for item in scan(Path(self.root)):
            key = display(item.path)
            seen.add(key)
            if isinstance(item, ScanProblem):
                self._record_error(item.path, 0, 0, item.reason)
                continue
            self.report.scanned += 1
            old = self.state.by_path.get(key)
            if old is not None and (old.size, old.mtime_ns) == (item.size, item.mtime_ns):
                self.report.unchanged += 1
                continue
            bad = self.errors.get(key)
            if (bad is not None and not self.config.retry_errors
                    and (bad["size"], bad["mtime_ns"]) == (item.size, item.mtime_ns)):
                self.report.known_bad += 1
                continue
            todo.append(item)
        return todo, seen

    def _take(self, item: Decoded) -> None:
        entry = item.entry
        old = self.state.by_path.get(display(entry.path))
        if item.error is not None:
            self._record_error(entry.path, entry.size, entry.mtime_ns, item.error)
            self.report.failed += 1
            if old is not None:  # it changed into something unreadable: the old vector is stale
                self._delete(old)
            return
        if display(entry.path) in self.errors:
            del self.errors[display(entry.path)]
            self.errors_dirty = True
        if old is not None:
            self._delete(old)
            self.report.changed += 1
        else:
            self.report.new += 1
        shown, raw = to_stored(entry.path)
        row = {
            "path": shown, "path_bytes": raw, "size": entry.size, "mtime_ns": entry.mtime_ns,
            "content_hash": item.content_hash, "width": item.width, "height": item.height,
            "format": item.format, "exif_time": item.exif_time, "indexed_at": int(time.time()),
            "deleted": False,
        }
        stored = self.state.by_hash.get(item.content_hash or "")
        if stored is not None and not self.writer.intact(_shard_info(self.writer, stored[0])):
            stored = None  # never copy a vector out of a damaged shard: embed the file again
        if stored is not None:  # same bytes already embedded (a rename or a duplicate)
            vectors = self._stored_vectors(stored[0])
            self._add(np.asarray(vectors[stored[1]], dtype=np.float32)[None], [row])
            self.report.reused += 1
            return
        self.pending_pixels.append(item.pixels)  # type: ignore[arg-type]
        self.pending_rows.append(row)

    def _stored_vectors(self, shard_name: str) -> np.ndarray:
        if shard_name not in self.vector_files:  # one memory map per shard, not per reused file
            self.vector_files[shard_name] = open_shard_vectors(self.writer.dir, _shard_info(self.writer, shard_name))
        return self.vector_files[shard_name]

    def _encode_pending(self) -> None:
        if not self.pending_pixels:
            return
        vectors = self.embedder.embed_pixels(np.stack(self.pending_pixels))
        self._add(vectors, self.pending_rows)
        self.report.embedded += len(self.pending_rows)
        self.pending_pixels, self.pending_rows = [], []

    def _add(self, vectors: np.ndarray, rows: list[dict[str, Any]]) -> None:
        self.vectors.append(vectors.astype(np.float16))  # what the shard stores; half the RAM
        self.rows.extend(rows)

    def _delete(self, entry: StoredEntry) -> None:
        self.deletions.setdefault(entry.shard, []).append(entry.row)

    def _record_error(self, path: str, size: int, mtime_ns: int, reason: str) -> None:
        path = display(path)
        self.errors[path] = {"path": path, "size": size, "mtime_ns": mtime_ns,
                             "reason": reason, "time": int(time.time())}
        self.errors_dirty = True

    def _due(self) -> bool:
        return (len(self.rows) + len(self.pending_rows) >= self.config.shard_size
                or time.monotonic() - self.last_commit >= self.config.commit_seconds)

    def _commit(self, final: bool = False) -> None:
        self._encode_pending()
        shard = None
        if self.rows:
            meta = pa.Table.from_pylist(self.rows, schema=META_SCHEMA)
            shard = ShardData(np.concatenate(self.vectors), meta)
        if shard is None and not self.deletions and not self.errors_dirty:
            return
        errors = None
        if self.errors_dirty:
            errors = pa.Table.from_pylist(list(self.errors.values()), schema=ERRORS_SCHEMA)
        deletions = {k: np.array(v, dtype=np.int64) for k, v in self.deletions.items()}
        self.writer.commit(shard, deletions, errors)
        self.vectors, self.rows, self.deletions = [], [], {}
        self.errors_dirty = False
        self.last_commit = time.monotonic()


def _shard_info(writer: IndexWriter, name: str) -> Any:
    return next(s for s in writer.manifest.shards if s.name == name)


def _progress(total: int, enabled: bool) -> Callable[..., None]:
    if not enabled or total == 0:
        return lambda n, close=False: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def update(n: int, close: bool = False) -> None:
        if n:
            bar.update(n)
        if close:
            bar.close()

    return update
