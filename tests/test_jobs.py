"""The store's side of a distributed run (store/jobs.py, staged shards): units are planned
once, a staged shard is garbage until a commit names it with its unit, a unit is done exactly
once, and any other writer's commit ends the job. Plus the watchdog's choice of stuck stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from llm2search.cluster.watchdog import StalledError, Watchdog, stuck_stage
from llm2search.store.jobs import UNITS_SCHEMA, read_units
from llm2search.store.manifest import read_manifest
from llm2search.store.shard import META_SCHEMA, ShardData, shard_dir, stage_shard
from llm2search.store.writer import IndexWriter

DIM = 8
MODEL = {"name": "t", "fingerprint": "f", "dim": DIM, "preprocess": {}, "text_config": {}}


def _units(n: int, per_unit: int) -> tuple[pa.Table, list[int]]:
    unit = [i // per_unit for i in range(n)]
    table = pa.table({"unit": pa.array(unit, pa.int32()), "path": [f"/p/{i}.jpg" for i in range(n)],
                      "path_bytes": pa.nulls(n, pa.binary()), "size": [1] * n, "mtime_ns": [1] * n,
                      "old_shard": pa.nulls(n, pa.string()), "old_row": pa.nulls(n, pa.int64()),
                      "caption": pa.nulls(n, pa.string()), "item_id": pa.nulls(n, pa.string())},
                     schema=UNITS_SCHEMA)
    return table, np.bincount(unit).tolist()


def _data(paths: list[str], seed: int) -> ShardData:
    v = np.random.default_rng(seed).normal(size=(len(paths), DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    meta = pa.Table.from_pylist([{"path": p, "size": 1, "mtime_ns": 1, "content_hash": f"{i:032x}",
                                  "deleted": False} for i, p in enumerate(paths)], schema=META_SCHEMA)
    return ShardData(v, meta)


def test_units_are_committed_once_with_their_staged_shards_and_resume_after_reopen(tmp_path: Path) -> None:
    index = tmp_path / "index"
    units, rows = _units(7, 3)  # units of 3, 3, 1 files
    with IndexWriter(index, MODEL, DIM) as w:
        job = w.start_job({"kind": "folder", "path": "/p"}, units, rows, chunk_rows=2)
        assert job is not None and job.pending() == [0, 1, 2] and read_manifest(index).job["id"] == job.id
        assert list(job.groups(1)) == [2, 3] and read_units(index, job, [2]).column("path").to_pylist() == ["/p/6.jpg"]
        first = stage_shard(index, job.first_seq + 0, _data(["/p/0.jpg", "/p/1.jpg", "/p/2.jpg"], 0), None)
        retried = stage_shard(index, job.first_seq + 1, _data(["/p/3.jpg"], 1), None)  # an attempt that lost
        second = stage_shard(index, job.first_seq + 1, _data(["/p/3.jpg", "/p/4.jpg"], 2), None)
        assert retried.info.name != second.info.name  # per-attempt names never collide
        w.commit(staged=[first], units_done=[0])
        with pytest.raises(ValueError, match="already done"):
            w.commit(staged=[second], units_done=[0])
        assert read_manifest(index).total_rows == 3
    # A new driver: the job resumes where it was; the losing attempt's shard is garbage.
    with IndexWriter(index, MODEL, DIM) as w:
        assert w.job is not None and w.job.pending() == [1, 2]
        assert not shard_dir(index, retried.info.name).exists() and not shard_dir(index, second.info.name).exists()
        again = stage_shard(index, w.job.first_seq + 1, _data(["/p/3.jpg", "/p/4.jpg", "/p/5.jpg"], 3), None)
        w.commit(staged=[again], units_done=[1])
        w.commit(units_done=[2])  # a unit whose files all failed: no shard, still done
        m = read_manifest(index)
        assert m.job is None and m.total_rows == 6 and w.job is None
    assert not (index / "jobs").exists() or not any((index / "jobs").iterdir())  # collected when it ended


def test_any_other_commit_ends_a_job_and_old_manifests_open(tmp_path: Path) -> None:
    index = tmp_path / "index"
    units, rows = _units(4, 2)
    with IndexWriter(index, MODEL, DIM) as w:
        w.start_job({"kind": "folder", "path": "/p"}, units, rows, chunk_rows=2)
        w.commit(new_shard=_data(["/q/1.jpg"], 5))  # a single-host commit: its change may stale the plan
        assert w.job is None and read_manifest(index).job is None
        with pytest.raises(ValueError, match="only while a job is open"):
            w.commit(units_done=[0])
    raw = json.loads((index / "manifest.json").read_text())
    raw.pop("job")  # a manifest written before jobs existed
    (index / "manifest.json").write_text(json.dumps(raw))
    assert read_manifest(index).job is None and read_manifest(index).count == 1


def test_a_staged_shard_of_another_quantizer_or_missing_files_is_refused(tmp_path: Path) -> None:
    index = tmp_path / "index"
    units, rows = _units(2, 1)
    with IndexWriter(index, MODEL, DIM) as w:
        job = w.start_job({"kind": "folder", "path": "/p"}, units, rows, chunk_rows=1)
        staged = stage_shard(index, job.first_seq, _data(["/p/0.jpg"], 0), None)
        (shard_dir(index, staged.info.name) / "vectors.npy").write_bytes(b"short")
        with pytest.raises(ValueError, match="bytes"):
            w.commit(staged=[staged], units_done=[0])
        assert read_manifest(index).total_rows == 0


def test_watchdog_names_the_stage_that_has_work_and_does_none() -> None:
    assert stuck_stage({"actors": 2, "decoded": 10, "embedded": 4, "received": 4}, 40) == "embedded"
    assert stuck_stage({"actors": 2, "decoded": 8, "embedded": 8, "received": 8}, 40) == "decoded"
    assert stuck_stage({"actors": 2, "decoded": 40, "embedded": 40, "received": 30}, 40) == "received"
    assert stuck_stage({"actors": 2, "decoded": 40, "embedded": 40, "received": 40, "writing": 2}, 40) == "written"
    assert stuck_stage({"decoded": 0}, 40) == "embedded"  # no actor ever loaded the model
    now = [0.0]
    dog = Watchdog(30, 40, clock=lambda: now[0])
    dog.observe({"decoded": 10, "embedded": 4})
    now[0] = 29
    dog.check()
    dog.observe({"decoded": 12, "embedded": 4})  # progress resets the timer
    now[0] = 58
    dog.check()
    now[0] = 60
    with pytest.raises(StalledError, match="embed") as e:
        dog.check()
    assert e.value.stage == "embedded" and "rerun the command to resume" in str(e.value)


def test_a_parquet_listing_is_planned_like_a_folder_and_its_captions_reach_the_rows(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from llm2search.cluster.plan import Source, plan_job
    from llm2search.cluster.tasks import _decode_group
    from llm2search.indexer.decode import DecodeOptions
    from llm2search.models.spec import PreprocessConfig
    from llm2search.store.jobs import units_path
    from llm2search.store.writer import read_errors

    from .conftest import make_photos

    photos = make_photos(tmp_path / "data" / "images", 3)
    listing = tmp_path / "data" / "listing.parquet"
    pq.write_table(pa.table({"path": ["images/" + p.name if p.parent.name == "images" else str(p) for p in photos]
                             + ["images/missing.jpg", "images/" + photos[1].name],  # a missing file, a repeat
                             "caption": ["a", "b", "c", "d", "b again"], "id": ["1", "2", "3", "4", "5"]}), listing)
    index = tmp_path / "index"
    with IndexWriter(index, MODEL, DIM) as w:
        source = Source.of(listing)
        assert source.kind == "listing"
        job, summary = plan_job(w, source, unit_files=2, chunk_rows=2, retry_errors=False)
        assert job is not None and job.unit_rows == (2, 1) and summary.problems == 1
        units = read_units(index, job)
        assert units.column("path").to_pylist() == [str(p.resolve()) for p in photos]
        assert units.column("caption").to_pylist() == ["a", "b", "c"] and units.column("item_id").to_pylist() == ["1", "2", "3"]
        assert read_errors(index, w.manifest).column("reason").to_pylist() == ["listed file does not exist"]
        rows = _decode_group(units_path(index, job.id), 0, DecodeOptions(PreprocessConfig(image_size=32)), DIM, None)
        assert rows.column("caption").to_pylist() == ["a", "b"] and rows.column("file").to_pylist() == [0, 1]
        assert rows.column("error").null_count == 2 and rows.column("pixels").null_count == 0
