"""The files a run embeds, kept off the heap while they are decoded. A change plan lists them
as an Arrow table (EMBED_SCHEMA: a path per file, ~110 B each: 110 MB for a million new photos)
that the decoder reads once, in order, over the whole run. Past SPILL_ROWS files the table is
written to an unnamed scratch file in the index directory and read back a batch at a time, so
the main process holds one batch of it while files are decoded, embedded and committed."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO, Iterator

import pyarrow as pa

from .changes import EMBED_SCHEMA, PlannedFile, planned_files

SPILL_ROWS = 65_536  # files to embed from which the list is spilled (read at call time)
BATCH_ROWS = 8_192  # files materialised as decoder inputs per step


class PlanFiles:
    """The plan's files to embed, in order: in memory when few, else from a scratch file (no
    name on disk: O_TMPFILE where the file system has it, else unlinked at once, so a killed
    run leaves nothing). Use as a context manager; the file goes with close()."""

    def __init__(self, embed: pa.Table, directory: Path):
        self.rows = embed.num_rows
        self._table: pa.Table | None = embed
        self._fh: IO[bytes] | None = None
        if self.rows >= SPILL_ROWS:
            self._fh = tempfile.TemporaryFile(dir=directory, prefix=".plan.tmp-")
            try:
                with pa.ipc.new_stream(pa.PythonFile(self._fh, mode="w"), EMBED_SCHEMA) as out:
                    for batch in embed.to_batches(max_chunksize=BATCH_ROWS):
                        out.write_batch(batch)
            except BaseException:  # a full disk, say: the scratch file goes, the error is the caller's
                self.close()
                raise
            self._table = None

    @property
    def spilled(self) -> bool:
        return self._fh is not None

    def __enter__(self) -> "PlanFiles":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[PlannedFile]:
        return planned_files(self._batches())

    def close(self) -> None:
        self._table = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _batches(self) -> Iterator[pa.RecordBatch]:
        if self._fh is None:
            if self._table is not None:
                yield from self._table.to_batches(max_chunksize=BATCH_ROWS)
            return
        self._fh.seek(0)
        reader = pa.ipc.open_stream(pa.PythonFile(self._fh, mode="r"))
        for batch in reader:
            yield batch

