"""The driver of a distributed run, and its only committer.

    plan (or resume) -> Ray Data: decode tasks -> embed actor pool -> rows stream to the driver
    -> a unit's rows complete -> a write task stages its shard -> commit: shard + tombstones +
    errors + "unit done", one manifest commit

Exactly once: rows are keyed by their position in the plan and a unit is committed once (the
job's done set is in the same commit), so a retried task, a restarted actor or a recomputed
block never adds a photo twice; shards no commit names are garbage. A killed driver loses only
uncommitted units, which the rerun's resume does again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from ..errors import InputPathError
from ..indexer.decode import DecodeOptions
from ..indexer.failures import FailureList
from ..indexer.pipeline import IndexingConfig, IndexReport, check_root
from ..indexer.state import VectorLookup
from ..models.presets import resolve_model, spec_for_index
from ..paths import decode_log_path
from ..models.spec import ModelSpec
from ..store.jobs import JobState, units_path
from ..store.manifest import index_exists, read_manifest
from ..store.shard import META_SCHEMA, StagedShard
from ..store.writer import IndexWriter, crash_point, read_errors
from .config import RayConfig, ray_config
from .connect import ClusterError, connect
from .plan import PlanSummary, Source, plan_job
from .progress import ProgressLine, start_tally
from .tasks import VECTOR, EmbedActor, Reuse, decode_groups, fixed_values, write_unit
from .watchdog import Watchdog

POLL_SECONDS = 0.5
CPU_BATCH, GPU_BATCH = 32, 256  # images per embed call unless --batch-size says otherwise


@dataclass
class RunStatus:
    """What an observer (a test, a UI) sees after each step of the driver's loop."""

    counts: dict[str, int]
    total: int
    tally: Any  # the counter actor: `ray.get(status.tally.actors.remote())` lists embed actors


def index_on_ray(source_path: str | Path, index_dir: str | Path, config: IndexingConfig,
                 observer: Callable[[RunStatus], None] | None = None) -> IndexReport:
    """Bring the index up to date with a folder or a Parquet listing, on a Ray cluster."""
    rc = ray_config(config.ray)
    source = Source.of(Path(source_path))
    index_dir = Path(index_dir)
    if source.kind == "folder":
        check_root(Path(source.path), index_dir)  # the same one-line errors as on one host
    elif not Path(source.path).exists():
        raise InputPathError(f"{source.path} does not exist; give the folder of photos (or the Parquet "
                             "listing) to index")
    spec = _choose_model(index_dir, config.model)
    started = time.monotonic()
    report = IndexReport(source.path, str(index_dir))
    connection = connect(rc.address)
    try:
        with IndexWriter(index_dir, spec.identity(), spec.dim, config.index) as writer:
            job = writer.job
            if job is not None and job.source == source.to_json():
                report.warnings.append(f"resumed the unfinished run {job.id}: {len(job.pending())} of "
                                       f"{job.units} work units left")
            else:
                job, summary = plan_job(writer, source, rc.unit_files, rc.decode_batch, config.retry_errors,
                                        config.exclude)
                _summarise(report, summary)
            if job is not None:
                _Run(connection.ray, writer, job, spec, config, rc, report, observer,
                     wait_on_failure=not connection.owned).execute()
            writer.maybe_train(force=config.retrain)
            writer.compact_after_run(config.shard_size)
            report.live = writer.manifest.count
            report.index_type = writer.manifest.index_type
            report.warnings += list(writer.warnings)
    finally:
        connection.close()
    report.seconds = time.monotonic() - started
    return report


def _choose_model(index_dir: Path, requested: str | None) -> ModelSpec:
    if index_exists(index_dir):
        return spec_for_index(read_manifest(index_dir).model, requested)
    return resolve_model(requested)


def _summarise(report: IndexReport, s: PlanSummary) -> None:
    report.scanned, report.unchanged, report.known_bad, report.deleted = s.scanned, s.unchanged, s.known_bad, s.deleted


@dataclass
class _Unit:
    """The rows of one work unit received so far (keyed by plan position: duplicates dropped)."""

    expected: int
    parts: list[pa.Table] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)

    def add(self, table: pa.Table) -> None:
        files = table.column("file").to_pylist()
        keep = [i for i, f in enumerate(files) if f not in self.seen]
        self.seen.update(files[i] for i in keep)
        if keep:
            self.parts.append(table.take(pa.array(keep, pa.int64())) if len(keep) < len(files) else table)

    @property
    def complete(self) -> bool:
        return len(self.seen) >= self.expected


@dataclass
class _Written:
    """A unit whose shard is staged (or that has no row to store), waiting for its commit, with
    what that commit must also say about its files."""

    unit: int
    staged: StagedShard | None = None
    deletions: dict[str, list[int]] = field(default_factory=dict)  # rows its files replace
    failed: list[tuple[str, int, int, str]] = field(default_factory=list)  # path, size, mtime, reason
    indexed: list[str] = field(default_factory=list)  # paths stored now (earlier failures are cleared)
    new: int = 0
    changed: int = 0
    reused: int = 0


class _Run:
    def __init__(self, ray: Any, writer: IndexWriter, job: JobState, spec: ModelSpec, config: IndexingConfig,
                 rc: RayConfig, report: IndexReport, observer: Callable[[RunStatus], None] | None,
                 wait_on_failure: bool = False):
        self.ray, self.writer, self.job, self.spec = ray, writer, job, spec
        # On a cluster this run did not connect to (a caller's ray.init), a failed run waits for
        # Ray Data to wind its pipeline down (its own no-progress guard) before returning.
        self.wait_on_failure = wait_on_failure
        self.config, self.rc, self.report, self.observer = config, rc, report, observer
        self.failures = FailureList(read_errors(writer.dir, writer.manifest))
        self.pending = job.pending()
        self.total = sum(job.unit_rows[u] for u in self.pending)
        self.units = {u: _Unit(job.unit_rows[u]) for u in self.pending}
        self.writes: dict[Any, _Written] = {}  # write task -> its unit
        self.ready: list[_Written] = []  # staged, awaiting commit
        self.counts = {"received": 0, "written": 0, "committed": 0, "writing": 0}
        self.last_commit = time.monotonic()
        self.tally_name = f"llm2search-tally-{job.id}-{uuid.uuid4().hex[:6]}"

    # -- the pipeline ----------------------------------------------------------------------
    def _dataset(self) -> Any:
        ray, rc, spec = self.ray, self.rc, self.spec
        import ray.data

        logging.getLogger("ray.data").setLevel(logging.WARNING)
        groups = np.array([g for u in self.pending for g in self.job.groups(u)], dtype=np.int64)
        blocks = np.array_split(groups, min(len(groups), 4096))
        options = DecodeOptions(spec.preprocess, self.config.max_pixels, max_file_bytes=self.config.max_file_bytes,
                                log_path=str(decode_log_path()))
        lookup = VectorLookup.load(self.writer.dir, self.writer.manifest)
        reuse = None
        if len(lookup):
            by_name = {s.name: s for s in self.writer.manifest.shards}
            reuse = ray.put(Reuse(str(self.writer.dir), spec.dim, lookup.hashes, lookup.shard, lookup.row,
                                  [by_name[n] for n in lookup.shards]))
        gpus = self._actor_gpus()
        device = "cuda" if gpus > 0 else "cpu"
        ds = ray.data.from_numpy(blocks)
        ds = ds.map_batches(
            decode_groups, batch_size=1, batch_format="numpy", num_cpus=rc.decode_cpus,
            fn_kwargs={"units_path": str(units_path(self.writer.dir, self.job.id)), "options": options,
                       "dim": spec.dim, "reuse": reuse, "tally": self.tally_name})
        return ds.map_batches(
            # A GPU actor's encoder halves a batch that runs out of memory (models/image_encoder.py).
            EmbedActor, batch_size=self.config.batch_size or (GPU_BATCH if gpus > 0 else CPU_BATCH),
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=self._pool_size(gpus)), num_cpus=rc.actor_cpus, num_gpus=gpus or None,
            fn_constructor_kwargs={"spec": spec, "device": device, "threads": int(max(1, rc.actor_cpus)),
                                   "tally": self.tally_name})

    def _actor_gpus(self) -> float:
        if self.rc.actor_gpus is not None:
            return self.rc.actor_gpus
        return 1.0 if self.ray.cluster_resources().get("GPU", 0) >= 1 else 0.0

    def _pool_size(self, gpus: float) -> int:
        if self.rc.embed_actors is not None:
            return self.rc.embed_actors
        resources = self.ray.cluster_resources()
        if gpus > 0:
            return max(1, int(resources.get("GPU", 0) // gpus))
        return max(1, int(resources.get("CPU", 1) // 4))  # leave most CPUs to the decode tasks

    # -- the loop ----------------------------------------------------------------------------
    def execute(self) -> None:
        import ray.data

        ctx = ray.data.DataContext.get_current()  # a dataset keeps a copy of it: restored below
        saved = ctx.enable_progress_bars, ctx.execution_no_progress_timeout_s
        ctx.enable_progress_bars = False  # the driver draws its own line (rate, ETA)
        # Ray Data's own guard ends a pipeline that stopped moving, shutting its tasks and actors
        # down; set just past the watchdog's limit (whichever fires first, the error names the stage).
        ctx.execution_no_progress_timeout_s = self.rc.stall_seconds + 5
        try:
            self._execute()
        finally:
            ctx.enable_progress_bars, ctx.execution_no_progress_timeout_s = saved

    def _execute(self) -> None:
        tally = start_tally(self.ray, self.tally_name)
        rows: queue.Queue = queue.Queue(maxsize=64)
        stop = threading.Event()
        feeder = threading.Thread(target=self._feed, args=(self._dataset(), rows, stop), daemon=True,
                                  name="llm2search-ray-rows")
        watchdog = Watchdog(self.rc.stall_seconds, self.total)
        progress = ProgressLine(self.total, self.config.progress)
        streaming, last_poll = True, 0.0
        tally_counts: dict[str, int] = {}
        feeder.start()
        try:
            while streaming or self.writes or self.ready or self._incomplete():
                try:
                    item = rows.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    item = None
                if isinstance(item, BaseException) and type(item).__name__ == "ExecutionTimeoutError":
                    raise watchdog.error() from item  # Ray Data's no-progress guard was first
                if isinstance(item, BaseException):
                    raise ClusterError(f"the distributed run failed: {_first_line(item)}; committed work is "
                                       "kept, rerun the command to resume") from item
                if item is _END:
                    streaming = False
                    if self._incomplete() and not self.writes and not self.ready:
                        missing = sorted(u for u, s in self.units.items() if not s.complete)
                        raise ClusterError(f"the cluster returned no rows for some files of work units "
                                           f"{missing[:5]}; rerun the command to resume")
                elif item is not None:
                    progress.update(self._take(item), {**tally_counts, **self.counts})
                self._collect_writes()
                self._maybe_commit(final=not streaming and not self.writes and not self._incomplete())
                if time.monotonic() - last_poll >= 1.0:
                    last_poll = time.monotonic()
                    tally_counts = _poll(self.ray, tally)
                    progress.update(0, {**tally_counts, **self.counts})
                watchdog.observe({**tally_counts, **self.counts})
                watchdog.check()
                if self.observer is not None:
                    self.observer(RunStatus({**tally_counts, **self.counts}, self.total, tally))
        except BaseException:
            stop.set()
            if self.wait_on_failure:
                feeder.join(30)
            raise
        finally:
            stop.set()
            progress.close()
            try:
                self.ray.kill(tally)
            except Exception:  # noqa: BLE001 - already gone with its job
                pass

    @staticmethod
    def _feed(ds: Any, rows: queue.Queue, stop: threading.Event) -> None:
        """Ray Data's output stream into a queue, so the driver's loop (commits, watchdog) never
        blocks on it."""
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
                while not stop.is_set():
                    try:
                        rows.put(batch, timeout=POLL_SECONDS)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return  # closing the iterator shuts the pipeline's tasks and actors down
            rows.put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the driver's loop
            rows.put(e)

    def _incomplete(self) -> bool:
        return any(not u.complete for u in self.units.values())

    def _take(self, table: pa.Table) -> int:
        """Rows from the pipeline; a unit whose rows are all here goes to a write task."""
        before = self.counts["received"]
        unit_col = table.column("unit").to_numpy()
        for u in np.unique(unit_col):
            state = self.units.get(int(u))
            if state is None or state.complete:
                continue  # a unit done already (a duplicate from a recomputed block)
            n = len(state.seen)
            state.add(table.filter(pa.array(unit_col == u)))
            self.counts["received"] += len(state.seen) - n
            if state.complete:
                self._write(int(u), state)
        return self.counts["received"] - before

    def _write(self, unit: int, state: _Unit) -> None:
        table = pa.concat_tables(state.parts).sort_by("file")
        state.parts = []  # the write task has its own copy now
        dim = self.spec.dim
        vectors, ok = fixed_values(table.column(VECTOR), dim * 2, np.float16)
        errors = table.column("error").to_pylist()
        paths, sizes, mtimes = (table.column(c).to_pylist() for c in ("path", "size", "mtime_ns"))
        old_shard, old_row = table.column("old_shard").to_pylist(), table.column("old_row").to_pylist()
        reused = table.column("reused").to_pylist()
        out = _Written(unit)
        for i in range(table.num_rows):
            if old_shard[i] is not None:  # changed, or changed into something unreadable: old row goes
                out.deletions.setdefault(old_shard[i], []).append(int(old_row[i]))
            if errors[i] is not None or not ok[i]:
                out.failed.append((paths[i], sizes[i], mtimes[i], errors[i] or "no vector came back"))
                ok[i] = False
                continue
            out.indexed.append(paths[i])
            out.changed += old_shard[i] is not None
            out.new += old_shard[i] is None
            out.reused += bool(reused[i])
        good = np.flatnonzero(ok)
        if not len(good):
            self.ready.append(out)
            self.counts["written"] += state.expected
            return
        meta = table.select(META_SCHEMA.names).take(pa.array(good, pa.int64())).cast(META_SCHEMA)
        trained = (self.writer.manifest.trained or {}).get("file")
        task = self.ray.remote(num_cpus=self.rc.write_cpus, max_retries=3)(write_unit)
        ref = task.remote(str(self.writer.dir), self.job.first_seq + unit,
                          np.ascontiguousarray(vectors[good]), meta, trained)
        self.writes[ref] = out
        self.counts["writing"] = len(self.writes)

    def _collect_writes(self) -> None:
        if not self.writes:
            return
        done, _ = self.ray.wait(list(self.writes), num_returns=len(self.writes), timeout=0)
        for ref in done:
            out = self.writes.pop(ref)
            try:
                out.staged = self.ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a write that failed every retry
                raise ClusterError(f"writing the shard of work unit {out.unit} failed: {_first_line(e)}; "
                                   "committed work is kept, rerun the command to resume") from e
            self.ready.append(out)
            self.counts["written"] += self.job.unit_rows[out.unit]
        self.counts["writing"] = len(self.writes)

    def _maybe_commit(self, final: bool) -> None:
        """Commit the written units every commit_seconds (and at the end); with commit_seconds 0,
        each unit in a commit of its own."""
        if not self.ready:
            return
        if not final and time.monotonic() - self.last_commit < self.config.commit_seconds:
            return
        if self.config.commit_seconds <= 0:
            ready, self.ready = self.ready, []
            for one in ready:
                self._commit([one])
        else:
            ready, self.ready = self.ready, []
            self._commit(ready)

    def _commit(self, ready: list[_Written]) -> None:
        """One manifest commit: the units' shards, the rows their files replace, their failures,
        and their "done" marks."""
        deletions: dict[str, list[int]] = {}
        for w in ready:
            for shard, rows in w.deletions.items():
                deletions.setdefault(shard, []).extend(rows)
            for path in w.indexed:
                self.failures.clear(path)
            for failure in w.failed:
                self.failures.record(*failure)
        errors = self.failures.table() if self.failures.dirty else None
        self.writer.commit(staged=[w.staged for w in ready if w.staged is not None],
                           units_done=[w.unit for w in ready], errors=errors,
                           deletions={k: np.array(v, dtype=np.int64) for k, v in deletions.items()})
        if errors is not None:
            self.failures.committed()
        for w in ready:
            self.report.new += w.new
            self.report.changed += w.changed
            self.report.reused += w.reused
            self.report.embedded += len(w.indexed) - w.reused
            self.report.failed += len(w.failed)
            self.counts["committed"] += self.job.unit_rows[w.unit]
            self.units.pop(w.unit, None)
        self.last_commit = time.monotonic()
        crash_point("ray_after_commit")


_END = object()


def _poll(ray: Any, tally: Any) -> dict[str, int]:
    try:
        return ray.get(tally.snapshot.remote(), timeout=10)
    except Exception:  # noqa: BLE001 - an unreachable counter reads as no progress
        return {}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
