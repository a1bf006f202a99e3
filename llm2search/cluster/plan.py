"""The job of a distributed run: change detection's plan (the same as on one host: new and
changed files are sent, unchanged ones are not) cut into work units and written once, so a
rerun after a driver crash resumes instead of scanning again (store/jobs.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..indexer.changes import ChangePlan, plan_changes
from ..indexer.exclude import ExcludeConfig
from ..indexer.failures import FailureList
from ..indexer.pipeline import canonical, plan_folder
from ..indexer.state import IndexState
from ..store import columns
from ..store.jobs import UNITS_SCHEMA, JobState
from ..store.writer import IndexWriter, read_errors
from .parquet_input import read_listing

NOTHING_UNDER = "\0listing"  # a root no stored path lies under: a listing deletes nothing


@dataclass(frozen=True)
class Source:
    """What a run indexes: a folder (scanned) or a Parquet listing of files."""

    kind: str  # "folder" or "listing"
    path: str  # absolute

    @classmethod
    def of(cls, path: Path) -> "Source":
        from .parquet_input import is_listing

        absolute = os.path.abspath(os.path.expanduser(os.fspath(path)))
        if is_listing(Path(absolute)):
            return cls("listing", absolute)
        return cls("folder", str(canonical(absolute)))  # photos named as `index` on one host names them

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}


@dataclass(frozen=True)
class PlanSummary:
    scanned: int = 0
    unchanged: int = 0
    known_bad: int = 0
    deleted: int = 0
    problems: int = 0


def plan_job(writer: IndexWriter, source: Source, unit_files: int, chunk_rows: int, retry_errors: bool,
             exclude: ExcludeConfig = ExcludeConfig()) -> tuple[JobState | None, PlanSummary]:
    """Plan the run and commit the plan: tombstones of deleted (and newly excluded) files and the
    error list in the same commit that names the job. None when nothing needs embedding."""
    linked: set[str] = set()
    plan, extras = _change_plan(writer, source, retry_errors, exclude, linked)
    if source.kind == "folder":  # the folders the server may serve photos from
        writer.record_roots([source.path, *sorted(linked)])
    failures = FailureList(read_errors(writer.dir, writer.manifest))
    for path, reason in zip(*(plan.problems.column(c).to_pylist() for c in ("path", "reason"))):
        failures.record(path, 0, 0, reason)
    failures.drop(plan.stale_errors)
    units, unit_rows = _units(plan.embed, extras, unit_files)
    job = writer.start_job(source.to_json(), units, unit_rows, chunk_rows, deletions=plan.deleted,
                           errors=failures.table() if failures.dirty else None)
    return job, PlanSummary(plan.scanned, plan.unchanged, plan.known_bad, plan.deleted_count,
                            plan.problems.num_rows)


def _change_plan(writer: IndexWriter, source: Source, retry_errors: bool, exclude: ExcludeConfig,
                 linked: set[str]) -> tuple[ChangePlan, pa.Table | None]:
    if source.kind == "folder":
        return plan_folder(writer, source.path, retry_errors, exclude, linked=linked), None
    scan, extras = read_listing(Path(source.path))
    state = IndexState.load(writer.dir, writer.manifest)
    return plan_changes(scan, state, NOTHING_UNDER, read_errors(writer.dir, writer.manifest), retry_errors), extras


def _units(embed: pa.Table, extras: pa.Table | None, unit_files: int) -> tuple[pa.Table, list[int]]:
    """The plan's files in order, numbered into units of `unit_files`."""
    n = embed.num_rows
    unit = (np.arange(n, dtype=np.int64) // max(1, unit_files)).astype(np.int32)
    caption = item_id = pa.nulls(n, pa.string())
    if extras is not None and n:
        at = pc.index_in(embed.column("path"), value_set=extras.column("path").combine_chunks())
        caption = extras.column("caption").take(at)
        item_id = extras.column("item_id").take(at)
    table = pa.Table.from_arrays([
        columns.array(unit, pa.int32()), embed.column("path"), embed.column("path_bytes"),
        embed.column("size"), embed.column("mtime_ns"), embed.column("old_shard"), embed.column("old_row"),
        caption, item_id,
    ], schema=UNITS_SCHEMA)
    rows = np.bincount(unit, minlength=int(unit.max()) + 1 if n else 0).tolist()
    return table, rows
