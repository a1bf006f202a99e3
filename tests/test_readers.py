"""Readers pinned to a version (DESIGN.md section 6): an open SearchIndex keeps answering from its
own generation while writers commit, compact, retrain and collect garbage, in this process and
in others; the server swaps versions and lets the old one go when its last request ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from llm2search.indexer.pipeline import IndexingConfig, index_folder
from llm2search.search.searcher import SearchIndex, open_index
from llm2search.store.manifest import read_manifest
from llm2search.store.readers import READERS, live_readers
from llm2search.store.vector_index import IndexConfig
from tests.conftest import make_photos, rewrite_photo

SMALL = dict(workers=0, batch_size=4, commit_seconds=0, progress=False, device="cpu")


def build(folder: Path, index_dir: Path, model: Path, shard_size: int, **extra) -> None:
    config = IndexingConfig(model=str(model), shard_size=shard_size, **SMALL, **extra)
    index_folder(folder, index_dir, config)


def answers(idx: SearchIndex, queries: np.ndarray) -> list[list[tuple[str, str]]]:
    return [[(h.id, h.path) for h in hits] for hits in idx.search_vectors(queries, k=5)]


def unit_queries(dim: int, n: int = 4, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_open_reader_survives_compaction_retrain_and_gc(tiny_model: Path, tmp_path: Path) -> None:
    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder, 70)
    build(folder, index, tiny_model, shard_size=6)  # many small shards
    idx = open_index(index)
    queries = unit_queries(idx.manifest.dim)
    before = answers(idx, queries)
    old_shards = {s.name for s in idx.manifest.shards}

    for i, p in enumerate(sorted(folder.rglob("*.png"))[:5]):
        rewrite_photo(p, seed=300 + i)
    build(folder, index, tiny_model, shard_size=1000)  # tombstones, then a compaction of them all
    build(folder, index, tiny_model, shard_size=1000, retrain=True,
          index=IndexConfig(ivf_threshold=10**9, nlist=4))  # retrain: every shard rewritten
    now = read_manifest(index)
    assert now.index_type == "ivfpq" and not old_shards & {s.name for s in now.shards}
    # The old version's files are still there because this reader holds them...
    assert all((index / "shards" / name).is_dir() for name in old_shards)
    assert answers(idx, queries) == before
    assert [idx.item(h[0])["path"] for h in before[0]] == [h[1] for h in before[0]]

    # ... and the next writer's garbage collection deletes them once it lets go.
    assert idx.refresh() and idx.generation == now.generation
    assert len(answers(idx, queries)[0]) == 5  # the newest version answers now
    build(folder, index, tiny_model, shard_size=1000, index=IndexConfig(ivf_threshold=10**9, nlist=4))
    assert not any((index / "shards" / name).exists() for name in old_shards)
    idx.close()
    assert live_readers(index) == []


def test_leases_of_dead_readers_do_not_keep_files(tiny_model: Path, tmp_path: Path) -> None:
    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder, 12)
    build(folder, index, tiny_model, shard_size=4)
    old_shards = {s.name for s in read_manifest(index).shards}
    code = ("import os, sys; from llm2search.search.searcher import open_index;"
            "idx = open_index(sys.argv[1]); print(len(idx.shards), flush=True); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", code, str(index)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(list((index / READERS).glob("*.lease"))) == 1  # left behind, its lock gone
    build(folder, index, tiny_model, shard_size=1000)  # compacts, collects garbage
    assert not any((index / "shards" / name).exists() for name in old_shards)
    assert list((index / READERS).glob("*.lease")) == []


READER_LOOP = r"""
import json, sys, time, os
import numpy as np
from llm2search.search.searcher import open_index
index, stop, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
pinned = open_index(index)
q = np.random.default_rng(os.getpid()).standard_normal((3, pinned.manifest.dim)).astype(np.float32)
q /= np.linalg.norm(q, axis=1, keepdims=True)
first = [[(h.id, h.path, round(h.score, 5)) for h in hits] for hits in pinned.search_vectors(q, k=5)]
pinned_ok = fresh_ok = failures = 0
generations = set()
errors = []
deadline = time.monotonic() + seconds
while not os.path.exists(stop) and time.monotonic() < deadline:
    try:
        got = [[(h.id, h.path, round(h.score, 5)) for h in hits] for hits in pinned.search_vectors(q, k=5)]
        assert got == first, "a pinned reader's answer changed"
        for hits in got:
            pinned.item(hits[0][0])
        pinned_ok += 1
        with open_index(index) as fresh:  # what a CLI query does: open, search, close
            generations.add(fresh.generation)
            for hits in fresh.search_vectors(q, k=5):
                assert len(hits) == 5
                fresh.item(hits[0].id)
        fresh_ok += 1
    except Exception as e:
        failures += 1
        errors.append(f"{type(e).__name__}: {e}"[:300])
print(json.dumps({"pinned": pinned_ok, "fresh": fresh_ok, "failures": failures,
                  "generations": len(generations), "errors": errors[:5]}))
"""

WRITER_LOOP = r"""
import json, os, sys
import numpy as np
from PIL import Image
from llm2search.indexer.pipeline import IndexingConfig, index_folder
from llm2search.store.manifest import read_manifest
from llm2search.store.vector_index import IndexConfig
folder, index, model, cycles = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
from pathlib import Path
files = sorted(Path(folder).rglob("*.png"))
ivf = IndexConfig(ivf_threshold=10**9, nlist=4)
compactions = retrains = 0
for cycle in range(cycles):
    for j, p in enumerate(files[cycle % 4::4][:4]):  # change a few photos: tombstones + new rows
        rng = np.random.default_rng(1000 * cycle + j)
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(p)
    base = dict(model=model, workers=0, batch_size=4, commit_seconds=0, progress=False, device="cpu")
    index_folder(folder, index, IndexingConfig(shard_size=4, **base))  # small shards
    before = {s.name for s in read_manifest(index).shards}
    retrain = cycle % 3 == 2
    index_folder(folder, index, IndexingConfig(shard_size=1000, retrain=retrain, index=ivf, **base))
    after = {s.name for s in read_manifest(index).shards}
    if before - after:
        compactions += 1
    retrains += retrain
print(json.dumps({"cycles": cycles, "compactions": compactions, "retrains": retrains,
                  "generation": read_manifest(index).generation}))
"""


def test_query_loops_in_other_processes_survive_writers(tiny_model: Path, tmp_path: Path) -> None:
    """Reader processes loop over searches (one pinned reader each, and a fresh open per loop,
    as CLI queries do) while a writer process reruns indexing that compacts, retrains and
    collects garbage. Every search must succeed; pinned answers must never change."""
    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder, 70)
    build(folder, index, tiny_model, shard_size=1000)
    stop = tmp_path / "stop"
    env = dict(os.environ)
    readers = [subprocess.Popen([sys.executable, "-c", READER_LOOP, str(index), str(stop), "300"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    deadline = time.monotonic() + 120
    while len(live_readers(index)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    writer = subprocess.run([sys.executable, "-c", WRITER_LOOP, str(folder), str(index), str(tiny_model), "3"],
                            capture_output=True, text=True, timeout=500, env=env)
    stop.touch()
    results = []
    for r in readers:
        out, err = r.communicate(timeout=120)
        assert r.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert writer.returncode == 0, writer.stderr
    written = json.loads(writer.stdout.strip().splitlines()[-1])
    print("writer:", written, "readers:", results)
    assert written["compactions"] == 3 and written["retrains"] == 1
    for r in results:
        assert r["failures"] == 0, r["errors"]
        assert r["pinned"] > 0 and r["fresh"] > 0
    assert max(r["generations"] for r in results) > 1  # the fresh opens did see new versions
