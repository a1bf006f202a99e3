"""kill -9 a real indexing process at many moments: the index must open and serve its last
commit, and a rerun must finish with exactly one live entry per file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llm2search.indexer.state import IndexState
from llm2search.search.searcher import SearchIndex
from llm2search.store.manifest import index_exists, read_manifest
from tests.conftest import live_rows, make_photos, rewrite_photo

RUNNER = """
import sys
from llm2search.indexer.pipeline import IndexingConfig, index_folder
from llm2search.store.vector_index import IndexConfig
folder, index, model, threshold = sys.argv[1:5]
config = IndexingConfig(model=model, workers=0, batch_size=4, shard_size=6, commit_seconds=0,
                        progress=False, index=IndexConfig(ivf_threshold=int(threshold), nlist=4))
report = index_folder(folder, index, config)
print(report.live)
"""


def run_indexer(folder: Path, index: Path, model: Path, crash_at: str | None = None,
                threshold: int = 10**9) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LLM2SEARCH_CRASH_AT"}
    if crash_at:
        env["LLM2SEARCH_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-c", RUNNER, str(folder), str(index), str(model), str(threshold)],
                          env=env, capture_output=True, text=True, timeout=300)


def live_paths(index: Path) -> list[str]:
    return [path for path, _ in live_rows(index)]


def assert_serves_last_commit(index: Path) -> None:
    if not index_exists(index):
        return  # killed before the first commit: nothing was promised yet
    manifest = read_manifest(index)
    searcher = SearchIndex(index, use_gpu=False)
    paths = live_paths(index)
    assert len(paths) == len(set(paths)) == manifest.count
    if manifest.count:
        vec = np.zeros(manifest.dim, dtype=np.float32)
        vec[0] = 1.0
        hits = searcher.search_vector(vec, k=min(5, manifest.count))
        assert len(hits) == min(5, manifest.count)


def assert_complete(index: Path, folder: Path) -> None:
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    paths = live_paths(index)
    assert sorted(paths) == files  # exactly one live entry per file
    leftovers = [p for p in (index / "shards").iterdir() if p.name not in {s.name for s in read_manifest(index).shards}]
    assert leftovers == []
    assert [p.name for p in index.glob(".*tmp*")] == []  # no scratch file (plan, spool) outlives its run


@pytest.mark.parametrize("point", ["after_shard:2", "before_manifest:3", "after_tombstones:2"])
def test_crash_at_commit_points_then_resume(point: str, tiny_model: Path, tmp_path: Path) -> None:
    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder, 14)
    if point.startswith("after_tombstones"):
        assert run_indexer(folder, index, tiny_model).returncode == 0
        for i, p in enumerate(sorted(folder.rglob("*.png"))[:4]):  # modified: tombstone + new row
            rewrite_photo(p, seed=100 + i)
    crashed = run_indexer(folder, index, tiny_model, crash_at=point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert_serves_last_commit(index)
    resumed = run_indexer(folder, index, tiny_model)
    assert resumed.returncode == 0, resumed.stderr
    assert_complete(index, folder)


def test_crash_during_retrain_keeps_flat_index_usable(tiny_model: Path, tmp_path: Path) -> None:
    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder, 70)
    crashed = run_indexer(folder, index, tiny_model, crash_at="retrain_before_manifest", threshold=64)
    assert crashed.returncode == -signal.SIGKILL
    assert read_manifest(index).index_type == "flat"
    assert_serves_last_commit(index)
    resumed = run_indexer(folder, index, tiny_model, threshold=64)
    assert resumed.returncode == 0, resumed.stderr
    assert read_manifest(index).index_type == "ivfpq"
    assert_complete(index, folder)
    assert len(list(index.glob("trained-*.faiss"))) == 1


def test_sigkill_at_random_moments(tiny_model: Path, tmp_path: Path) -> None:
    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder, 40)
    rng = np.random.default_rng(1)
    env = {k: v for k, v in os.environ.items() if k != "LLM2SEARCH_CRASH_AT"}
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(folder), str(index), str(tiny_model), "1000000000"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(2.0, 6.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert_serves_last_commit(index)
    assert run_indexer(folder, index, tiny_model).returncode == 0
    assert_complete(index, folder)
    live = IndexState.load(index, read_manifest(index)).live
    assert live.num_rows == 40 and len(set(live.column("path").to_pylist())) == 40
