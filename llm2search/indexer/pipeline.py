"""Index a folder: scan, skip what is unchanged, decode in workers, embed in batches, and commit
shards as it goes, so a killed run loses at most the last uncommitted minute of work."""

from __future__ import annotations

import os
import stat
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa

from ..errors import IndexCorruptError, InputPathError, reason
from ..paths import decode_log_path
from ..models.preprocess import DEFAULT_MAX_PIXELS
from ..models.presets import resolve_model, spec_for_index
from ..models.spec import ModelSpec
from ..store.manifest import index_exists, read_manifest
from ..store.memory import lean_memory, release_freed_memory
from ..store.columns import empty_table
from ..store.shard import META_SCHEMA, ShardData, open_shard_vectors
from ..store.vector_file import VectorSpool
from ..store.vector_index import IndexConfig
from ..store.writer import ERRORS_SCHEMA, IndexWriter, read_errors
from .changes import EMBED_SCHEMA, ChangePlan, plan_changes, scan_table, under
from .decode import DEFAULT_MAX_FILE_BYTES, DecodeOptions, decode_stream, default_workers
from .exclude import ExcludeConfig, ExcludeRules
from .failures import FailureList
from .plan_files import PlanFiles
from .rows import meta_row
from .gpu_decode import decoder_for, gpu_jpeg_stream, gpu_possible
from .scan import IMAGE_EXTENSIONS, file_kind, scan, scan_path
from .state import IndexState

if TYPE_CHECKING:
    from ..models.embedder import Embedder

SMALL_RUN = 32  # files to decode below which a run decodes in-process
GATHER_BLOCK_ROWS = 4096  # rows of the next shard held as one float16 block and one Arrow table


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
    max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES  # larger files are recorded, never read
    retry_errors: bool = False  # retry files that failed before even if unchanged
    retrain: bool = False  # retrain the IVF-PQ quantizer from stored vectors now (else automatic)
    index: IndexConfig = field(default_factory=IndexConfig)
    exclude: ExcludeConfig = field(default_factory=ExcludeConfig)
    progress: bool = True
    # Index on a Ray cluster instead of this host: "auto", an address, or a cluster.RayConfig
    # (llm2search.index_folder and the CLI hand such a run to llm2search.cluster).
    ray: Any = None
    gpu_decode: bool = True  # decode JPEGs on the GPU (batched nvJPEG) when the model runs on one


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
    training: dict[str, Any] | None = None  # when this run (re)trained IVF-PQ: sizes and timings

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
    deleted ones, record unreadable ones with their reason. The model is loaded only once a file
    needs embedding, so a rerun that finds nothing new imports neither torch nor the model."""
    return _index(folder, index_dir, config, embedder, train=True, compact=True)


def canonical(path: str | Path) -> Path:
    """The absolute path with symlinks resolved: indexing a folder through a symlink, or by a
    relative path, names its photos exactly as indexing it directly does."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def check_root(folder: Path, index_dir: Path) -> None:
    """One clear error for a folder that cannot be indexed, saying how to drop a vanished one."""
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        hint = ""
        if index_exists(index_dir):
            hint = (f"; if it was moved or deleted, drop its photos from the index with "
                    f"`llm2search remove {folder} --index {index_dir}`")
        raise InputPathError(f"{folder} does not exist{hint}") from None
    except NotADirectoryError:
        raise InputPathError(f"{folder} is not a folder: a part of the path is a file") from None
    except OSError as e:
        raise InputPathError(f"cannot read {folder}: {e.strerror or e}") from e
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise InputPathError(f"{folder} is {file_kind(st.st_mode)}, not a folder or an image file")


def index_paths(
    folder: str | Path,
    paths: list[str],
    index_dir: str | Path,
    config: IndexingConfig = IndexingConfig(),
    embedder: Embedder | None = None,
    compact: bool = True,
) -> IndexReport:
    """Bring the index up to date with only `paths` under `folder` (files or folders that were
    created, changed, moved or deleted; `watch` passes what the file system reported). Each path
    is rescanned as its own root: what exists is indexed as by `index_folder`, what is gone is
    dropped, in the same commits. `folder`'s exclusion rules apply."""
    given = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    return _index(folder, index_dir, config, embedder, train=False, compact=compact,
                  only=lambda root: _disjoint(root, given, paths))


def _index(folder: str | Path, index_dir: str | Path, config: IndexingConfig, embedder: Embedder | None,
           train: bool, compact: bool, only: Callable[[Path], list[str]] | None = None) -> IndexReport:
    """One indexing run over `folder` (or only the roots `only` names under it), committed."""
    folder = canonical(folder)  # one photo, one entry, whatever path led to it
    index_dir = Path(index_dir)
    check_root(folder, index_dir)
    roots = only(folder) if only is not None else None
    spec = embedder.spec if embedder is not None else choose_model(index_dir, config.model)
    started = time.monotonic()
    report = IndexReport(str(folder), str(index_dir))
    # lean_memory: what a phase frees goes back to the OS before the next (store/memory.py)
    with lean_memory(), IndexWriter(index_dir, spec.identity(), spec.dim, config.index) as writer:
        run = _Run(writer, spec, config, report, str(folder), embedder, roots)
        try:
            run.execute()
        finally:
            run.gathering.close()  # uncommitted rows of a failed run: its scratch file goes
        writer.record_roots([str(folder)] + sorted(run.linked))
        release_freed_memory()  # the plan's Arrow pages, before training and compaction allocate
        if train:
            writer.maybe_train(force=config.retrain)
        if compact:
            writer.compact_after_run(config.shard_size)
        report.live = writer.manifest.count
        report.index_type = writer.manifest.index_type
        report.warnings = list(writer.warnings)
        report.training = writer.training
    report.seconds = time.monotonic() - started
    return report


def _disjoint(folder: Path, given: str, paths: list[str]) -> list[str]:
    """The paths under `folder`, without those inside another one of them (rescanned anyway).
    A path spelled under `given` (the folder as the caller named it, through a symlink, say)
    is renamed under the canonical `folder`; only the folder part is resolved, so a file that
    is itself a symlink keeps the name the scan gives it."""
    root = str(folder)
    kept: list[str] = []
    for p in sorted({_under_root(os.path.abspath(p), root, given) for p in paths}):
        if under(p, root) and not any(under(p, k) for k in kept):
            kept.append(p)
    return kept


def _under_root(path: str, root: str, given: str) -> str:
    if given != root and not under(path, root) and under(path, given):
        return root + path[len(given):]
    return path


def _target_scan(root: str, target: str, rules: ExcludeRules, linked: set[str] | None) -> Any:
    """What a rescan of one changed path finds: nothing when it is gone or excluded. A path
    that is not a folder is judged as the full scan judges it (a FIFO or a broken symlink is
    recorded with its reason, never opened)."""
    if target == root:
        yield from scan(Path(root), rules, linked)
    elif rules.excluded_below_root(target):
        return
    elif os.path.isdir(target):
        try:
            yield from scan(Path(target), rules, linked)
        except OSError:  # gone between the check and the stat: planned as deleted
            return
    elif os.path.splitext(target)[1].lower() in IMAGE_EXTENSIONS:
        found = scan_path(target)
        if found is not None:
            yield found


def plan_folder(writer: IndexWriter, folder: str, retry_errors: bool = False,
                exclude: ExcludeConfig = ExcludeConfig(), target: str | None = None,
                state: IndexState | None = None, linked: set[str] | None = None) -> ChangePlan:
    """Scan `folder` (or only `target` below it, with `folder`'s exclusion rules) and compare it
    with the writer's current index (see changes.plan_changes); real folders reached through
    directory symlinks are added to `linked`."""
    if state is None:
        state = _load_state(writer)
    rules = ExcludeRules(folder, exclude)
    items = scan(Path(folder), rules, linked) if target is None else _target_scan(folder, target, rules, linked)
    return plan_changes(scan_table(items), state, target or folder, read_errors(writer.dir, writer.manifest),
                        retry_errors)


def _load_state(writer: IndexWriter) -> IndexState:
    try:
        return IndexState.load(writer.dir, writer.manifest)
    except FileNotFoundError as e:
        raise IndexCorruptError(f"{e.filename or e} is missing from the index at {writer.dir}; "
                                f"run `llm2search verify --index {writer.dir} --repair`") from e
    except (OSError, ValueError, pa.ArrowException) as e:
        raise IndexCorruptError(f"the index at {writer.dir} cannot be read ({reason(e)}); run "
                                f"`llm2search verify --index {writer.dir} --repair`") from e


def choose_model(index_dir: Path, requested: str | None) -> ModelSpec:
    if index_exists(index_dir):
        return spec_for_index(read_manifest(index_dir).model, requested)
    return resolve_model(requested)


class _Run:
    """State of one pass over a folder: the plan, and the work not yet committed."""

    def __init__(self, writer: IndexWriter, spec: ModelSpec, config: IndexingConfig,
                 report: IndexReport, root: str, embedder: Any | None, targets: list[str] | None = None):
        self.writer, self.spec, self.config = writer, spec, config
        self.report, self.root = report, root
        self.targets = targets  # None: the whole root; else only these paths are rescanned
        self._embedder = embedder
        self.failures = FailureList(read_errors(writer.dir, writer.manifest))
        self.gathering = _Gathering(writer.dir, spec.dim)
        self.pending_pixels: list[np.ndarray] = []
        self.pending_rows: list[dict[str, Any]] = []
        self.deletions: dict[str, list[np.ndarray]] = {}
        self.vector_files: dict[str, np.ndarray] = {}
        self.last_commit = time.monotonic()
        self._batch_size = config.batch_size
        self._lookup: Any = None
        self.plan: ChangePlan | None = None
        self.linked: set[str] = set()  # real folders reached through directory symlinks

    @property
    def embedder(self) -> Any:
        """The model, loaded on first use (torch is imported here, not before)."""
        if self._embedder is None:
            from ..models.embedder import Embedder

            self._embedder = Embedder(self.spec, self.config.device)
        return self._embedder

    @property
    def batch_size(self) -> int:
        if self._batch_size is None:
            self._batch_size = getattr(self.embedder, "batch_size", lambda: 32)()
        return self._batch_size

    def execute(self) -> None:
        if self.targets is None:
            self._execute(plan_folder(self.writer, self.root, self.config.retry_errors, self.config.exclude,
                                      linked=self.linked))
        else:
            # Disjoint targets: their plans touch different rows, so one loaded state serves all.
            state = _load_state(self.writer)
            for target in self.targets:
                self._execute(plan_folder(self.writer, self.root, self.config.retry_errors,
                                          self.config.exclude, target, state, self.linked))
        self._commit(final=True)

    def _execute(self, plan: ChangePlan) -> None:
        files = PlanFiles(plan.embed, self.writer.dir)  # spilled to disk when long
        if files.spilled:  # the plan keeps no copy of the list, and its pages go back to the OS
            plan = replace(plan, embed=empty_table(EMBED_SCHEMA))
            release_freed_memory()
        with files:
            self._run_plan(plan, files)

    def _run_plan(self, plan: ChangePlan, files: PlanFiles) -> None:
        self.plan = plan
        self.report.scanned += plan.scanned
        self.report.unchanged += plan.unchanged
        self.report.known_bad += plan.known_bad
        for path, reason in zip(*(plan.problems.column(c).to_pylist() for c in ("path", "reason"))):
            self.failures.record(path, 0, 0, reason)
        if files.rows:
            self._decode_and_embed(files)
        for shard, rows in plan.deleted.items():
            self.deletions.setdefault(shard, []).append(rows)
        self.report.deleted += plan.deleted_count
        self.failures.drop(plan.stale_errors)
        self.plan = None  # its tables (the files it embedded, the index's live rows) are not needed
        # by the commits, training and compaction that follow

    def _decode_and_embed(self, files: PlanFiles) -> None:
        options = DecodeOptions(self.spec.preprocess, self.config.max_pixels,
                                max_file_bytes=self.config.max_file_bytes, log_path=str(decode_log_path()))
        workers = default_workers() if self.config.workers is None else self.config.workers
        if files.rows < SMALL_RUN:
            workers = 0  # starting worker processes costs more than decoding a few files
        self._workers = workers
        progress = _progress(files.rows, self.config.progress)
        # Only a run that may use a GPU asks for the model's device and batch here (which loads
        # torch); a rerun that only re-hashes renamed files must not.
        maybe_gpu = self._embedder is not None or gpu_possible(self.config.device)
        decoder = decoder_for(getattr(self.embedder, "device", "cpu")) if maybe_gpu and self.config.gpu_decode else None
        if decoder is not None:
            options = replace(options, gpu_jpeg=True)
        # Read ahead at least one model batch (up to 512 on a GPU), so the GPU never waits for refills.
        items = decode_stream(iter(files), options, workers, min_in_flight=self.batch_size if maybe_gpu else 0)
        if decoder is not None:
            items = gpu_jpeg_stream(items, options, decoder)
        for item in items:
            self._take(item)
            progress(1)
            if self.pending_pixels and len(self.pending_pixels) >= self.batch_size:
                self._encode_pending()
            if self._due():
                self._commit()
        self._encode_pending()
        progress(0, close=True)

    def _take(self, item: Any) -> None:
        entry = item.entry
        old = entry.replaces
        if item.error is not None:
            self.failures.record(entry.path, entry.size, entry.mtime_ns, item.error)
            self.report.failed += 1
            if old is not None:  # it changed into something unreadable: the old vector is stale
                self._delete(old)
            return
        self.failures.clear(entry.path)
        if old is not None:
            self._delete(old)
            self.report.changed += 1
        else:
            self.report.new += 1
        row = meta_row(item)
        assert self.plan is not None  # files are embedded while their plan executes
        stored = self.plan.vectors_by_hash().find(item.content_hash)
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
        embedder = self.embedder
        if not getattr(self, "_cpu_shared", False) and getattr(embedder, "device", "cpu") == "cpu":
            from ..models.loading import share_cpu_with_workers

            share_cpu_with_workers(getattr(self, "_workers", 0))
            self._cpu_shared = True
        vectors = embedder.embed_pixels(self.pending_pixels)  # stacked once, by the encoder
        self._add(vectors, self.pending_rows)
        self.report.embedded += len(self.pending_rows)
        self.pending_pixels, self.pending_rows = [], []

    def _add(self, vectors: np.ndarray, rows: list[dict[str, Any]]) -> None:
        self.gathering.add(vectors, rows)

    def _delete(self, old: tuple[str, int]) -> None:
        self.deletions.setdefault(old[0], []).append(np.array([old[1]], dtype=np.int64))

    def _due(self) -> bool:
        return (self.gathering.rows + len(self.pending_rows) >= self.config.shard_size
                or time.monotonic() - self.last_commit >= self.config.commit_seconds)

    def _commit(self, final: bool = False) -> None:
        self._encode_pending()
        gathering = self.gathering
        try:
            shard = gathering.shard() if gathering.rows else None
            if shard is None and not self.deletions and not self.failures.dirty:
                return
            errors = self.failures.table() if self.failures.dirty else None
            deletions = {k: np.concatenate(v).astype(np.int64) for k, v in self.deletions.items()}
            self.writer.commit(shard, deletions, errors)
            if errors is not None:
                self.failures.committed()
            self.gathering, self.deletions = _Gathering(self.writer.dir, self.spec.dim), {}
            self.last_commit = time.monotonic()
        finally:
            if self.gathering is not gathering:  # committed: its rows are in a shard now
                gathering.close()
        release_freed_memory()  # the shard's metadata and write buffers, before the next one


class _Gathering:
    """The next shard's rows until the commit: the vectors appended to a float16 scratch file
    in the index directory (VectorSpool: up to a shard of them, 256 MB at 100k x 1280, would
    otherwise sit in RAM), the metadata as Arrow tables of GATHER_BLOCK_ROWS rows (a dict per
    row had cost ~1.5 KB). The shard is written from the file a chunk at a time."""

    def __init__(self, directory: Path, dim: int) -> None:
        self.rows = 0
        self._directory, self._dim = directory, dim
        self._spool: VectorSpool | None = None  # opened by the first row
        self._meta: list[pa.Table] = []
        self._open_rows: list[dict[str, Any]] = []  # the metadata block being filled

    def add(self, vectors: np.ndarray, rows: list[dict[str, Any]]) -> None:
        if self._spool is None:
            self._spool = VectorSpool(self._directory, self._dim)
        self._spool.append(vectors)  # as float16, what the shard stores
        self._open_rows.extend(rows)
        self.rows += len(rows)
        if len(self._open_rows) >= GATHER_BLOCK_ROWS:
            self._close_block()

    def shard(self) -> ShardData:
        """The gathered rows; valid until close()."""
        self._close_block()
        assert self._spool is not None, "shard() of an empty gathering"
        return ShardData(self._spool, pa.concat_tables(self._meta).combine_chunks())

    def close(self) -> None:
        """Drop the scratch file (its pages go with it)."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _close_block(self) -> None:
        if self._open_rows:
            self._meta.append(pa.Table.from_pylist(self._open_rows, schema=META_SCHEMA))
            self._open_rows = []


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
