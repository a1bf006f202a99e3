"""A Parquet file listing the images to index, as image datasets are distributed: a `path`
column (absolute, or relative to the listing's folder) and optionally `caption` and `id`.
The listed files are stat'ed here, so change detection works as it does on a folder."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputPathError
from ..indexer.changes import PROBLEM_SCHEMA, SCAN_SCHEMA, ScanResult
from ..store import columns
from ..store.pathnames import to_stored

PATH_COLUMN = "path"
CAPTION_COLUMN = "caption"
ID_COLUMN = "id"
STAT_THREADS = 32  # stat is latency-bound on a shared filesystem


def is_listing(path: Path) -> bool:
    return path.suffix.lower() == ".parquet" and path.is_file()


def read_listing(path: Path) -> tuple[ScanResult, pa.Table]:
    """(the listed files as a scan, their captions and ids: a table of path, caption, item_id)."""
    try:
        with pq.ParquetFile(path) as f:
            names = set(f.schema_arrow.names)
            if PATH_COLUMN not in names:
                raise InputPathError(f"{path} has no `{PATH_COLUMN}` column; a listing names one image per row "
                                     f"in `{PATH_COLUMN}` (optional: `{CAPTION_COLUMN}`, `{ID_COLUMN}`)")
            wanted = [c for c in (PATH_COLUMN, CAPTION_COLUMN, ID_COLUMN) if c in names]
            table = f.read(columns=wanted)
    except (OSError, pa.ArrowException) as e:
        raise InputPathError(f"cannot read the listing {path} ({str(e).splitlines()[0]}); give a Parquet "
                             "file with a `path` column") from e
    base = path.parent.resolve()
    listed = [str(p) if p is not None else "" for p in table.column(PATH_COLUMN).to_pylist()]
    paths = [os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p)) if p else "" for p in listed]
    with ThreadPoolExecutor(STAT_THREADS) as pool:
        stats = list(pool.map(_stat, paths))
    files: list[tuple[str, bytes | None, int, int]] = []
    problems: list[tuple[str, str]] = []
    extra: dict[str, tuple[str | None, str | None]] = {}
    captions = _strings(table, CAPTION_COLUMN)
    ids = _strings(table, ID_COLUMN)
    for i, (p, st) in enumerate(zip(paths, stats)):
        shown, raw = to_stored(p) if p else (f"<row {i}: no path>", None)
        if isinstance(st, str):
            problems.append((shown, st))
            continue
        if shown in extra:
            continue  # listed twice: indexed once
        files.append((shown, raw, st[0], st[1]))
        extra[shown] = (captions[i], ids[i])
    scan_files = pa.Table.from_arrays([
        columns.strings([f[0] for f in files]), columns.binaries([f[1] for f in files]),
        columns.array(np.array([f[2] for f in files], dtype=np.int64), pa.int64()),
        columns.array(np.array([f[3] for f in files], dtype=np.int64), pa.int64()),
    ], schema=SCAN_SCHEMA)
    problem_table = pa.Table.from_arrays([columns.strings([p for p, _ in problems]),
                                          columns.strings([r for _, r in problems])], schema=PROBLEM_SCHEMA)
    extras = pa.table({"path": columns.strings(list(extra)),
                       "caption": columns.strings([c for c, _ in extra.values()]),
                       "item_id": columns.strings([d for _, d in extra.values()])})
    return ScanResult(scan_files, problem_table), extras


def _stat(path: str) -> tuple[int, int] | str:
    if not path:
        return "the listing's path is empty"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "listed file does not exist"
    except OSError as e:
        return f"cannot stat: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        return "listed path is not a regular file"
    return st.st_size, st.st_mtime_ns


def _strings(table: pa.Table, name: str) -> list[str | None]:
    if name not in table.column_names:
        return [None] * table.num_rows
    return [None if v is None else str(v) for v in table.column(name).to_pylist()]
