"""Change detection on columns: the scan as an Arrow table, joined with the index's live rows,
gives the files to embed, the rows to tombstone and what is unchanged, with no Python object
per file (DESIGN §7). `plan_changes` is the whole decision; anything that runs the work (this
package's pipeline, a distributed indexer) executes the plan and commits through IndexWriter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..store import columns
from ..store.pathnames import display, from_stored, to_stored
from .scan import FileEntry, ScanProblem
from .state import IndexState, VectorLookup

# One scanned file. `path` is the stored form (valid UTF-8, see store/pathnames.py); `path_bytes`
# holds the exact name when it is not UTF-8, so the file can still be opened.
SCAN_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("path_bytes", pa.binary()),
    ("size", pa.int64()),
    ("mtime_ns", pa.int64()),
])
PROBLEM_SCHEMA = pa.schema([("path", pa.string()), ("reason", pa.string())])
# Files to read, hash and embed; `old_shard`/`old_row` name the live row the file replaces (null
# for a new file). That row is tombstoned in the commit that adds the new one.
EMBED_SCHEMA = pa.schema([
    *SCAN_SCHEMA,
    ("old_shard", pa.string()),
    ("old_row", pa.int64()),
])
SCAN_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class ScanResult:
    files: pa.Table  # SCAN_SCHEMA, in scan order
    problems: pa.Table  # PROBLEM_SCHEMA: paths that could not be listed or stat'ed
    # (a path with a problem is not treated as deleted: its entry stays until it is readable)


@dataclass(frozen=True)
class PlannedFile(FileEntry):
    """A file to embed, with the live row it replaces when it changed."""

    replaces: tuple[str, int] | None = None  # (shard name, row)


@dataclass(frozen=True)
class ChangePlan:
    """What one pass over a folder must do."""

    root: str
    embed: pa.Table  # EMBED_SCHEMA: new and changed files, in scan order
    deleted: dict[str, np.ndarray]  # shard name -> live rows of files gone from the folder
    stale_errors: pa.Array  # recorded failures under the folder whose file is gone
    problems: pa.Table  # PROBLEM_SCHEMA, to be recorded as failures
    scanned: int
    unchanged: int
    known_bad: int  # failed before and unchanged since: not retried
    state: IndexState

    @property
    def deleted_count(self) -> int:
        return int(sum(len(rows) for rows in self.deleted.values()))

    def vectors_by_hash(self) -> VectorLookup:
        """Stored vectors by content hash, for files that turn out to be renames or copies."""
        return self.state.vectors_by_hash()

    def files(self, batch_rows: int = 8192) -> Iterator[PlannedFile]:
        """The files to embed as decoder inputs, materialised a batch at a time."""
        return planned_files(self.embed.to_batches(max_chunksize=batch_rows))


def planned_files(batches: Iterable[pa.RecordBatch]) -> Iterator[PlannedFile]:
    """Decoder inputs from EMBED_SCHEMA batches, one batch's Python objects at a time."""
    for batch in batches:
        cols = [batch.column(c).to_pylist() for c in EMBED_SCHEMA.names]
        for path, raw, size, mtime, old_shard, old_row in zip(*cols):
            yield PlannedFile(from_stored(path, raw), size, mtime,
                              (old_shard, old_row) if old_shard is not None else None)


def scan_table(items: Iterable[FileEntry | ScanProblem], batch_rows: int = SCAN_BATCH_ROWS) -> ScanResult:
    """Collect a scan (see scan.py) into Arrow batches."""
    batches: list[pa.RecordBatch] = []
    problems: list[tuple[str, str]] = []
    cols: tuple[list, list, list, list] = ([], [], [], [])

    def flush() -> None:
        if cols[0]:
            batches.append(pa.RecordBatch.from_arrays([
                columns.strings(cols[0]), columns.binaries(cols[1]),
                columns.array(np.array(cols[2], dtype=np.int64), pa.int64()),
                columns.array(np.array(cols[3], dtype=np.int64), pa.int64()),
            ], schema=SCAN_SCHEMA))
            for c in cols:
                c.clear()

    for item in items:
        shown, raw = to_stored(item.path)
        if isinstance(item, ScanProblem):
            problems.append((shown, item.reason))
            continue
        cols[0].append(shown)
        cols[1].append(raw)
        cols[2].append(item.size)
        cols[3].append(item.mtime_ns)
        if len(cols[0]) >= batch_rows:
            flush()
    flush()
    files = pa.Table.from_batches(batches, schema=SCAN_SCHEMA)
    problem_table = pa.Table.from_arrays([columns.strings([p for p, _ in problems]),
                                          columns.strings([r for _, r in problems])], schema=PROBLEM_SCHEMA)
    return ScanResult(files, problem_table)


def plan_changes(scan: ScanResult, state: IndexState, root: str, errors: pa.Table,
                 retry_errors: bool = False) -> ChangePlan:
    """Compare a scan of `root` with the index: a hash join on path (Arrow `index_in`) instead of
    dicts of objects. `errors` is the index's failure list (path, size, mtime_ns, ...).

    - unchanged: a live row with the same path, size and mtime;
    - known bad: no such row, but a recorded failure with the same size and mtime (skipped
      unless `retry_errors`);
    - to embed: every other scanned file (its old live row, if any, is named in the plan);
    - deleted: live rows under `root` whose path the scan did not meet."""
    root = display(root)  # stored paths are in display form (store/pathnames.py)
    files = scan.files  # chunked as scanned: a combined copy would hold every path twice
    live = state.live
    n = len(files)
    size, mtime = _ints(files.column("size")), _ints(files.column("mtime_ns"))
    # Live row of each scanned path (-1: none), then compare size and mtime.
    live_row = _positions(files.column("path"), live.column("path"))
    matched = live_row >= 0
    old = _indices(live_row[matched])
    unchanged = np.zeros(n, dtype=bool)
    unchanged[matched] = ((_ints(live.column("size").take(old)) == size[matched])
                          & (_ints(live.column("mtime_ns").take(old)) == mtime[matched]))

    known_bad = np.zeros(n, dtype=bool)
    error_row = _positions(files.column("path"), errors.column("path"))  # -1: no recorded failure
    if not retry_errors and errors.num_rows:
        bad = (error_row >= 0) & ~unchanged
        at = _indices(error_row[bad])
        known_bad[bad] = ((_ints(errors.column("size").take(at)) == size[bad])
                          & (_ints(errors.column("mtime_ns").take(at)) == mtime[bad]))

    todo = np.flatnonzero(~unchanged & ~known_bad)
    replaced_live = live_row[todo]
    replaced = replaced_live >= 0
    old_at = _indices(replaced_live[replaced])
    old_shard = np.full(len(todo), None, dtype=object)
    old_row = np.zeros(len(todo), dtype=np.int64)
    if replaced.any():
        old_shard[replaced] = np.array(state.shards, dtype=object)[_ints(live.column("shard").take(old_at))]
        old_row[replaced] = _ints(live.column("row").take(old_at))
    todo_at = _indices(todo)
    # Every file to embed (a first run): the scan's own columns, not a copy of them (~80 B a file).
    embed = pa.Table.from_arrays([
        *(files.column(c) if len(todo) == n else files.column(c).take(todo_at) for c in SCAN_SCHEMA.names),
        columns.strings(old_shard.tolist()),
        columns.array(old_row, pa.int64(), mask=~replaced),
    ], schema=EMBED_SCHEMA)

    # What the scan met, as rows of the index and of the failure list: the join above already
    # placed every scanned path, so no second hash table over all of them is built.
    problem_paths = scan.problems.column("path")
    seen_live = _met(len(live), live_row, _positions(problem_paths, live.column("path")))
    gone = _under(live.column("path"), root) & ~seen_live
    deleted: dict[str, np.ndarray] = {}
    gone_at = _indices(np.flatnonzero(gone))
    gone_shards, gone_rows = _ints(live.column("shard").take(gone_at)), _ints(live.column("row").take(gone_at))
    for s in np.unique(gone_shards):
        deleted[state.shards[int(s)]] = gone_rows[gone_shards == s]

    error_paths = errors.column("path")
    stale = _under(error_paths, root) & ~_met(errors.num_rows, error_row, _positions(problem_paths, error_paths))
    return ChangePlan(
        root=root, embed=embed, deleted=deleted,
        stale_errors=error_paths.take(_indices(np.flatnonzero(stale))).combine_chunks()
        if errors.num_rows else columns.strings([]),
        problems=scan.problems, scanned=len(files), unchanged=int(unchanged.sum()),
        known_bad=int(known_bad.sum()), state=state,
    )


def under(path: str, root: str) -> bool:
    """True when `path` is `root` or lies below it."""
    return path == root or path.startswith(_prefix(root))


def _prefix(root: str) -> str:
    return root.rstrip("/\\") + ("/" if "/" in root else "\\")


def _under(paths: pa.ChunkedArray | pa.Array, root: str) -> np.ndarray:
    if len(paths) == 0:
        return np.zeros(0, dtype=bool)
    below = columns.flags(pc.starts_with(paths, pattern=_prefix(root)))
    # == root, without a Python scalar in a compute call (see store/columns.py): same length
    # as root and starting with it.
    same = columns.flags(pc.starts_with(paths, pattern=root))
    same &= columns.numbers(pc.binary_length(paths), fill=-1) == len(root.encode("utf-8"))
    return below | same


def _ints(values: pa.ChunkedArray | pa.Array, fill: int = 0) -> np.ndarray:
    return columns.numbers(values, fill=fill).astype(np.int64, copy=False)


def _indices(positions: np.ndarray) -> pa.Array:
    return columns.array(np.asarray(positions, dtype=np.int64), pa.int64())


def _met(n: int, *positions: np.ndarray) -> np.ndarray:
    """A mask of `n` rows: True where some position array (-1: none) points."""
    mask = np.zeros(n, dtype=bool)
    for at in positions:
        mask[at[at >= 0]] = True
    return mask


def _positions(keys: pa.ChunkedArray | pa.Array, values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """For each key, the position of its first occurrence in `values`, or -1."""
    if len(values) == 0 or len(keys) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return _ints(pc.index_in(keys, value_set=values), fill=-1)
