"""GPU search (DESIGN §8): chosen once, when a version of the index is opened, and reported.

- `gpu-exact-fp16`: every live vector as one float16 matrix on the GPU, searched by torch matmul
  in chunks; exact, any k, tombstoned rows never loaded. Used when it fits in the share of free
  GPU memory search may take (1280-d: 2.56 GB per million vectors).
- `gpu-ivfpq8`: past that, for IVF-PQ indexes with faiss GPU: an IVF-PQ with 8-bit codes (the
  codes faiss GPU takes; the stored 4-bit fast-scan shards have no GPU version), built at open
  from the stored float16 vectors on the shared coarse centroids. faiss GPU returns at most 2,048
  results, so deeper searches use the CPU shards (counted in the plan).
- `cpu`: the shards' own indexes (Flat, or IVF-PQ fast-scan) everywhere else.

Either GPU path only proposes candidates; the searcher re-ranks them exactly on the stored
vectors, as it does for the CPU index. Searches on a GPU index run one at a time (a lock: faiss
GPU indexes are not thread-safe, even for searches), and each device has one
StandardGpuResources for the whole process, shared by every index and every reload.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 256 << 20  # scores of one query batch against one chunk of the matrix
FP16_MARGIN = 32  # extra exact candidates: float16 scores round at ~2e-4, the re-rank decides
FAISS_GPU_MAX_K = 2048  # faiss GPU's limit on k (and nprobe)
GPU_PQ_SUBQUANTIZERS = (64, 48, 40, 32, 16, 8)  # 8-bit codes: M bytes per vector, M the GPU takes
PQ_TRAIN_ROWS = 65_536  # sample for the 8-bit product quantizer (256 centroids x ~256 points)
ADD_ROWS = 65_536  # rows copied to the GPU per step


@dataclass(frozen=True)
class GpuSearchConfig:
    """How much of the GPU search may take, and which device."""

    memory_fraction: float = 0.5  # of the device's free memory at open time (the models need the rest)
    device: str | None = None  # torch device; None: cuda:0. Tests pass "cpu" to run the GPU code on the CPU.


@dataclass(frozen=True)
class SearchPlan:
    """What answers unfiltered searches of one opened version, and why (`llm2search info --search`)."""

    backend: str  # "cpu", "gpu-exact-fp16" or "gpu-ivfpq8"
    reason: str
    device: str | None = None
    rows: int = 0  # live vectors on the GPU
    gpu_bytes: int = 0
    stats: dict[str, int] = field(default_factory=dict, compare=False)  # shared, mutable counters

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class TorchExact:
    """Every live row of every shard in one float16 matrix on `device`; exact top candidates."""

    backend = "gpu-exact-fp16"

    def __init__(self, shards: Sequence[Any], dim: int, device: str):
        import torch

        self.device = device
        self.owners, self.rows = _live_rows(shards)
        self.vectors = torch.empty((len(self.rows), dim), dtype=torch.float16, device=device)
        at = 0
        for owner, shard in enumerate(shards):
            live = self.rows[self.owners == owner]
            for start in range(0, len(live), ADD_ROWS):
                part = np.asarray(shard.vectors[live[start:start + ADD_ROWS]], dtype=np.float16)
                self.vectors[at:at + len(part)].copy_(torch.from_numpy(part))
                at += len(part)
        self.lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self.vectors.numel() * 2

    def candidates(self, queries: np.ndarray, k: int, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Each query's k best rows (plus a margin for float16 rounding); `depth` is for
        approximate indexes and not needed here."""
        import torch

        n = len(self.rows)
        depth = min(n, k + FP16_MARGIN)
        chunk = max(depth, WORKSPACE_BYTES // (2 * max(1, len(queries))))
        with self.lock, torch.inference_mode():
            q = torch.from_numpy(queries).to(self.device, torch.float16)
            best_s, best_i = [], []
            for start in range(0, n, chunk):
                scores = (q @ self.vectors[start:start + chunk].T).float()
                s, i = scores.topk(min(depth, scores.shape[1]), dim=1)
                best_s.append(s)
                best_i.append(i + start)
            s, i = torch.cat(best_s, dim=1), torch.cat(best_i, dim=1)
            if s.shape[1] > depth:
                s, pick = s.topk(depth, dim=1)
                i = i.gather(1, pick)
            scores, ids = s.cpu().numpy(), i.cpu().numpy()
        return scores, self.owners[ids], self.rows[ids]

    def close(self) -> None:
        self.vectors = None


class FaissIvfPq8:
    """An IVF-PQ with 8-bit codes on a faiss GPU, over the shared coarse centroids."""

    backend = "gpu-ivfpq8"

    def __init__(self, shards: Sequence[Any], trained: Any, device_id: int, nprobe: int, stats: dict[str, int]):
        import faiss

        centroids_index = faiss.extract_index_ivf(trained).quantizer
        dim, nlist = centroids_index.d, centroids_index.ntotal
        m = gpu_subquantizers(dim)
        quantizer = faiss.IndexFlatIP(dim)
        quantizer.add(centroids_index.reconstruct_n(0, nlist))
        cpu = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        self.owners, self.rows = _live_rows(shards)
        self.offsets = np.cumsum([0] + [s.info.count for s in shards])
        sample = _sample_rows(shards, self.owners, self.rows, PQ_TRAIN_ROWS)
        cpu.train(sample)  # the centroids are trained already: only the product quantizer is
        options = faiss.GpuClonerOptions()
        options.useFloat16LookupTables = True  # needed for M > 48 with 8-bit codes, and faster
        self._quantizer = quantizer  # the CPU index refers to it; keep it alive
        self.index = faiss.index_cpu_to_gpu(gpu_resources(device_id), device_id, cpu, options)
        self.index.nprobe = min(nprobe, nlist, FAISS_GPU_MAX_K)
        for owner, shard in enumerate(shards):
            live = self.rows[self.owners == owner]
            for start in range(0, len(live), ADD_ROWS):
                rows = live[start:start + ADD_ROWS]
                x = np.ascontiguousarray(shard.vectors[rows], dtype=np.float32)
                self.index.add_with_ids(x, (self.offsets[owner] + rows).astype(np.int64))
        self.code_bytes = m
        self.stats = stats
        self.lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return len(self.rows) * (self.code_bytes + 8)

    def candidates(self, queries: np.ndarray, k: int, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """None when k itself is past faiss GPU's limit (the caller searches the CPU shards)."""
        if k > FAISS_GPU_MAX_K:
            self.stats["cpu_searches_k_over_2048"] = self.stats.get("cpu_searches_k_over_2048", 0) + 1
            return None
        with self.lock:
            scores, ids = self.index.search(queries, min(depth, FAISS_GPU_MAX_K))
        owners = np.searchsorted(self.offsets, np.maximum(ids, 0), side="right") - 1
        rows = np.where(ids >= 0, ids - self.offsets[owners], -1)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        return scores, owners, rows

    def close(self) -> None:
        self.index = None


def gpu_candidates(backend: Any, plan: SearchPlan, queries: np.ndarray, k: int,
                   depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The backend's candidates, or None where the CPU shards must answer: k past what the
    backend takes, or a GPU error at search time (counted in the plan, said once in the log)."""
    try:
        return backend.candidates(queries, k, depth)
    except (RuntimeError, MemoryError) as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not plan.stats.get("cpu_searches_after_gpu_error"):
            text = (str(e).strip().splitlines() or [type(e).__name__])[0]
            log.warning("warning: GPU search failed (%s); this search ran on the CPU", text)
        plan.stats["cpu_searches_after_gpu_error"] = plan.stats.get("cpu_searches_after_gpu_error", 0) + 1
        return None


def gpu_subquantizers(dim: int) -> int:
    """The most 8-bit sub-quantizers faiss GPU takes that divide `dim` (64 for 1280-d: 64 B/row)."""
    return next((m for m in GPU_PQ_SUBQUANTIZERS if dim % m == 0), 1)


_RESOURCES: dict[int, Any] = {}
_RESOURCES_LOCK = threading.Lock()


def gpu_resources(device_id: int) -> Any:
    """One StandardGpuResources per device for the whole process (each reserves scratch memory,
    up to 1.5 GiB): every shard, every index and every reload shares it."""
    import faiss

    with _RESOURCES_LOCK:
        if device_id not in _RESOURCES:
            _RESOURCES[device_id] = faiss.StandardGpuResources()
        return _RESOURCES[device_id]


def nvidia_present() -> bool:
    """A CPU-only machine opens an index without importing torch (models/cuda_builds.py)."""
    from ..models.cuda_builds import nvidia_present as present

    return present()


def faiss_gpus() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def plan_search(manifest: Any, shards: Sequence[Any], trained: Any, nprobe: int, use_gpu: bool,
                config: GpuSearchConfig = GpuSearchConfig()) -> tuple[SearchPlan, Any]:
    """Choose how unfiltered searches of this version run: (the plan, the GPU backend or None)."""
    live = sum(s.info.count - int(s.dead.sum()) for s in shards)
    if not use_gpu:
        return SearchPlan("cpu", "GPU search is off (--cpu-search)"), None
    if not live:
        return SearchPlan("cpu", "the index is empty"), None
    if config.device is None and not nvidia_present():
        return SearchPlan("cpu", "no NVIDIA GPU"), None
    import torch

    from ..models.cuda_builds import torch_gpu_problem

    if config.device is None and not torch.cuda.is_available():
        problem = torch_gpu_problem()
        if problem:
            log.warning("warning: %s (searching on the CPU meanwhile)", problem)
        return SearchPlan("cpu", problem or "torch sees no GPU"), None
    device = config.device or "cuda:0"
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    budget = int(free * config.memory_fraction)
    exact = live * manifest.dim * 2 + WORKSPACE_BYTES
    gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
    try:
        if exact <= budget:
            backend = TorchExact(shards, manifest.dim, device)
            return SearchPlan(backend.backend, f"{live:,} vectors in float16 ({gib(backend.nbytes)}) fit in "
                              f"{gib(budget)} of GPU memory", device, live, backend.nbytes, {}), backend
        why = f"float16 vectors need {gib(exact)}, {gib(budget)} of GPU memory is free for search"
        if manifest.index_type != "ivfpq" or trained is None:
            return SearchPlan("cpu", f"{why}; a Flat index has no smaller GPU form"), None
        if faiss_gpus() == 0:
            return SearchPlan("cpu", f"{why}; faiss has no GPU support (install the `gpu` extra)"), None
        pq_bytes = live * (gpu_subquantizers(manifest.dim) + 8) + WORKSPACE_BYTES
        if pq_bytes > budget:
            return SearchPlan("cpu", f"{why}; 8-bit IVF-PQ needs {gib(pq_bytes)}"), None
        stats: dict[str, int] = {}
        device_id = torch.device(device).index or 0
        backend = FaissIvfPq8(shards, trained, device_id, nprobe, stats)
        return SearchPlan(backend.backend, f"{why}; IVF-PQ with {backend.code_bytes}-byte codes fits",
                          device, live, backend.nbytes, stats), backend
    except (torch.cuda.OutOfMemoryError, RuntimeError, MemoryError) as e:
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        log.warning("warning: GPU search could not be set up (%s); searching on the CPU", text)
        return SearchPlan("cpu", f"GPU search could not be set up: {text}"), None


def _live_rows(shards: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(shard position, row) of every live row, shard by shard."""
    owners, rows = [], []
    for owner, shard in enumerate(shards):
        live = np.flatnonzero(~shard.dead)
        owners.append(np.full(len(live), owner, dtype=np.int64))
        rows.append(live.astype(np.int64))
    return np.concatenate(owners), np.concatenate(rows)


def _sample_rows(shards: Sequence[Any], owners: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    rng = np.random.default_rng(1234)
    pick = np.sort(rng.choice(len(rows), size=min(n, len(rows)), replace=False))
    parts = [np.asarray(shards[o].vectors[rows[pick][owners[pick] == o]], dtype=np.float32)
             for o in np.unique(owners[pick])]
    return np.ascontiguousarray(np.concatenate(parts))
