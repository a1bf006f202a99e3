"""The coarse search of single queries on a real index: the exact scan of the centroids against
search/coarse.py's low-rank preselection (several ranks and shortlists) and, for comparison, an
HNSW graph of the centroids (what search/coarse.py used before). Prints p50 / p99 per query,
the share of the exact nprobe lists each finds, and the p50 ratio to the exact scan.

    python bench/coarse.py INDEX [--queries Q.npy] [--nprobe 32]

INDEX is an IVF-PQ index (bench/scale.py's 5M store: bench/.work/scale/vectors/store-5000000);
without --queries, stored rows moved off by noise stand in for queries."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

Search = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def proxy_queries(index: Path, n: int, seed: int = 7) -> np.ndarray:
    from llm2search.store.manifest import read_manifest
    from llm2search.store.shard import open_shard_vectors

    manifest = read_manifest(index)
    vectors = open_shard_vectors(index, manifest.shards[0])
    rng = np.random.default_rng(seed)
    q = np.asarray(vectors[np.sort(rng.choice(len(vectors), n, replace=False))], dtype=np.float32)
    q += 0.02 * rng.standard_normal(q.shape).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def timed(search: Search, queries: np.ndarray, exact: np.ndarray) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, share of the exact lists found), one query per call."""
    search(queries[:1])
    times, found = [], []
    for i in range(len(queries)):
        t = time.perf_counter()
        _, lists = search(queries[i:i + 1])
        times.append((time.perf_counter() - t) * 1000)
        found.append(len(np.intersect1d(lists[0], exact[i])) / exact.shape[1])
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), float(np.mean(found))


def main(argv: list[str] | None = None) -> int:
    import faiss

    from llm2search.search.coarse import CoarseConfig, CoarseSearch
    from llm2search.store.manifest import read_manifest
    from llm2search.store.vector_index import coarse_quantizer, read_index

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index", type=Path)
    p.add_argument("--queries", type=Path, default=None)
    p.add_argument("--count", type=int, default=400)
    p.add_argument("--nprobe", type=int, default=32)
    args = p.parse_args(argv)
    manifest = read_manifest(args.index)
    if manifest.index_type != "ivfpq":
        raise SystemExit(f"{args.index} is a {manifest.index_type} index; the coarse search needs IVF-PQ")
    trained = read_index(args.index / manifest.trained["file"], mmap=False)
    quantizer = coarse_quantizer(trained)  # owned by `trained`, which stays alive with it
    queries = (np.load(args.queries).astype(np.float32)[:args.count] if args.queries
               else proxy_queries(args.index, args.count))
    _, exact_lists = quantizer.search(queries, args.nprobe)
    print(f"{manifest.factory}: {quantizer.ntotal:,} centroids x {quantizer.d}, nprobe {args.nprobe}, "
          f"{len(queries)} queries ({'given' if args.queries else 'stored rows + noise'}), one per call")
    rows = []
    base = timed(lambda q: quantizer.search(q, args.nprobe), queries, exact_lists)
    rows.append(("exact scan (faiss IndexFlatIP)", "-", base))
    for rank in (64, 128, 256):
        for shortlist in (4, 8, 16):
            config = CoarseConfig(project_min_lists=1, rank=rank, shortlist=shortlist)
            coarse = CoarseSearch(quantizer, args.nprobe, config, key=None)
            t = time.perf_counter()
            coarse.wait(None)
            built = time.perf_counter() - t
            rows.append((f"projection rank {rank}, shortlist {shortlist} x nprobe", f"{built:.2f}",
                         timed(coarse.search, queries, exact_lists)))
    centroids = quantizer.reconstruct_n(0, quantizer.ntotal)
    for ef in (64, 128, 256):
        graph = faiss.IndexHNSWFlat(quantizer.d, 32, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = 80
        t = time.perf_counter()
        graph.add(centroids)
        built = time.perf_counter() - t
        graph.hnsw.efSearch = ef
        rows.append((f"HNSW graph M 32, efSearch {ef}", f"{built:.2f}",
                     timed(lambda q, g=graph: g.search(q, args.nprobe), queries, exact_lists)))
    print("| coarse search | build s | p50 ms | p99 ms | exact lists found | p50 vs exact scan |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, built, (p50, p99, found) in rows:
        print(f"| {name} | {built} | {p50:.3f} | {p99:.3f} | {found:.4f} | {base[0] / p50:.1f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
