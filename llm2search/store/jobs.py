"""A job: the work units of a distributed indexing run and which of them are done, so that a
driver killed at any moment is resumed by rerunning its command (DESIGN §9).

    <index>/jobs/<id>/units.parquet        the planned files, one row each, with their unit number
                                           (written once, before the commit that names the job)
    <index>/jobs/<id>/state-<sha16>.json   which units are done; content-named, and the manifest's
                                           `job` field names the current one with its sha256

A unit's shard and its "done" mark are published by the same manifest commit, so a unit is done
exactly when its rows are visible. Only commits that name the job carry it on: any other writer
(a single-host run, a compaction, a repair) ends it, because its change could make the plan's
row numbers stale. The next distributed run then plans afresh from what the index holds.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import IndexCorruptError
from .atomic import fsync_dir, fsync_file, write_atomic
from .manifest import JOB_ID
from .shard import sha256_file

JOBS = "jobs"
UNITS_FILE = "units.parquet"
JOB_FORMAT = 1

# One planned file. `old_shard`/`old_row` name the live row it replaces (null: a new file);
# `caption` and `item_id` come from a Parquet input listing, when it has them.
UNITS_SCHEMA = pa.schema([
    ("unit", pa.int32()),
    ("path", pa.string()),
    ("path_bytes", pa.binary()),
    ("size", pa.int64()),
    ("mtime_ns", pa.int64()),
    ("old_shard", pa.string()),
    ("old_row", pa.int64()),
    ("caption", pa.string()),
    ("item_id", pa.string()),
])


@dataclass(frozen=True)
class JobState:
    """What the manifest's current state file says."""

    id: str  # 16 hex digits; also the folder name under jobs/
    source: dict[str, Any]  # what was planned: {"kind": "folder"|"parquet", "path": ...}
    units: int  # units are numbered 0 .. units-1
    unit_rows: tuple[int, ...]  # planned files per unit
    first_seq: int  # shard sequence numbers first_seq + unit are reserved for the units
    units_sha256: str
    chunk_rows: int = 1 << 30  # units.parquet holds each unit as row groups of this many rows
    done: tuple[tuple[int, int], ...] = ()  # half-open ranges of done units, sorted, disjoint
    created: str = field(default_factory=lambda: _now())
    format: int = JOB_FORMAT

    @property
    def files(self) -> int:
        return int(sum(self.unit_rows))

    def done_units(self) -> set[int]:
        return {u for a, b in self.done for u in range(a, b)}

    def pending(self) -> list[int]:
        done = self.done_units()
        return [u for u in range(self.units) if u not in done]

    @property
    def finished(self) -> bool:
        return self.done == ((0, self.units),) or self.units == 0

    def groups(self, unit: int) -> range:
        """The row groups of units.parquet that hold `unit`'s files."""
        per = [-(-n // self.chunk_rows) for n in self.unit_rows]
        first = sum(per[:unit])
        return range(first, first + per[unit])

    def with_done(self, units: Iterable[int]) -> "JobState":
        new = set(units)
        if not new:
            return self
        if new & self.done_units():
            raise ValueError(f"units {sorted(new & self.done_units())[:5]} of job {self.id} are already done")
        if min(new) < 0 or max(new) >= self.units:
            raise ValueError(f"job {self.id} has no unit {max(new)}")
        return replace(self, done=_ranges(self.done_units() | new))

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "id": self.id, "source": self.source, "units": self.units,
                "unit_rows": list(self.unit_rows), "first_seq": self.first_seq,
                "units_sha256": self.units_sha256, "chunk_rows": self.chunk_rows, "done": [list(r) for r in self.done],
                "created": self.created}

    @classmethod
    def from_json(cls, d: Any) -> "JobState":
        if not isinstance(d, dict) or d.get("format") != JOB_FORMAT:
            raise ValueError("not a job state of a known format")
        if not isinstance(d.get("id"), str) or not JOB_ID.fullmatch(d["id"]):
            raise ValueError(f"job id is {d.get('id')!r}")
        rows = tuple(int(n) for n in d["unit_rows"])
        if len(rows) != int(d["units"]):
            raise ValueError("unit_rows does not list every unit")
        done = tuple((int(a), int(b)) for a, b in d.get("done") or ())
        if any(not 0 <= a < b <= len(rows) for a, b in done):
            raise ValueError("done names units the job does not have")
        return cls(id=d["id"], source=dict(d["source"]), units=len(rows), unit_rows=rows,
                   first_seq=int(d["first_seq"]), units_sha256=str(d["units_sha256"]),
                   chunk_rows=int(d["chunk_rows"]), done=done,
                   created=str(d.get("created", "")))


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def job_dir(index_dir: Path, job_id: str) -> Path:
    return Path(index_dir) / JOBS / job_id


def units_path(index_dir: Path, job_id: str) -> Path:
    return job_dir(index_dir, job_id) / UNITS_FILE


def write_units(index_dir: Path, job_id: str, units: pa.Table, unit_rows: Sequence[int],
                chunk_rows: int) -> str:
    """Write the plan (UNITS_SCHEMA rows, sorted by unit) durably, each unit as row groups of
    `chunk_rows` rows (JobState.groups), so a task reads just its chunk; returns its sha256."""
    folder = job_dir(index_dir, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / UNITS_FILE
    table = units.cast(UNITS_SCHEMA)

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, UNITS_SCHEMA, compression="zstd") as out:
            at = 0
            for n in unit_rows:
                for start in range(at, at + n, chunk_rows):
                    out.write_table(table.slice(start, min(chunk_rows, at + n - start)), row_group_size=chunk_rows)
                at += n

    write_atomic(path, write)
    fsync_dir(folder.parent)
    return sha256_file(path)


def read_group(path: Path, group: int) -> pa.Table:
    """One row group (a chunk of one unit) of a units.parquet."""
    with pq.ParquetFile(path) as f:
        return f.read_row_group(group).cast(UNITS_SCHEMA)


def read_units(index_dir: Path, job: JobState, units: Iterable[int] | None = None) -> pa.Table:
    """The planned files of `units` (all when None), checked against the sha256 the state holds."""
    path = units_path(index_dir, job.id)
    try:
        digest = sha256_file(path)
    except OSError as e:
        raise IndexCorruptError(f"the plan {path} of an unfinished distributed run cannot be read "
                                f"({e.strerror or e}); rerun with --ray to plan the run afresh") from e
    if digest != job.units_sha256:
        raise IndexCorruptError(f"the plan {path} has changed since it was written; rerun with --ray to "
                                "plan the run afresh")
    with pq.ParquetFile(path) as f:
        table = f.read().cast(UNITS_SCHEMA)
    if units is None:
        return table
    wanted = np.zeros(job.units, dtype=bool)
    wanted[np.fromiter(units, dtype=np.int64)] = True
    unit = table.column("unit").to_numpy()
    return table.filter(pa.array(wanted[unit]))


def write_state(index_dir: Path, job: JobState) -> dict[str, Any]:
    """Write `job` as a new content-named state file; returns the manifest's `job` field."""
    folder = job_dir(index_dir, job.id)
    folder.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(job.to_json(), indent=1) + "\n").encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    name = f"state-{digest[:16]}.json"
    path = folder / name
    if not path.exists():
        write_atomic(path, lambda tmp: tmp.write_bytes(data))
    fsync_file(path)
    return {"id": job.id, "file": name, "sha256": digest, "size": len(data)}


def read_state(index_dir: Path, ref: dict[str, Any]) -> JobState:
    """The job a manifest names; IndexCorruptError when its state file is missing or changed."""
    path = job_dir(index_dir, ref["id"]) / ref["file"]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IndexCorruptError(f"the state {path} of an unfinished distributed run cannot be read "
                                f"({e.strerror or e}); run `llm2search index` without --ray, or rerun "
                                "with --ray, to end it") from e
    if hashlib.sha256(data).hexdigest() != ref.get("sha256"):
        raise IndexCorruptError(f"the state {path} of an unfinished distributed run has changed since it "
                                "was written; run `llm2search index` to end the run")
    try:
        return JobState.from_json(json.loads(data.decode("utf-8")))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise IndexCorruptError(f"{path} is not a job state ({e}); run `llm2search index` to end the run") from e


def _ranges(units: set[int]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for u in sorted(units):
        if out and out[-1][1] == u:
            out[-1][1] = u + 1
        else:
            out.append([u, u + 1])
    return tuple((a, b) for a, b in out)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
