"""Vector search benchmark: exact Flat vs our default index (built and searched by the product's
store and searcher code) vs the index autofaiss picks, on synthetic LLM2CLIP-like vectors.

    python bench/search.py                      # N=500,000 (10-60 min, see bench/README.md)
    python bench/search.py --quick              # seconds; used by tests/test_bench_quick.py
    python bench/search.py --sweep              # also nprobe x re-rank depth, and re-rank variants

Prints one table (recall@10, queries/s, latency, bytes per vector, build time, ratios) and, with
--json, writes the same numbers for machines. Everything is measured in this run except a
cached autofaiss build (its build time is then the one recorded when it was built, and said so).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # run from a checkout without installing

import numpy as np  # noqa: E402

K = 10
AUTOFAISS_VENV = BENCH_DIR / ".autofaiss-venv"
# autofaiss 2.18 needs numpy < 2 (pyarrow <= 20 beside it); faiss-cpu is the project's version, so
# both sides run the same faiss. The one compatibility fix is in bench/autofaiss_build.py.
AUTOFAISS_PINS = ["autofaiss==2.18.0", "numpy<2", "pyarrow<=20", "faiss-cpu==1.15.1"]


@dataclass(frozen=True)
class Generator:
    """Synthetic unit vectors shaped like CLIP embeddings of a photo library: a shared mean
    direction (the "cone"), topics (clusters) of very unequal size, bursts of similar shots inside
    each topic, and an anisotropic spectrum at every level. Without the burst level every point
    of a topic is about equally far from every other, which no photo library looks like."""

    dim: int = 1280
    points_per_cluster: int = 500  # mean topic size; topics = N // this
    cluster_size_sigma: float = 1.0  # log-normal spread of topic sizes: drives IVF list imbalance
    points_per_burst: int = 8  # mean size of a burst (near-duplicate shots) inside a topic
    spectrum_decay: float = 0.35  # axis i of a random basis has scale (1+i)^-decay (eff. dim ~260)
    axis_jitter: float = 0.5  # each topic rescales every axis by exp(N(0, jitter)): its own shape
    common_weight: float = 0.6  # weight of the shared mean direction
    center_weight: float = 1.0  # weight of the topic centre
    burst_weight: float = 0.6  # weight of the burst centre around its topic
    within_weight: float = 0.35  # weight of each photo's own spread around its burst
    query_noise: float = 0.3  # queries: held-out photos moved off by this much more spread
    seed: int = 0

    def fingerprint(self, n: int, nq: int) -> str:
        text = json.dumps({**asdict(self), "n": n, "nq": nq}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Data:
    xb: np.ndarray  # (n, dim) float32 unit vectors
    xq: np.ndarray  # (nq, dim) held-out queries
    cluster_sizes: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class Row:
    """One system's numbers."""

    system: str
    index: str
    recall: float
    batch_qps: float
    p50_ms: float
    p99_ms: float
    ram_bytes_per_vector: float
    disk_bytes_per_vector: float
    build_s: float
    list_imbalance: float | None = None
    notes: list[str] = field(default_factory=list)


# -- data ---------------------------------------------------------------------------------
@dataclass
class Library:
    """The fixed part of a generated library: a random basis, the shared direction, and each
    topic's centre, share of the photos and per-axis spread (in basis coordinates)."""

    basis: np.ndarray
    common: np.ndarray
    centers: np.ndarray
    p: np.ndarray
    axis_scale: np.ndarray


def library_model(rng: np.random.Generator, n: int, g: Generator) -> Library:
    d = g.dim
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    spectrum = (1.0 + np.arange(d)) ** -g.spectrum_decay
    spectrum = (spectrum / np.linalg.norm(spectrum)).astype(np.float32)
    common = _unit(rng.standard_normal(d)).astype(np.float32)
    k = max(1, n // g.points_per_cluster)
    centers = _unit((rng.standard_normal((k, d)) * spectrum) @ basis).astype(np.float32)
    p = rng.lognormal(0.0, g.cluster_size_sigma, k)
    p /= p.sum()
    axis_scale = np.exp(rng.normal(0.0, g.axis_jitter, (k, d))).astype(np.float32) * spectrum
    axis_scale /= np.linalg.norm(axis_scale, axis=1, keepdims=True)  # every cluster spreads as much
    return Library(basis, common, centers, p, axis_scale)


def generate(n: int, nq: int, g: Generator, chunk: int = 20_000) -> Data:
    rng = np.random.default_rng(g.seed)
    d = g.dim
    lib = library_model(rng, n, g)
    basis, common, centers, p, axis_scale = lib.basis, lib.common, lib.centers, lib.p, lib.axis_scale
    k = len(centers)
    labels = rng.choice(k, size=n + nq, p=p)
    # Bursts: each photo joins one of its topic's bursts (a burst centre has its topic's shape).
    bursts_per_topic = np.maximum(1, np.round(np.bincount(labels, minlength=k) / g.points_per_burst))
    bursts_per_topic = bursts_per_topic.astype(np.int64)
    first_burst = np.concatenate([[0], np.cumsum(bursts_per_topic)[:-1]])
    burst_id = first_burst[labels] + (rng.random(n + nq) * bursts_per_topic[labels]).astype(np.int64)
    burst_topic = np.repeat(np.arange(k), bursts_per_topic)
    burst_coef = rng.standard_normal((len(burst_topic), d), dtype=np.float32) * axis_scale[burst_topic]

    def coef(lab: np.ndarray) -> np.ndarray:  # one photo's own spread, in basis coordinates
        return rng.standard_normal((len(lab), d), dtype=np.float32) * axis_scale[lab]

    out = np.empty((n + nq, d), dtype=np.float32)
    for start in range(0, n + nq, chunk):
        lab = labels[start:start + chunk]
        local = g.burst_weight * burst_coef[burst_id[start:start + chunk]] + g.within_weight * coef(lab)
        x = g.common_weight * common + g.center_weight * centers[lab] + local @ basis
        out[start:start + len(lab)] = _unit(x)
    lab = labels[n:]
    xq = _unit(out[n:] + g.query_noise * (coef(lab) @ basis)).astype(np.float32)
    xb = out[:n]
    sizes = np.bincount(labels[:n], minlength=k)
    sample = rng.choice(n, size=min(n, 2000), replace=False)
    pair = xb[sample[: len(sample) // 2]] * xb[sample[len(sample) // 2: 2 * (len(sample) // 2)]]
    return Data(xb, xq, sizes, {
        "clusters": int(k),
        "bursts": int(len(burst_topic)),
        "cluster_size_imbalance": _imbalance(sizes),
        "largest_cluster_share": float(sizes.max() / n),
        "mean_cos_random_pair": float(pair.sum(1).mean()),
        "mean_cos_query_to_itself_before_noise": float((xq * out[n:]).sum(1).mean()),
    })


def load_or_generate(work: Path, n: int, nq: int, g: Generator, log: Any) -> Data:
    """Vectors are cached in `work` under the generator's fingerprint (a full set is 2.5 GB)."""
    fp = g.fingerprint(n, nq)
    meta = work / "data" / "data.json"
    emb = work / "data" / "emb" / "vectors.npy"  # alone in its folder: autofaiss reads the folder
    if meta.exists() and json.loads(meta.read_text()).get("fingerprint") == fp and emb.exists():
        info = json.loads(meta.read_text())
        xb = np.load(emb, mmap_mode="r")
        xq = np.load(work / "data" / "queries.npy")
        log(f"data: cached {n:,} x {g.dim} vectors ({fp})")
        return Data(np.array(xb), xq, np.array(info["cluster_sizes"]), info["stats"])
    started = time.perf_counter()
    data = generate(n, nq, g)
    emb.parent.mkdir(parents=True, exist_ok=True)
    np.save(emb, data.xb)
    np.save(work / "data" / "queries.npy", data.xq)
    meta.write_text(json.dumps({"fingerprint": fp, "generator": asdict(g), "n": n, "nq": nq,
                                "cluster_sizes": data.cluster_sizes.tolist(), "stats": data.stats}))
    log(f"data: generated {n:,} x {g.dim} vectors in {time.perf_counter() - started:.1f}s")
    return data


# -- systems ------------------------------------------------------------------------------
def bench_flat(data: Data, n_single: int, work: Path) -> tuple[Row, np.ndarray]:
    """Exact inner product: the ground truth and the speed baseline."""
    import faiss

    started = time.perf_counter()
    index = faiss.IndexFlatIP(data.xb.shape[1])
    index.add(data.xb)
    build = time.perf_counter() - started
    qps, ids = _batch_qps(lambda q: index.search(q, K)[1], data.xq)
    p50, p99 = _latency(lambda q: index.search(q, K), data.xq[:n_single])
    top1 = index.search(data.xq, 1)[0]
    data.stats["mean_cos_query_to_nearest"] = float(top1.mean())
    path = work / "flat.faiss"
    faiss.write_index(index, str(path))
    disk = path.stat().st_size / data.xb.shape[0]
    ram = len(faiss.serialize_index(index)) / data.xb.shape[0]
    path.unlink()
    del index
    return Row("Flat (exact)", "IndexFlatIP", 1.0, qps, p50, p99, ram, disk, build), ids


def bench_ours(data: Data, gt: np.ndarray, work: Path, cfg: Any, n_single: int,
               log: Any) -> tuple[list[Row], Path]:
    """Our index built by the product: IndexWriter commits shards the size the indexer uses,
    then maybe_train() trains IVF-PQ on stored vectors and re-indexes every shard (merging them
    up to ivf_shard_rows), as after `llm2search index`. Searched only through the product's
    calls: batches of 1,000 through SearchIndex.search_vectors, single queries through
    SearchIndex.search_vector (coarse search, exact float16 re-rank and metadata join included
    in both)."""
    import pyarrow as pa

    from llm2search.indexer.pipeline import IndexingConfig
    from llm2search.store.shard import META_SCHEMA, ShardData
    from llm2search.store.writer import IndexWriter
    from llm2search.store import vector_index

    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    n, dim = data.xb.shape
    shard_size = IndexingConfig().shard_size
    identity = {"name": "bench-synthetic", "dim": dim}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with IndexWriter(store, identity, dim, cfg) as writer:
        for start in range(0, n, shard_size):
            rows = min(shard_size, n - start)
            writer.commit(ShardData(data.xb[start:start + rows], _meta(start, rows, pa, META_SCHEMA)))
        committed = time.perf_counter()
        writer.maybe_train()
        writer.compact_after_run(shard_size)  # as index_folder ends
        manifest = writer.manifest
    build = time.perf_counter() - started
    log(f"ours: {manifest.factory} in {len(manifest.shards)} shards, built in {build:.1f}s "
        f"(commits {committed - started:.1f}s, train + re-index {time.perf_counter() - committed:.1f}s)")
    searcher = _open_searcher(store, cfg)
    qps, ids = _batch_qps(lambda q: _product_batch(searcher, q), data.xq)
    rows_qps, rows_ids = _batch_qps(lambda q: _product_rows(searcher, q), data.xq)
    assert np.array_equal(ids, rows_ids), "the id-only timing answered differently from search_vectors"
    p50, p99 = _latency(lambda q: _product_single(searcher, q), data.xq[:n_single])
    single_ids = np.stack([_product_single(searcher, q) for q in data.xq[:n_single, None]])
    ram, parts = _store_ram(searcher, store)
    disk = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / n
    row = Row("ours (product)", manifest.factory, _recall(ids, gt), qps, p50, p99, ram, disk, build,
              _store_imbalance(searcher))
    row.notes += [
        f"nprobe {cfg.nprobe}; exact re-rank of the best {cfg.rerank_factor} x k candidates by PQ "
        f"estimate over all {len(searcher.shards)} shard(s) ({manifest.count:,} rows committed as "
        f"shards of {shard_size:,}, merged up to {cfg.shard_rows(vector_index.factory_nlist(manifest.factory)):,} rows when trained), on float16 "
        "vectors read from the memory-mapped files",
        f"batch: SearchIndex.search_vectors, metadata join included; without the join (the "
        f"searcher's _top_rows) {rows_qps:,.0f} q/s",
        f"single: SearchIndex.search_vector, recall@10 {_recall(single_ids, gt[:n_single]):.3f} on the "
        f"first {n_single} queries",
        "RAM " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()) + " B/vector; disk adds the float16 "
        "vectors the re-rank reads (2 x dim B/vector, memory-mapped, not counted as RAM) and the metadata",
        f"machine load average (1 min) {load_before:.1f} at build start, {os.getloadavg()[0]:.1f} at the end",
    ]
    return [row], store


def bench_autofaiss(data: Data, gt: np.ndarray, work: Path, budget: int, threads: int,
                    n_single: int, rebuild: bool, create_venv: bool, log: Any) -> Row | None:
    import faiss

    python = _autofaiss_python(create_venv, log)
    if python is None:
        return None
    emb_dir = work / "data" / "emb"
    out = work / "autofaiss"
    fp = {"data": json.loads((work / "data" / "data.json").read_text())["fingerprint"],
          "budget": budget, "threads": threads}
    record = out / "build.json"
    cached = (not rebuild and record.exists() and (out / "fingerprint.json").exists()
              and json.loads((out / "fingerprint.json").read_text()) == fp)
    if not cached:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        log(f"autofaiss: building under a {budget / 1e6:.0f} MB budget in its own venv ...")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
        load_before = os.getloadavg()[0]
        with open(out / "build.log", "w") as fh:
            subprocess.run([str(python), str(BENCH_DIR / "autofaiss_build.py"),
                            "--embeddings", str(emb_dir), "--out", str(out),
                            "--max-memory", f"{budget // 1024}KB", "--cores", str(threads)],
                           check=True, stdout=fh, stderr=subprocess.STDOUT, env=env)
        (out / "fingerprint.json").write_text(json.dumps(fp))
        (out / "load.json").write_text(json.dumps([load_before, os.getloadavg()[0]]))
    built = json.loads(record.read_text())
    infos = built["infos"] or {}
    index = faiss.read_index(str(out / "knn.index"))
    if infos.get("index_param"):
        faiss.ParameterSpace().set_index_parameters(index, infos["index_param"])
    n = data.xb.shape[0]
    qps, ids = _batch_qps(lambda q: index.search(q, K)[1], data.xq)
    p50, p99 = _latency(lambda q: index.search(q, K), data.xq[:n_single])
    ivf = faiss.try_extract_index_ivf(index)
    imbalance = ivf.invlists.imbalance_factor() if ivf is not None else None
    row = Row("autofaiss", infos.get("index_key", "?"), _recall(ids, gt), qps, p50, p99,
              len(faiss.serialize_index(index)) / n, (out / "knn.index").stat().st_size / n,
              built["build_seconds"], imbalance)
    row.notes.append(f"search params chosen by autofaiss: {infos.get('index_param')}; budget "
                     f"{built['max_memory']}, {built['cores']} cores, {built['versions']}")
    if (out / "load.json").exists():
        before, after = json.loads((out / "load.json").read_text())
        row.notes.append(f"machine load average (1 min) {before:.1f} at build start, {after:.1f} at the end")
    if cached:
        row.notes.append(f"build reused from {datetime.fromtimestamp(record.stat().st_mtime):%Y-%m-%d %H:%M} "
                         "(same data, budget, threads); its build time was measured then")
    return row


def sweep(searcher_dir: Path, cfg: Any, data: Data, gt: np.ndarray, log: Any) -> list[dict[str, Any]]:
    """Search-time settings of our index, nprobe x re-rank depth, through the product's batch
    call (ids without the metadata join, so the settings' own cost shows)."""
    from dataclasses import replace

    out = []
    for nprobe in (8, 16, 32, 64):
        for factor in (5, 10, 15, 20, 30):
            searcher = _open_searcher(searcher_dir, replace(cfg, nprobe=nprobe, rerank_factor=factor))
            qps, ids = _batch_qps(lambda q: _product_rows(searcher, q), data.xq)
            out.append({"nprobe": nprobe, "rerank_factor": factor, "recall": _recall(ids, gt), "batch_qps": qps})
            log(f"sweep: nprobe {nprobe:>3} re-rank x{factor:<2} recall@10 {out[-1]['recall']:.3f} {qps:8.0f} q/s")
    return out


def rerank_experiments(searcher_dir: Path, cfg: Any, data: Data, gt: np.ndarray, log: Any) -> dict[str, Any]:
    """Two alternatives to the searcher's exact re-rank, measured against it (ids only):
    - decoder: batches decoded with numpy instead of faiss's OpenMP decoder;
    - adaptive depth: score the best `first` PQ estimates exactly, then only those of the rest
      (up to rerank_factor x k) whose estimate, plus the query's mean estimate error on the
      first ones and `c` standard deviations of it, still reaches the k-th exact score so far.
      Reported: rows re-ranked per query and recall, vs re-ranking all of them."""
    from llm2search.search import searcher as searcher_module

    searcher = _open_searcher(searcher_dir, cfg)
    qps, _ = _batch_qps(lambda q: _product_rows(searcher, q), data.xq)
    numpy_max, searcher_module.NUMPY_DECODE_MAX_ROWS = searcher_module.NUMPY_DECODE_MAX_ROWS, 1 << 62
    try:
        numpy_qps, _ = _batch_qps(lambda q: _product_rows(searcher, q), data.xq)
    finally:
        searcher_module.NUMPY_DECODE_MAX_ROWS = numpy_max
    log(f"re-rank decoder: faiss (default) {qps:.0f} q/s, numpy {numpy_qps:.0f} q/s")

    xq = data.xq
    estimate, owners, rows = searcher._candidates(xq, K)  # the rows the searcher would re-rank
    depth = estimate.shape[1]
    order = np.argsort(-estimate, axis=1, kind="stable")  # best estimates first
    estimate, rows, owners = (np.take_along_axis(a, order, axis=1) for a in (estimate, rows, owners))
    exact = searcher._exact_scores(xq, owners, rows)
    offsets = np.cumsum([0] + [s.info.count for s in searcher.shards])[:-1]
    ids = np.where(rows >= 0, offsets[owners] + rows, -1)

    def recall_of(scores: np.ndarray) -> float:
        top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        return _recall(np.take_along_axis(ids, top, axis=1), gt)

    adaptive = [{"first": 0, "c": None, "rows_per_query": float(depth), "recall": recall_of(exact)}]
    error = exact - estimate
    for first in (30, 50):
        for c in (1.0, 2.0, 3.0):
            kth = np.sort(exact[:, :first], axis=1)[:, -K]
            mu, sd = error[:, :first].mean(axis=1), error[:, :first].std(axis=1)
            rest = estimate[:, first:] + (mu + c * sd)[:, None] >= kth[:, None]
            scores = exact.copy()
            scores[:, first:][~rest] = -np.inf
            adaptive.append({"first": first, "c": c, "rows_per_query": float(first + rest.sum(axis=1).mean()),
                             "recall": recall_of(scores)})
            log(f"adaptive re-rank: first {first}, c {c}: {adaptive[-1]['rows_per_query']:.0f} rows/query, "
                f"recall@10 {adaptive[-1]['recall']:.3f} (all {depth}: {adaptive[0]['recall']:.3f})")
    return {"decoder_qps": {"faiss": qps, "numpy": numpy_qps}, "adaptive": adaptive, "depth": depth}


# -- the product's search -------------------------------------------------------------------
def _open_searcher(store: Path, cfg: Any) -> Any:
    from llm2search.search.searcher import SearchIndex

    return SearchIndex(store, config=cfg, embedder=object(), use_gpu=False)


def _offsets(searcher: Any) -> dict[str, int]:
    """Global id of row 0 of each shard (the order bench_ours committed the vectors in)."""
    names = [s.info.name for s in searcher.shards]
    return dict(zip(names, np.cumsum([0] + [s.info.count for s in searcher.shards]).tolist()))


def _product_batch(searcher: Any, xq: np.ndarray) -> np.ndarray:
    offsets = _offsets(searcher)
    return np.array([[offsets[h.shard] + h.row for h in hits] for hits in searcher.search_vectors(xq, K)])


def _product_single(searcher: Any, xq: np.ndarray) -> np.ndarray:
    offsets = _offsets(searcher)
    return np.array([offsets[h.shard] + h.row for h in searcher.search_vector(xq[0], K)])


def _product_rows(searcher: Any, xq: np.ndarray) -> np.ndarray:
    """search_vectors' answer as ids, without building Hit objects (the metadata join)."""
    offsets = np.cumsum([0] + [s.info.count for s in searcher.shards])[:-1]
    _, owners, rows = searcher._top_rows(np.ascontiguousarray(xq, dtype=np.float32), K)
    return np.where(rows >= 0, offsets[owners] + rows, -1)


def _store_ram(searcher: Any, store: Path) -> tuple[float, dict[str, float]]:
    """Bytes per vector the open index keeps in RAM: each shard's index file as read (PQ codes,
    ids, fast-scan block padding; no centroids) plus the shared coarse centroids once."""
    import faiss

    n = sum(s.info.count for s in searcher.shards)
    files = sum((store / "shards" / s.info.name / "index.faiss").stat().st_size for s in searcher.shards)
    centroids = len(faiss.serialize_index(searcher._quantizer)) if searcher._quantizer is not None else 0
    ivf = faiss.try_extract_index_ivf(searcher.shards[0].index)
    parts = {"shard index files": files / n, "shared centroids": centroids / n}
    if ivf is not None:
        parts = {"PQ codes": float(ivf.code_size), "ids": 8.0,
                 "fast-scan padding and headers": files / n - ivf.code_size - 8, **parts}
        del parts["shard index files"]
    return (files + centroids) / n, parts


def _store_imbalance(searcher: Any) -> float | None:
    import faiss

    sizes = None
    for s in searcher.shards:
        ivf = faiss.try_extract_index_ivf(s.index)
        if ivf is None:
            return None
        these = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
        sizes = these if sizes is None else sizes + these
    return _imbalance(sizes) if sizes is not None else None


def _meta(start: int, rows: int, pa: Any, schema: Any) -> Any:
    """Metadata rows of synthetic photos; columns this bench does not know stay null."""
    ids = np.arange(start, start + rows)
    known = {
        "path": [f"/bench/{i:07d}.jpg" for i in ids],
        "size": np.full(rows, 100_000, dtype=np.int64),
        "mtime_ns": ids.astype(np.int64),
        "content_hash": [f"{i:032x}" for i in ids],
        "width": np.full(rows, 4000, dtype=np.int32),
        "height": np.full(rows, 3000, dtype=np.int32),
        "format": ["JPEG"] * rows,
        "indexed_at": np.zeros(rows, dtype=np.int64),
        "deleted": np.zeros(rows, dtype=bool),
    }
    return pa.table({f.name: pa.array(known[f.name], f.type) if f.name in known else pa.nulls(rows, f.type)
                     for f in schema}, schema=schema)


# -- measuring ----------------------------------------------------------------------------
PASSES = 5  # batch timings are the best of this many passes, for every system alike


def _batch_qps(search: Any, xq: np.ndarray, batch: int = 1000) -> tuple[float, np.ndarray]:
    """Queries/s over the query set in batches of `batch`, best of PASSES passes (the first
    one also warms caches; other jobs on a shared machine slow single passes by up to 2x);
    returns the ids of the last pass."""
    best = 0.0
    ids = None
    for _ in range(PASSES):
        started = time.perf_counter()
        parts = [search(xq[s:s + batch]) for s in range(0, len(xq), batch)]
        best = max(best, len(xq) / (time.perf_counter() - started))
        ids = np.concatenate(parts)
    return best, ids  # type: ignore[return-value]


def _latency(search: Any, xq: np.ndarray) -> tuple[float, float]:
    search(xq[:1])  # warm-up
    times = []
    for i in range(len(xq)):
        started = time.perf_counter()
        search(xq[i:i + 1])
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def _recall(ids: np.ndarray, gt: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(a[:K], b[:K])) for a, b in zip(ids, gt))
    return hits / (K * len(gt))


def _imbalance(sizes: np.ndarray) -> float:
    """faiss's imbalance factor: 1.0 when all lists are equal; expected work / ideal work."""
    sizes = np.asarray(sizes, dtype=np.float64)
    return float(len(sizes) * (sizes ** 2).sum() / sizes.sum() ** 2)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _autofaiss_python(create: bool, log: Any) -> Path | None:
    python = AUTOFAISS_VENV / "bin" / "python"
    ok = python.exists() and subprocess.run([str(python), "-c", "import autofaiss, faiss"],
                                            capture_output=True).returncode == 0
    if ok:
        return python
    if not create:
        return None
    log(f"autofaiss: creating {AUTOFAISS_VENV} with {' '.join(AUTOFAISS_PINS)} ...")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(AUTOFAISS_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *AUTOFAISS_PINS], check=True)
    return python


# -- report -------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import faiss

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "faiss": faiss.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def table(rows: list[Row]) -> str:
    flat = next((r for r in rows if r.system.startswith("Flat")), None)
    auto = next((r for r in rows if r.system == "autofaiss"), None)
    head = ("| system | index | recall@10 | batch q/s | p50 ms | p99 ms | RAM B/vec | disk B/vec "
            "| build s | list imbalance | q/s vs Flat | q/s vs autofaiss | build vs autofaiss |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        vs_flat = f"{r.batch_qps / flat.batch_qps:.1f}x" if flat else "-"
        vs_auto = f"{r.batch_qps / auto.batch_qps:.1f}x" if auto else "-"
        build_vs = f"{auto.build_s / r.build_s:.1f}x faster" if auto and r.build_s > 0 else "-"
        imb = f"{r.list_imbalance:.2f}" if r.list_imbalance is not None else "-"
        lines.append(
            f"| {r.system} | `{r.index}` | {r.recall:.3f} | {r.batch_qps:,.0f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.ram_bytes_per_vector:,.0f} | {r.disk_bytes_per_vector:,.0f} | "
            f"{r.build_s:.1f} | {imb} | {vs_flat} | {vs_auto} | {build_vs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500_000, help="database vectors")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries")
    p.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    p.add_argument("--quick", action="store_true", help="N=20,000, 200 queries: seconds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=None, help="cache folder (default bench/.work/search-N)")
    p.add_argument("--systems", default="flat,ours,autofaiss")
    p.add_argument("--nprobe", type=int, default=None, help="override IndexConfig.nprobe")
    p.add_argument("--rerank-factor", type=int, default=None, help="override IndexConfig.rerank_factor")
    p.add_argument("--nlist", type=int, default=None, help="override choose_nlist(N)")
    p.add_argument("--dims-per-subquantizer", type=int, default=None,
                   help="override vector_index.DIMS_PER_SUBQUANTIZER (PQ code size)")
    p.add_argument("--sweep", action="store_true", help="also sweep nprobe x re-rank depth")
    p.add_argument("--autofaiss-bytes-per-vector", type=int, default=400,
                   help="autofaiss max_index_memory_usage = this x N (400: 200 MB at 500k)")
    p.add_argument("--rebuild-autofaiss", action="store_true")
    p.add_argument("--with-autofaiss", action="store_true",
                   help="in --quick, run autofaiss too (its OPQ training takes ~15 min even at 20k)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.queries, args.single = 20_000, 200, 50

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import faiss
    from threadpoolctl import threadpool_limits

    from llm2search.store import vector_index
    from llm2search.store.vector_index import IndexConfig

    faiss.omp_set_num_threads(args.threads)
    threadpool_limits(args.threads)
    if args.dims_per_subquantizer:
        vector_index.DIMS_PER_SUBQUANTIZER = args.dims_per_subquantizer
    cfg = IndexConfig()
    overrides = {k: v for k, v in {"nprobe": args.nprobe, "rerank_factor": args.rerank_factor,
                                   "nlist": args.nlist}.items() if v is not None}
    if args.quick:  # 20k is below the Flat threshold: force IVF-PQ so the IVF path is exercised
        overrides["ivf_threshold"] = 1
    from dataclasses import replace

    cfg = replace(cfg, **overrides)
    work = args.work or BENCH_DIR / ".work" / f"search-{args.n}"
    work.mkdir(parents=True, exist_ok=True)
    systems = set(args.systems.split(","))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    gen = Generator()
    data = load_or_generate(work, args.n, args.queries, gen, log)
    log(f"data: {data.stats}")
    rows: list[Row] = []
    flat_row, gt = bench_flat(data, min(args.single, 100), work)
    if "flat" in systems:
        rows.append(flat_row)
    log(f"flat: {flat_row.batch_qps:.0f} q/s")
    sweep_rows = None
    experiments = None
    if "ours" in systems:
        ours, store = bench_ours(data, gt, work, cfg, args.single, log)
        rows.extend(ours)
        if args.sweep:
            sweep_rows = sweep(store, cfg, data, gt, log)
            experiments = rerank_experiments(store, cfg, data, gt, log)
    skipped = None
    if "autofaiss" in systems and args.quick and not args.with_autofaiss:
        skipped = "autofaiss skipped in --quick (its OPQ training alone takes minutes); --with-autofaiss runs it"
        log(skipped)
    elif "autofaiss" in systems:
        auto = bench_autofaiss(data, gt, work, args.autofaiss_bytes_per_vector * args.n,
                               args.threads, min(args.single, 100), args.rebuild_autofaiss,
                               create_venv=True, log=log)
        if auto is None:
            skipped = f"autofaiss skipped: no venv at {AUTOFAISS_VENV}"
        else:
            rows.append(auto)

    result = {
        "machine": machine(), "command": " ".join(["python", "bench/search.py", *(argv or sys.argv[1:])]),
        "n": args.n, "queries": args.queries, "single_queries": args.single, "k": K,
        "threads": args.threads, "generator": asdict(gen), "data": data.stats,
        "index_config": asdict(cfg),
        "dims_per_subquantizer": vector_index.DIMS_PER_SUBQUANTIZER,
        "rows": [asdict(r) for r in rows], "sweep": sweep_rows, "rerank_experiments": experiments, "skipped": skipped,
    }
    m = result["machine"]
    print(f"# bench/search.py  N={args.n:,} x {gen.dim}, {args.queries} queries, k={K}, "
          f"{args.threads} threads; {m['cpus']} CPUs ({m['cpu_model']}), faiss {m['faiss']}, {m['date']}")
    print(f"data: {data.stats['clusters']} clusters, cluster-size imbalance "
          f"{data.stats['cluster_size_imbalance']:.2f} (largest {data.stats['largest_cluster_share']:.1%}), "
          f"mean cos of random pairs {data.stats['mean_cos_random_pair']:.2f}, "
          f"query to its nearest neighbour {data.stats['mean_cos_query_to_nearest']:.2f}")
    print(table(rows))
    for r in rows:
        for note in r.notes:
            print(f"- {r.system}: {note}")
    if skipped:
        print(f"- {skipped}")
    if sweep_rows:
        vs = f" | x Flat ({flat_row.batch_qps:,.0f} q/s)"
        print(f"\n| nprobe | re-rank x k | recall@10 | batch q/s{vs} |\n|---|---|---|---|---|")
        for s in sweep_rows:
            print(f"| {s['nprobe']} | {s['rerank_factor']} | {s['recall']:.3f} | {s['batch_qps']:,.0f} | "
                  f"{s['batch_qps'] / flat_row.batch_qps:.1f}x |")
    if experiments:
        d = experiments["decoder_qps"]
        print(f"\nre-rank decoder (ids only): faiss {d['faiss']:,.0f} q/s, numpy {d['numpy']:,.0f} q/s "
              f"({d['faiss'] / d['numpy']:.2f}x)")
        print(f"\n| adaptive re-rank: first | c | rows per query | recall@10 |\n|---|---|---|---|")
        for a in experiments["adaptive"]:
            first = f"all {experiments['depth']}" if not a["first"] else a["first"]
            print(f"| {first} | {a['c'] if a['c'] is not None else '-'} | {a['rows_per_query']:.0f} | {a['recall']:.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
