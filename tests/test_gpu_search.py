"""GPU search (search/gpu.py) run on the CPU: the torch exact path on the CPU device against the
CPU index, faiss's GPU objects faked around CPU indexes, torch.cuda's memory figures mocked."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from llm2search.search import gpu
from llm2search.search.gpu import GpuSearchConfig
from llm2search.search.searcher import SearchIndex
from llm2search.store.shard import META_SCHEMA, ShardData
from llm2search.store.vector_index import IndexConfig
from llm2search.store.writer import IndexWriter

DIM = 32
PER_SHARD = 1000
DEAD = 300  # tombstones in the first shard: k + deleted passes faiss GPU's 2,048 at k = 1,800
IDENTITY = {"name": "synthetic", "fingerprint": "synthetic", "dim": DIM, "preprocess": {}, "text_config": {}}
ON_CPU_DEVICE = GpuSearchConfig(device="cpu")  # the GPU code, with tensors on the CPU


def _meta(n: int, offset: int) -> pa.Table:
    return pa.Table.from_pylist([
        {"path": f"/synthetic/{offset + i}.jpg", "size": 1, "mtime_ns": 0, "content_hash": str(offset + i),
         "width": 1, "height": 1, "format": "JPEG", "exif_time": None, "indexed_at": 0, "deleted": False}
        for i in range(n)], schema=META_SCHEMA)


def _store(path: Path, ivf: bool) -> tuple[Path, IndexConfig, np.ndarray]:
    rng = np.random.default_rng(7)
    config = IndexConfig(ivf_threshold=10**9, nlist=16, nprobe=16, rerank_factor=10, ivf_shard_rows=PER_SHARD)
    with IndexWriter(path, IDENTITY, DIM, config) as writer:
        for s in range(3):
            x = rng.standard_normal((PER_SHARD, DIM)).astype(np.float32)
            writer.commit(ShardData(x / np.linalg.norm(x, axis=1, keepdims=True), _meta(PER_SHARD, s * PER_SHARD)))
        writer.commit(deletions={writer.manifest.shards[0].name: np.arange(0, 2 * DEAD, 2)})
        if ivf:
            assert writer.maybe_train(force=True)
    queries = rng.standard_normal((12, DIM)).astype(np.float32)
    return path, config, queries / np.linalg.norm(queries, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def flat_store(tmp_path_factory: pytest.TempPathFactory):
    return _store(tmp_path_factory.mktemp("flat"), ivf=False)


@pytest.fixture(scope="module")
def ivf_store(tmp_path_factory: pytest.TempPathFactory):
    return _store(tmp_path_factory.mktemp("ivf"), ivf=True)


@pytest.fixture
def gpu_with(monkeypatch: pytest.MonkeyPatch):
    """A GPU with `free` bytes free, as torch.cuda reports it."""
    import torch

    def set_free(free: int) -> None:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 << 30))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(gpu, "nvidia_present", lambda: True)

    return set_free


def _answers(index: SearchIndex, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    """Each query's hits as (path, score), rows of equal score in path order (ties rank either way)."""
    return [sorted(((h.path, round(h.score, 5)) for h in hits), key=lambda h: (-h[1], h[0]))
            for hits in index.search_vectors(queries, k)]


def _dead_paths() -> set[str]:
    return {f"/synthetic/{r}.jpg" for r in range(0, 2 * DEAD, 2)}


def test_exact_float16_on_the_gpu_path_gives_the_cpu_indexs_hits(flat_store, gpu_with) -> None:
    path, config, queries = flat_store
    gpu_with(8 << 30)
    cpu = SearchIndex(path, config=config, use_gpu=False)
    on_gpu = SearchIndex(path, config=config, gpu=ON_CPU_DEVICE)
    plan = on_gpu.search_plan
    assert (plan.backend, plan.rows, plan.gpu_bytes) == ("gpu-exact-fp16", 3 * PER_SHARD - DEAD, (3 * PER_SHARD - DEAD) * DIM * 2)
    assert cpu.search_plan.backend == "cpu" and "off" in cpu.search_plan.reason
    # k past faiss GPU's 2,048, and k + deleted past it: exact answers, no deleted row.
    for k in (1, 10, 100, 1800, 2600):
        got = _answers(on_gpu, queries, k)
        assert got == _answers(cpu, queries, k), k
        assert not {p for hits in got for p, _ in hits} & _dead_paths()
    assert len(got[0]) == 2600
    on_gpu.close()
    assert on_gpu._gpu is None


def test_index_too_big_for_the_gpu_stays_on_the_cpu_and_says_why(flat_store, gpu_with) -> None:
    path, config, queries = flat_store
    gpu_with(100 << 20)  # half of it is less than the workspace alone
    index = SearchIndex(path, config=config, gpu=ON_CPU_DEVICE)
    assert index.search_plan.backend == "cpu"
    assert "float16 vectors need" in index.search_plan.reason and "Flat index" in index.search_plan.reason
    assert _answers(index, queries, 5) == _answers(SearchIndex(path, config=config, use_gpu=False), queries, 5)


def test_no_gpu_or_one_torch_cannot_use_is_reported_in_the_plan(flat_store, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    import torch

    path, config, _ = flat_store
    monkeypatch.setattr(gpu, "nvidia_present", lambda: False)
    assert SearchIndex(path, config=config).search_plan.reason == "no NVIDIA GPU"
    monkeypatch.setattr(gpu, "nvidia_present", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = "NVIDIA A100 is present but torch 2.14.1 (CUDA 13.0) needs NVIDIA driver >= 580 and this one is 535.104.05"
    import llm2search.models.cuda_builds as cb

    monkeypatch.setattr(cb, "torch_gpu_problem", lambda: line)
    with caplog.at_level(logging.WARNING):
        plan = SearchIndex(path, config=config).search_plan
    assert (plan.backend, plan.reason) == ("cpu", line)
    assert any(line in r.getMessage() for r in caplog.records)


def test_a_gpu_error_at_search_time_answers_on_the_cpu_and_is_counted(flat_store, gpu_with,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    path, config, queries = flat_store
    gpu_with(8 << 30)
    index = SearchIndex(path, config=config, gpu=ON_CPU_DEVICE)

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(index._gpu, "candidates", oom)
    assert _answers(index, queries, 10) == _answers(SearchIndex(path, config=config, use_gpu=False), queries, 10)
    assert index.search_plan.stats == {"cpu_searches_after_gpu_error": 1}


class _FakeGpuIndex:
    """What faiss.index_cpu_to_gpu returns, around the CPU index: faiss GPU's k limit, and a
    check that no two threads are inside it at once (faiss GPU indexes are not thread-safe)."""

    def __init__(self, cpu_index):
        self.cpu = cpu_index
        self.inside = 0
        self.overlaps = 0
        self.searches = 0

    def __getattr__(self, name):
        return getattr(self.cpu, name)

    def __setattr__(self, name, value):
        if name == "nprobe":
            self.cpu.nprobe = value
        else:
            object.__setattr__(self, name, value)

    def add_with_ids(self, x, ids):
        self.cpu.add_with_ids(x, ids)

    def search(self, x, k):
        if k > 2048:
            raise RuntimeError("Error: 'k <= GPU_MAX_SELECTION_K' failed")
        self.inside += 1
        if self.inside > 1:
            self.overlaps += 1
        time.sleep(0.002)
        try:
            self.searches += 1
            return self.cpu.search(x, k)
        finally:
            self.inside -= 1


@pytest.fixture
def fake_faiss_gpu(monkeypatch: pytest.MonkeyPatch):
    import faiss

    made = {"resources": 0, "indexes": []}

    class Resources:
        def __init__(self):
            made["resources"] += 1

    class ClonerOptions:
        useFloat16LookupTables = False

    def to_gpu(resources, device, index, options):
        assert isinstance(resources, Resources) and options.useFloat16LookupTables
        assert isinstance(index, faiss.IndexIVFPQ) and index.pq.nbits == 8
        made["indexes"].append(_FakeGpuIndex(index))
        return made["indexes"][-1]

    monkeypatch.setattr(faiss, "StandardGpuResources", Resources, raising=False)
    monkeypatch.setattr(faiss, "GpuClonerOptions", ClonerOptions, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(gpu, "_RESOURCES", {})
    return made


def _between_pq_and_exact(live: int) -> int:
    """Free memory at which the exact float16 copy does not fit in half, the 8-bit IVF-PQ does."""
    exact = live * DIM * 2 + gpu.WORKSPACE_BYTES
    pq = live * (gpu.gpu_subquantizers(DIM) + 8) + gpu.WORKSPACE_BYTES
    return exact + pq  # half of it lies between the two


def test_beyond_gpu_memory_an_8bit_ivfpq_on_faiss_gpu(ivf_store, gpu_with, fake_faiss_gpu) -> None:
    path, config, queries = ivf_store
    live = 3 * PER_SHARD - DEAD
    gpu_with(_between_pq_and_exact(live))
    index = SearchIndex(path, config=config, gpu=ON_CPU_DEVICE)
    plan = index.search_plan
    assert plan.backend == "gpu-ivfpq8" and plan.rows == live and "32-byte codes" in plan.reason
    assert fake_faiss_gpu["indexes"][0].ntotal == live  # tombstoned rows never go to the GPU
    exact = SearchIndex(path, config=IndexConfig(ivf_threshold=10**9, rerank_factor=10_000, nprobe=16), use_gpu=False)
    truth = [{p for p, _ in hits} for hits in _answers(exact, queries, 10)]
    got = _answers(index, queries, 10)
    recall = np.mean([len({p for p, _ in g} & t) / 10 for g, t in zip(got, truth)])
    assert recall >= 0.9, recall  # 8-bit PQ estimates, exact re-rank on the stored vectors
    assert not {p for hits in got for p, _ in hits} & _dead_paths()
    # k past faiss GPU's limit: the CPU shards answer, and the plan counts it.
    deep = _answers(index, queries[:1], 2500)
    assert deep == _answers(SearchIndex(path, config=config, use_gpu=False), queries[:1], 2500)
    assert plan.stats == {"cpu_searches_k_over_2048": 1}
    # A reload (a new version, or a second reader) shares the device's one StandardGpuResources.
    SearchIndex(path, config=config, gpu=ON_CPU_DEVICE)
    assert fake_faiss_gpu["resources"] == 1 and len(fake_faiss_gpu["indexes"]) == 2


def test_threads_search_a_gpu_index_one_at_a_time(ivf_store, gpu_with, fake_faiss_gpu) -> None:
    path, config, queries = ivf_store
    gpu_with(_between_pq_and_exact(3 * PER_SHARD - DEAD))
    index = SearchIndex(path, config=config, gpu=ON_CPU_DEVICE)
    want = [_answers(index, q[None], 10)[0] for q in queries]
    errors, mismatched = [], []

    def worker(offset: int) -> None:
        for j in range(len(queries)):
            q = (j + offset) % len(queries)
            try:
                if _answers(index, queries[q][None], 10)[0] != want[q]:
                    mismatched.append(q)
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(o,)) for o in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fake = fake_faiss_gpu["indexes"][-1]
    assert (errors, mismatched) == ([], [])
    assert fake.searches >= 8 * len(queries) and fake.overlaps == 0


def test_info_reports_the_search_plan_in_the_cli_and_the_server(flat_store, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from llm2search.cli import app
    from llm2search.serve.config import ServiceConfig
    from llm2search.serve.service import SearchService

    path, _, _ = flat_store
    monkeypatch.setattr(gpu, "nvidia_present", lambda: False)
    out = CliRunner().invoke(app, ["info", "--index", str(path), "--search", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["search"] == {"backend": "cpu", "reason": "no NVIDIA GPU", "device": None,
                                                "rows": 0, "gpu_bytes": 0, "stats": {}}
    text = CliRunner().invoke(app, ["info", "--index", str(path), "--search"]).stdout
    assert "search: cpu (no NVIDIA GPU)" in text
    assert "search" not in json.loads(CliRunner().invoke(app, ["info", "--index", str(path), "--json"]).stdout)
    served = SearchService(ServiceConfig(path, device="cpu", use_gpu=False)).info()["search"]
    assert (served["backend"], served["reason"]) == ("cpu", "GPU search is off (--cpu-search)")
