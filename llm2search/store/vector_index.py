"""FAISS index choice and training: exact Flat for small collections, IVF-PQ fast-scan past a
threshold, with one trained quantizer shared by every shard so shard results are comparable."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Chosen by bench/search.py (numbers and reasoning in bench/README.md, "Vector search"): at 500k x
# 1280 on 2 cores IVF2048,PQ160x4fs with nprobe 32 and an exact re-rank of 10 x k per shard gave
# recall@10 0.989; nprobe 16-128 gave the same recall, 32 was the smallest with no loss at any
# re-rank depth, at 1.0-1.4x the q/s of 64 (1.15x at x10). PQ256x4fs (128 B codes) ranks better
# but is over the ~120 B/vector RAM budget.
IVF_THRESHOLD = 100_000  # live vectors at which an index switches from Flat to IVF-PQ
DIMS_PER_SUBQUANTIZER = 8  # PQ160 for 1280-d: 80 bytes per vector with 4-bit codes
TRAIN_POINTS_PER_LIST = 64  # k-means sample: faiss wants >= 39 per centroid
MIN_TRAIN_POINTS = 64  # 4-bit PQ needs >= 16 points per sub-quantizer; below this stay Flat
RETRAIN_GROWTH = 4.0  # retrain once the collection is this many times the training sample's base


@dataclass(frozen=True)
class IndexConfig:
    """How shards are indexed and searched; the defaults are what bench/search.py chose."""

    ivf_threshold: int = IVF_THRESHOLD
    nlist: int | None = None  # None: chosen from N (see choose_nlist)
    nprobe: int = 32  # lists probed per shard (bench/search.py: 16-128 gave equal recall)
    rerank_factor: int = 20  # IVF-PQ candidates re-ranked exactly: rerank_factor x k in all,
    # split over shards by size (+ k each); bench/search.py's sweep: 0.977 recall@10 at 500k
    retrain_growth: float = RETRAIN_GROWTH


def choose_nlist(n: int) -> int:
    """~4 sqrt(N) lists rounded down to a power of two: 2048 at 500k, 256 floor, 65536 cap."""
    target = 4 * math.sqrt(max(n, 1))
    return int(min(65536, max(256, 2 ** math.floor(math.log2(target)))))


def ivfpq_factory(dim: int, nlist: int) -> str:
    m = max(1, dim // DIMS_PER_SUBQUANTIZER)
    while dim % m:
        m -= 1
    return f"IVF{nlist},PQ{m}x4fs"


def new_flat(dim: int) -> Any:
    import faiss

    return faiss.IndexFlatIP(dim)


def train_ivfpq(sample: np.ndarray, nlist: int, seed: int = 1234) -> tuple[Any, str]:
    """Train the shared (empty) IVF-PQ on a sample of unit vectors; returns (index, factory)."""
    import faiss

    dim = sample.shape[1]
    nlist = min(nlist, max(1, len(sample) // 39))
    factory = ivfpq_factory(dim, nlist)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index, factory


def build_shard_index(vectors: np.ndarray, trained: Any | None) -> Any:
    """A shard's index over `vectors` (ids = row numbers): a copy of the trained IVF-PQ, or Flat."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.clone_index(trained) if trained is not None else new_flat(x.shape[1])
    if len(x):
        index.add(x)
    return index


def write_index(index: Any, path: Path) -> None:
    import faiss

    faiss.write_index(index, str(path))


def read_index(path: Path, mmap: bool = True) -> Any:
    import faiss

    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)


def set_nprobe(index: Any, nprobe: int) -> None:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(nprobe, ivf.nlist)


def to_gpu_if_available(index: Any) -> Any:
    """Move an index to the GPU when faiss was built with GPU support and one is present."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return index
    resources = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    options.useFloat16 = True
    try:
        return faiss.index_cpu_to_gpu(resources, 0, index, options)
    except RuntimeError:  # fast-scan PQ has no GPU version: keep that shard on the CPU
        return index
