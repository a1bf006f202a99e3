"""The only code that changes an index on disk. Every change is a new shard or tombstone file
followed by one atomic manifest commit; a kill at any moment leaves the last commit intact."""

from __future__ import annotations

import errno
import functools
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import IndexCorruptError, IndexLockedError, IndexWriteError, ModelMismatchError, ShardCorruptError, reason
from ..models.spec import identities_match
from .atomic import write_atomic
from .columns import empty_table
from .jobs import JOBS, JobState, read_state, write_state, write_units
from .memory import release_freed_memory
from .readers import live_pins
from .verify import require_intact
from .manifest import (
    ERRORS, ERRORS_PREFIX, SHARDS, TRAINED, TRAINED_PREFIX, Manifest, ShardInfo, commit_manifest, index_exists, read_manifest,
)
from .shard import (
    VECTORS_FILE, ShardData, StagedShard, check_staged, merge_shards, new_shard_name, read_tombstones, reindex_shard, shard_dir,
    sha256_file, write_shard, write_tombstones,
)
from .vector_file import CHUNK_ROWS, VectorReader, VectorWriter
from .vector_index import (
    MIN_TRAIN_POINTS, TRAIN_POINTS_PER_LIST, IndexConfig, choose_nlist, factory_nlist, index_nlist, read_index,
    train_ivfpq, write_index,
)

ERRORS_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("size", pa.int64()),
    ("mtime_ns", pa.int64()),
    ("reason", pa.string()),
    ("time", pa.int64()),
])
LOCK_FILE = ".lock"
CRASH_ENV = "LLM2SEARCH_CRASH_AT"  # tests only: "point" or "point:n" kills the process (SIGKILL)


def crash_point(name: str) -> None:
    """Die like `kill -9` at a named point when a crash test asks for it (faiss contrib style)."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    count = _crash_counts.get(name, 0) + 1
    _crash_counts[name] = count
    if count >= int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


_crash_counts: dict[str, int] = {}


T = TypeVar("T")


def _write_error(index_dir: Path, e: OSError) -> IndexWriteError:
    what = {errno.ENOSPC: "the disk is full", errno.EROFS: "it is on a read-only file system",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EDQUOT: "the disk quota is exceeded"}.get(e.errno or 0, e.strerror or str(e))
    return IndexWriteError(f"cannot write the index at {index_dir}: {what} ({e.filename or index_dir}); "
                           "nothing after its last commit was kept. Free space or fix permissions, then rerun")


def _writes(method: Callable[..., T]) -> Callable[..., T]:
    """A write to the index: an OSError (disk full, read-only, permissions) becomes one clear
    error; the manifest still names the last commit, and the next writer deletes leftovers."""

    @functools.wraps(method)
    def write(self: "IndexWriter", *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except OSError as e:
            raise _write_error(self.dir, e) from e

    return write


class IndexWriter:
    """Holds the index's writer lock; use as a context manager."""

    def __init__(self, index_dir: Path, model_identity: dict[str, Any], dim: int,
                 config: IndexConfig = IndexConfig()):
        self.dir = Path(index_dir)
        self.config = config
        if self.dir.exists() and not self.dir.is_dir():
            raise IndexWriteError(f"{self.dir} is a file, not an index directory; give --index a directory")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fh = _acquire_lock(self.dir / LOCK_FILE)
        except OSError as e:
            raise _write_error(self.dir, e) from e
        if index_exists(self.dir):
            manifest = read_manifest(self.dir)
            if not identities_match(manifest.model, model_identity):
                self.close()
                raise ModelMismatchError(
                    f"the index at {self.dir} was built with model {manifest.model.get('name')!r} "
                    f"and cannot take vectors from {model_identity.get('name')!r}; use "
                    "--model with the index's model, or a new --index directory"
                )
            self.manifest = manifest
        else:
            try:
                self.manifest = commit_manifest(self.dir, Manifest(model=model_identity, dim=dim))
            except OSError as e:
                self.close()
                raise _write_error(self.dir, e) from e
        self._trained: Any | None = None
        self._intact: set[str] = set()  # shards checked (or written) by this writer
        self.warnings: list[str] = []
        self.training: dict[str, Any] | None = None  # what the last maybe_train did, with timings  # what the run should tell the user (damaged shards left alone)
        self._seq = 1 + max((int(s.name.split("-")[0]) for s in self.manifest.shards), default=0)
        self._job: JobState | None = None
        if self.manifest.job is not None:
            try:
                self._job = read_state(self.dir, self.manifest.job)
                self._seq = max(self._seq, self._job.first_seq + self._job.units)
            except IndexCorruptError as e:  # the run cannot resume; this writer's first commit ends it
                self.warnings.append(str(e))
        collect_garbage(self.dir, self.manifest)

    @property
    def job(self) -> JobState | None:
        """The unfinished distributed run the current manifest names (store/jobs.py), if any."""
        return self._job if self.manifest.job is not None else None

    def __enter__(self) -> "IndexWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    # -- commits -------------------------------------------------------------------------
    @_writes
    def commit(self, new_shard: ShardData | None = None,
               deletions: dict[str, np.ndarray] | None = None,
               errors: pa.Table | None = None,
               staged: Sequence[StagedShard] = (),
               units_done: Iterable[int] = ()) -> Manifest:
        """Publish a new shard, tombstones and the error list together, in one manifest commit.

        A distributed run's commit also adopts `staged` shards (written by other processes under
        names of their own, garbage until now) and marks `units_done` of the writer's job done
        in the same commit; a commit that names no unit ends an unfinished job (store/jobs.py)."""
        units_done = sorted(set(units_done))
        job_fields: dict[str, Any] = {"job": None}
        if units_done:
            if self.job is None:
                raise ValueError("units can be marked done only while a job is open (start_job)")
            job = self.job.with_done(units_done)  # ValueError when a unit is done already
            job_fields = {"job": None if job.finished else write_state(self.dir, job)}
        elif staged:
            raise ValueError("staged shards are adopted together with the units they hold")
        shards = list(self.manifest.shards)
        known = {s.name for s in shards}
        for s in staged:
            if s.info.name in known:
                raise ValueError(f"shard {s.info.name} is committed already")
            check_staged(self.dir, s, (self.manifest.trained or {}).get("file"))
            known.add(s.info.name)
        if deletions:
            shards = [
                write_tombstones(self.dir, s, deletions[s.name]) if s.name in deletions else s
                for s in shards
            ]
        crash_point("after_tombstones")
        if new_shard is not None and new_shard.rows:
            shards.append(self._written(write_shard(self.dir, self._next_name(), new_shard, self._trained_index())))
        shards += [self._written(s.info) for s in staged]
        crash_point("after_shard")
        errors_fields = {}
        if errors is not None:
            errors_fields = self._write_errors(errors)
        crash_point("before_manifest")
        self.manifest = commit_manifest(
            self.dir, replace(self.manifest, shards=tuple(shards), **errors_fields, **job_fields),
            keep_job=True,
        )
        if units_done:
            self._job = job
            if job.finished:
                _collect_jobs(self.dir, self.manifest)  # the plan and state files are garbage now
        return self.manifest

    @_writes
    def start_job(self, source: dict[str, Any], units: pa.Table, unit_rows: Sequence[int], chunk_rows: int,
                  deletions: dict[str, np.ndarray] | None = None,
                  errors: pa.Table | None = None) -> JobState | None:
        """Open a distributed run: write its plan (store/jobs.UNITS_SCHEMA rows, sorted by unit),
        reserve a shard name per unit, and commit the plan with the tombstones of deleted files
        and the error list. Returns None when there is no unit to run (the commit is then a plain
        one). Ends any job already open."""
        if not unit_rows:
            self.commit(deletions=deletions, errors=errors)
            return None
        from .jobs import new_job_id

        job_id = new_job_id()
        digest = write_units(self.dir, job_id, units, unit_rows, chunk_rows)
        job = JobState(id=job_id, source=source, units=len(unit_rows),
                       unit_rows=tuple(int(n) for n in unit_rows), first_seq=self._seq,
                       units_sha256=digest, chunk_rows=chunk_rows)
        self._seq += job.units
        shards = list(self.manifest.shards)
        if deletions:
            shards = [write_tombstones(self.dir, s, deletions[s.name]) if s.name in deletions else s
                      for s in shards]
        errors_fields = self._write_errors(errors) if errors is not None else {}
        crash_point("job_before_manifest")
        self.manifest = commit_manifest(self.dir, replace(
            self.manifest, shards=tuple(shards), job=write_state(self.dir, job), **errors_fields),
            keep_job=True)
        self._job = job
        return job

    @_writes
    def record_roots(self, roots: list[str], drop: str | None = None) -> None:
        """Name the folders the index holds photos of (the server serves files only from
        these); `drop` forgets a folder and those under it (after `llm2search remove`)."""
        kept = [r for r in self.manifest.roots if drop is None or not (r == drop or r.startswith(drop.rstrip("/\\") + os.sep))]
        new = tuple(sorted(set(kept) | set(roots)))
        if new != self.manifest.roots:
            # keep_job: naming roots changes no work, so an open distributed run stays open
            self.manifest = commit_manifest(self.dir, replace(self.manifest, roots=new), keep_job=True)

    @_writes
    def maybe_train(self, force: bool = False) -> bool:
        """Switch to IVF-PQ past the threshold, or retrain once the collection has grown far
        beyond the sample the quantizer saw. Uses stored vectors: nothing is re-embedded."""
        m = self.manifest
        n = m.count
        if m.index_type == "flat":
            due = n >= self.config.ivf_threshold
        else:
            due = n >= self.config.retrain_growth * int(m.trained["trained_on"])  # type: ignore[index]
        if not (due or force) or n < MIN_TRAIN_POINTS:
            return False
        for shard in m.shards:  # retraining rewrites every shard: refuse if one is damaged
            self._require_intact(shard)
        nlist = self.config.nlist or choose_nlist(n)
        started = time.perf_counter()
        sample = self._write_sample(nlist * TRAIN_POINTS_PER_LIST)
        sampled = time.perf_counter()
        try:
            trained, factory = train_ivfpq(sample, nlist)
        finally:
            sample.unlink(missing_ok=True)
        fitted = time.perf_counter()
        # Content-named, so the manifest commit alone decides which quantizer is current.
        tmp = self.dir / f".{TRAINED}.tmp-{os.getpid()}"
        write_atomic(tmp, lambda path: write_index(trained, path))
        digest = sha256_file(tmp)
        trained_file = f"{TRAINED_PREFIX}{digest[:16]}.faiss"
        os.replace(tmp, self.dir / trained_file)
        shards = tuple(self._reindex(m.shards, trained))
        crash_point("retrain_before_manifest")
        self.manifest = commit_manifest(self.dir, replace(
            m, index_type="ivfpq", factory=factory, shards=shards,
            trained={"file": trained_file, "sha256": digest, "trained_on": n, "factory": factory,
                     "size": (self.dir / trained_file).stat().st_size},
        ))
        self._trained = trained
        collect_garbage(self.dir, self.manifest)
        self.training = {"vectors": n, "nlist": index_nlist(trained), "sample": min(n, nlist * TRAIN_POINTS_PER_LIST),
                         "sample_s": round(sampled - started, 2), "kmeans_s": round(fitted - sampled, 2),
                         "reindex_s": round(time.perf_counter() - fitted, 2), "shards": len(shards)}
        return True

    def _reindex(self, shards: tuple[ShardInfo, ...], trained: Any) -> list[ShardInfo]:
        """Every shard indexed with `trained`. Shards are merged (tombstoned rows dropped) up to
        ivf_shard_rows, since each IVF-PQ shard pays a fixed fast-scan padding; a shard that
        stays alone keeps its metadata and vectors (hard links) and gets a new index only."""
        out = []
        for group in _pack(shards, self.config.shard_rows(index_nlist(trained))):
            if len(group) == 1:
                out.append(self._written(reindex_shard(self.dir, group[0], self._next_name(), trained)))
            else:
                out.append(self._merge(group, trained))
            release_freed_memory()  # one shard's index and metadata buffers, before the next
        return out

    def compact_after_run(self, shard_size: int) -> bool:
        """The compaction every indexing run ends with: shards under a quarter of `shard_size`
        are merged, up to `shard_size` rows when Flat and up to ivf_shard_rows when IVF-PQ
        (each IVF-PQ shard pays a fixed fast-scan padding, see vector_index.IVF_SHARD_ROWS)."""
        m = self.manifest
        merged_rows = self.config.shard_rows(factory_nlist(m.factory)) if m.index_type == "ivfpq" else shard_size
        return self.compact(min_rows=max(1, shard_size // 4), max_rows=max(shard_size, merged_rows))

    @_writes
    def compact(self, min_rows: int, max_rows: int) -> bool:
        """Merge shards smaller than `min_rows` (dropping their tombstoned rows) into shards of
        at most `max_rows`, in one commit. Many tiny shards come from frequent commits."""
        small = [s for s in self.manifest.shards if s.count < min_rows and self._usable(s)]
        if len(small) < 2 and not any(s.deleted for s in small):
            return False
        merged = []
        for group in _pack(small, max_rows):
            merged.append(self._merge(group, self._trained_index()))
            release_freed_memory()  # one shard's index and metadata buffers, before the next
        merged_names = {s.name for s in small}
        keep_shards = [s for s in self.manifest.shards if s.name not in merged_names]
        self.manifest = commit_manifest(self.dir, replace(self.manifest, shards=tuple(keep_shards + merged)))
        collect_garbage(self.dir, self.manifest)
        return True

    def _merge(self, group: list[ShardInfo], trained: Any | None) -> ShardInfo:
        """One new shard holding the live rows of `group`, in order, streamed a chunk at a time
        (shard.merge_shards): the peak RSS holds one chunk and the new index, never the
        group's vectors (2.6 GB per million rows of 1280-d)."""
        for s in group:
            self._require_intact(s)
        parts = [(s, np.setdiff1d(np.arange(s.count), read_tombstones(self.dir, s))) for s in group]
        return self._written(merge_shards(self.dir, self._next_name(), parts, self.manifest.dim, trained))

    # -- checksums: no row is copied out of a shard whose files changed since they were written --
    def _require_intact(self, shard: ShardInfo) -> None:
        if shard.name not in self._intact:
            require_intact(self.dir, shard, self.manifest.dim)
            self._intact.add(shard.name)

    def _usable(self, shard: ShardInfo) -> bool:
        """For compaction: a damaged shard is left as it is (and reported), not merged."""
        try:
            self._require_intact(shard)
        except ShardCorruptError as e:
            self.warnings.append(str(e))
            return False
        return True

    def _written(self, shard: ShardInfo) -> ShardInfo:
        self._intact.add(shard.name)
        return shard

    def intact(self, shard: ShardInfo) -> bool:
        """True when `shard` passes its checksums (cached for this writer): the indexer asks
        before it reuses a stored vector for a renamed file."""
        try:
            self._require_intact(shard)
        except ShardCorruptError:
            return False
        return True

    # -- helpers -------------------------------------------------------------------------
    def _next_name(self) -> str:
        name = new_shard_name(self._seq)
        self._seq += 1
        return name

    def _trained_index(self) -> Any | None:
        if self.manifest.index_type != "ivfpq":
            return None
        if self._trained is None:
            self._trained = read_index(self.dir / self.manifest.trained["file"], mmap=False)  # type: ignore[index]
        return self._trained

    def _write_sample(self, n: int, seed: int = 0) -> Path:
        """About `n` live vectors drawn uniformly from every shard, read row by row (no memory
        map, see vector_file.py) into a float16 file that training streams from; the caller
        deletes it. A crash leaves it as `.train.tmp-<pid>.npy`, which the next writer removes."""
        rng = np.random.default_rng(seed)
        fraction = min(1.0, n / max(self.manifest.count, 1))
        picks = []
        for s in self.manifest.shards:
            live = np.setdiff1d(np.arange(s.count), read_tombstones(self.dir, s))
            take = live if fraction >= 1 else rng.choice(live, size=int(round(len(live) * fraction)), replace=False)
            picks.append((s, np.sort(take)))
        path = self.dir / f".train.tmp-{os.getpid()}.npy"
        out = VectorWriter(path, int(sum(len(t) for _, t in picks)), self.manifest.dim)
        try:
            for s, take in picks:
                with VectorReader(shard_dir(self.dir, s.name) / VECTORS_FILE) as reader:
                    for start in range(0, len(take), CHUNK_ROWS):
                        out.write(reader.take(take[start:start + CHUNK_ROWS]))
        except BaseException:
            out.abort()
            path.unlink(missing_ok=True)
            raise
        out.close()
        return path

    def _write_errors(self, errors: pa.Table) -> dict[str, Any]:
        """The manifest fields naming a new error list (none when it is empty)."""
        if errors.num_rows == 0:
            return {"errors_file": None, "errors_sha256": None, "errors_size": None, "errors_count": None}
        # Content-named like the trained file, so a crash before the manifest commit leaves
        # the committed error list (and its checksum) as it was.
        tmp = self.dir / f".{ERRORS}.tmp-{os.getpid()}"
        write_atomic(tmp, lambda path: pq.write_table(errors.cast(ERRORS_SCHEMA), path))
        digest = sha256_file(tmp)
        name = f"{ERRORS_PREFIX}{digest[:16]}.parquet"
        os.replace(tmp, self.dir / name)
        return {"errors_file": name, "errors_sha256": digest, "errors_size": (self.dir / name).stat().st_size,
                "errors_count": errors.num_rows}


def read_errors(index_dir: Path, manifest: Manifest) -> pa.Table:
    """The files that could not be indexed; IndexCorruptError when the list cannot be read."""
    if not manifest.errors_file:
        return empty_table(ERRORS_SCHEMA)
    path = Path(index_dir) / manifest.errors_file
    try:
        with pq.ParquetFile(path) as f:  # not pq.read_table: the dataset reader imports pandas
            return f.read().cast(ERRORS_SCHEMA)
    except FileNotFoundError:
        return empty_table(ERRORS_SCHEMA)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise IndexCorruptError(
            f"the error list {path} cannot be read ({reason(e)}); run `llm2search verify --index {index_dir} "
            "--repair` to drop it (its files are retried on the next run)") from e


def _pack(shards: Any, max_rows: int) -> list[list[ShardInfo]]:
    """Consecutive shards grouped so that each group's live rows stay within `max_rows` (a
    shard bigger than that is a group of its own)."""
    groups: list[list[ShardInfo]] = []
    rows = 0
    for s in shards:
        live = s.count - s.deleted
        if not groups or rows + live > max_rows:
            groups.append([])
            rows = 0
        groups[-1].append(s)
        rows += live
    return groups


def collect_garbage(index_dir: Path, manifest: Manifest) -> None:
    """Remove files that neither `manifest` nor a live reader's lease names (store/readers.py):
    shard directories, tombstone files and trained quantizers of older generations, and what a
    crash left half-written. Files an open reader still uses are left for a later collection."""
    index_dir = Path(index_dir)
    for leftover in index_dir.glob(".*.tmp-*"):  # half-written manifest or errors file
        leftover.unlink(missing_ok=True)
    pinned = live_pins(index_dir)
    if "*" in pinned.shards:  # a live lease that cannot be read: keep everything this time
        return
    current = {(manifest.trained or {}).get("file"), manifest.errors_file}
    for pattern in (f"{TRAINED_PREFIX}*.faiss", f"{ERRORS_PREFIX}*.parquet", ERRORS):
        for leftover in index_dir.glob(pattern):
            if leftover.name not in current and leftover.name not in pinned.files:
                leftover.unlink(missing_ok=True)
    _collect_jobs(index_dir, manifest)
    shards_dir = index_dir / SHARDS
    if not shards_dir.is_dir():
        return
    live = {s.name: s for s in manifest.shards}
    for entry in shards_dir.iterdir():
        shard = live.get(entry.name)
        if shard is None and entry.name not in pinned.shards:
            shutil.rmtree(entry, ignore_errors=True)
            continue
        for f in entry.glob("tombstones-*.npy"):
            named = shard is not None and f.name == shard.tombstones
            if not named and f"{SHARDS}/{entry.name}/{f.name}" not in pinned.files:
                f.unlink(missing_ok=True)


def _collect_jobs(index_dir: Path, manifest: Manifest) -> None:
    """Folders of ended distributed runs, and superseded state files of the open one."""
    jobs = index_dir / JOBS
    if not jobs.is_dir():
        return
    current = manifest.job or {}
    for entry in jobs.iterdir():
        if entry.name != current.get("id"):
            shutil.rmtree(entry, ignore_errors=True)
            continue
        for f in entry.iterdir():
            if f.name.startswith("state-") and f.name != current.get("file") or f.name.startswith("."):
                f.unlink(missing_ok=True)


def _acquire_lock(path: Path) -> Any:
    fh = open(path, "a+")
    try:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # Windows: no advisory locks; single-writer is the user's job there
        pass
    except OSError as e:
        fh.close()
        raise IndexLockedError(
            f"another llm2search process is writing to {path.parent}; wait for it to finish"
        ) from e
    return fh
