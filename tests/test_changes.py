"""Columnar change detection: plan_changes on hand-built scans and a real store, checked against
the exact answer for every kind of change (new, changed, unchanged, deleted, known bad, renamed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from llm2search.indexer import plan_files
from llm2search.indexer.changes import plan_changes, scan_table
from llm2search.indexer.plan_files import PlanFiles
from llm2search.indexer.scan import FileEntry, ScanProblem
from llm2search.indexer.state import IndexState
from llm2search.store.manifest import read_manifest
from llm2search.store.shard import META_SCHEMA, ShardData
from llm2search.store.writer import ERRORS_SCHEMA, IndexWriter

DIM = 8


def _meta(paths: list[str], sizes: list[int], mtimes: list[int], hashes: list[str]) -> pa.Table:
    n = len(paths)
    cols = {"path": paths, "size": sizes, "mtime_ns": mtimes, "content_hash": hashes,
            "width": [1] * n, "height": [1] * n, "format": ["JPEG"] * n, "indexed_at": [0] * n,
            "deleted": [False] * n}
    return pa.table({f.name: pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(n, f.type)
                     for f in META_SCHEMA}, schema=META_SCHEMA)


def _store(index: Path) -> None:
    """Two shards; /p/b.jpg's first row is tombstoned (it was re-indexed into shard 2)."""
    rng = np.random.default_rng(0)
    with IndexWriter(index, {"name": "t", "dim": DIM}, DIM) as w:
        w.commit(ShardData(rng.standard_normal((4, DIM)),
                           _meta(["/p/a.jpg", "/p/b.jpg", "/p/sub/c.jpg", "/other/x.jpg"],
                                 [10, 20, 30, 40], [1, 2, 3, 4], [f"{i:032x}" for i in (1, 2, 3, 4)])))
        first = w.manifest.shards[0].name
        w.commit(ShardData(rng.standard_normal((2, DIM)),
                           _meta(["/p/b.jpg", "/p/d.jpg"], [21, 50], [2, 5], [f"{i:032x}" for i in (22, 5)])),
                 deletions={first: np.array([1])})


def test_plan_against_exact_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = tmp_path / "index"
    _store(index)
    manifest = read_manifest(index)
    s1, s2 = (s.name for s in manifest.shards)
    state = IndexState.load(index, manifest)
    assert sorted(state.live.column("path").to_pylist()) == ["/other/x.jpg", "/p/a.jpg", "/p/b.jpg",
                                                            "/p/d.jpg", "/p/sub/c.jpg"]
    odd = os.fsdecode(b"/p/caf\xe9.jpg")  # not UTF-8: stored readable, opened by its bytes
    scan = scan_table([
        FileEntry("/p/a.jpg", 10, 1),  # unchanged
        FileEntry("/p/b.jpg", 21, 9),  # changed (mtime) -> replaces shard 2 row 0
        ScanProblem("/p/sub/c.jpg", "cannot stat"),  # a problem now: not deleted
        FileEntry("/p/new.jpg", 1, 1),  # new
        FileEntry("/p/bad.jpg", 7, 7),  # failed before with the same size and mtime
        FileEntry("/p/bad2.jpg", 8, 9),  # failed before, changed since: retried
        FileEntry(odd, 3, 3),
    ], batch_rows=2)  # several batches
    errors = pa.Table.from_pylist([
        {"path": "/p/bad.jpg", "size": 7, "mtime_ns": 7, "reason": "x", "time": 0},
        {"path": "/p/bad2.jpg", "size": 8, "mtime_ns": 8, "reason": "x", "time": 0},
        {"path": "/p/gone.jpg", "size": 1, "mtime_ns": 1, "reason": "x", "time": 0},
        {"path": "/other/bad.jpg", "size": 1, "mtime_ns": 1, "reason": "x", "time": 0},
        {"path": "/p/sub/c.jpg", "size": 1, "mtime_ns": 1, "reason": "x", "time": 0},  # met, as a problem
    ], schema=ERRORS_SCHEMA)
    plan = plan_changes(scan, state, "/p", errors)

    assert (plan.scanned, plan.unchanged, plan.known_bad) == (6, 1, 1)
    embed = plan.embed.to_pylist()
    assert [(r["path"], r["old_shard"], r["old_row"]) for r in embed] == [
        ("/p/b.jpg", s2, 0), ("/p/new.jpg", None, None), ("/p/bad2.jpg", None, None),
        ("/p/caf\\xe9.jpg", None, None)]
    assert embed[-1]["path_bytes"] == b"/p/caf\xe9.jpg"
    files = list(plan.files())
    assert files[0].replaces == (s2, 0) and files[1].replaces is None
    assert files[-1].path == odd  # the decoder opens the exact name
    for spill in (10**9, 1):  # the same files, kept in memory or read back from a scratch file
        monkeypatch.setattr(plan_files, "SPILL_ROWS", spill)
        monkeypatch.setattr(plan_files, "BATCH_ROWS", 3)  # several batches
        with PlanFiles(plan.embed, tmp_path) as kept:
            assert kept.spilled == (spill == 1) and kept.rows == 4
            assert list(kept) == files and list(kept) == files  # read again from the start
        assert os.listdir(tmp_path) == ["index"]  # the scratch file has no name
    # /p/d.jpg is gone; /p/sub/c.jpg has a problem (kept); /other is not under the root
    assert {k: v.tolist() for k, v in plan.deleted.items()} == {s2: [1]}
    assert plan.stale_errors.to_pylist() == ["/p/gone.jpg"]
    assert plan.problems.to_pylist() == [{"path": "/p/sub/c.jpg", "reason": "cannot stat"}]

    retry = plan_changes(scan, state, "/p", errors, retry_errors=True)
    assert retry.known_bad == 0 and "/p/bad.jpg" in retry.embed.column("path").to_pylist()

    lookup = plan.vectors_by_hash()
    assert lookup.find(f"{2:032x}") == (s1, 1)  # a tombstoned row still holds its vector
    assert lookup.find(f"{22:032x}") == (s2, 0) and lookup.find(f"{99:032x}") is None
    shards, rows = lookup.find_many([f"{5:032x}", f"{99:032x}", f"{1:032x}"])
    assert shards.tolist() == [1, -1, 0] and rows.tolist() == [1, -1, 0]


def test_plan_of_an_empty_index_and_a_single_file_root(tmp_path: Path) -> None:
    index = tmp_path / "index"
    with IndexWriter(index, {"name": "t", "dim": DIM}, DIM):
        pass
    state = IndexState.load(index, read_manifest(index))
    assert state.live.num_rows == 0 and len(state.vectors_by_hash()) == 0
    scan = scan_table([FileEntry("/p/a.jpg", 1, 1)])
    plan = plan_changes(scan, state, "/p/a.jpg", ERRORS_SCHEMA.empty_table())
    assert plan.embed.column("path").to_pylist() == ["/p/a.jpg"] and plan.deleted == {}
    assert plan.vectors_by_hash().find(f"{1:032x}") is None
    first = plan_changes(scan_table([FileEntry(f"/p/{i}.jpg", i, i) for i in range(5)], batch_rows=2), state, "/p",
                         ERRORS_SCHEMA.empty_table())  # every file is new: the scan's own columns
    assert first.embed.column("path").to_pylist() == [f"/p/{i}.jpg" for i in range(5)]
    assert first.embed.column("old_shard").null_count == 5 and first.embed.column("size").to_pylist() == list(range(5))
    empty = plan_changes(scan_table([]), state, "/p", ERRORS_SCHEMA.empty_table())
    assert empty.embed.num_rows == 0 and empty.scanned == 0
