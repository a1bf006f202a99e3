"""The list of files that could not be indexed, kept as the Arrow table the index stores, with
this run's additions and removals beside it until they are committed."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from ..store import columns
from ..store.pathnames import display
from ..store.writer import ERRORS_SCHEMA


class FailureList:
    def __init__(self, table: pa.Table):
        self._table = table.cast(ERRORS_SCHEMA)
        self._recorded = set(self._table.column("path").to_pylist())  # failures are few
        self._new: dict[str, dict] = {}
        self._removed: set[str] = set()
        self.dirty = False

    def record(self, path: str, size: int, mtime_ns: int, reason: str) -> None:
        path = display(path)
        self._new[path] = {"path": path, "size": size, "mtime_ns": mtime_ns, "reason": reason,
                           "time": int(time.time())}
        self.dirty = True

    def clear(self, path: str) -> None:
        """The file was indexed: forget an earlier failure of it."""
        path = display(path)
        if self._new.pop(path, None) is not None or (path in self._recorded and path not in self._removed):
            self._removed.add(path)
            self.dirty = True

    def drop(self, paths: pa.Array) -> None:
        """Forget failures of files that are gone."""
        for path in paths.to_pylist():
            self.clear(path)

    def table(self) -> pa.Table:
        """The list as it stands, this run's changes included."""
        replaced = self._removed | set(self._new)
        keep = self._table
        if replaced and keep.num_rows:
            gone = columns.flags(pc.is_in(keep.column("path"), value_set=columns.strings(sorted(replaced))))
            keep = keep.filter(columns.array(~gone, pa.bool_()))
        new = pa.Table.from_pylist(list(self._new.values()), schema=ERRORS_SCHEMA)
        return pa.concat_tables([keep, new])

    def committed(self) -> None:
        """The table above was written: it is the base from now on."""
        self._table = self.table()
        self._recorded = set(self._table.column("path").to_pylist())
        self._new, self._removed = {}, set()
        self.dirty = False
