"""Scale (issue 12): what one host handles, each size measured in its own fresh processes.

    python bench/scale.py files   --sizes 10000 1000000                     # indexing RSS, reruns
    python bench/scale.py vectors --sizes 100000 500000 1000000 5000000     # search, retrain, info
    python bench/scale.py files --quick; python bench/scale.py vectors --quick   # seconds (tests)

files: generated tiny JPEGs (16x16, every file unique) indexed into an empty index with the
product's defaults and a no-op embedder (unit random vectors of the tiny model's 1280-d shape:
the pipeline's own cost). Peak RSS is the child's own high-water mark (VmHWM) and the sampled
peak of its whole process tree (decode workers included); the baseline is the smallest size's
run. Then `llm2search index` runs again on the unchanged folder as a whole process, three times.

vectors: synthetic CLIP-like vectors (StreamGenerator, bench/search.py's model of a photo library,
generated a burst at a time so 5M vectors never sit in RAM) are committed as the indexer does
(100k-row shards, the first one trained on, as an index that grew), then `llm2search index
EMPTY --retrain` retrains and merges at the full size (measured: wall, peak RSS). Ground truth
is exact top-10 by inner product over the stored float16 vectors, streamed a chunk at a time;
Flat's q/s is the time of those faiss searches alone (5M float32 vectors would need 25.6 GB, so
Flat is timed over 131,072-row chunks, loading excluded). Ours is searched in a fresh process
through SearchIndex (open time, batch q/s, single-query latency, recall@10), and the server's
RSS is read from /proc/PID/smaps of a real `llm2search serve` answering /api/search/vectors,
per mapping (heap, index.faiss, vectors.npy, meta.arrow), minus the same server on a 1k index.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from search import Generator, library_model  # noqa: E402 - bench/search.py: the model of a photo library

K = 10
COMMIT_ROWS = 100_000  # IndexingConfig().shard_size: the rows per shard the indexer commits
GT_CHUNK_ROWS = 131_072
SERVER_BATCH = 100  # vectors per POST /api/search/vectors (JSON: ~2.5 MB)
SERVER_SINGLES = 100  # then one vector per request
SERVER_WARM_WAIT_S = 10  # after the first single request: the coarse projection builds in ~1 s at 8,192 lists


def log(msg: str) -> None:
    print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def load() -> float:
    return round(os.getloadavg()[0], 1)


# -- measuring a child process --------------------------------------------------------------
@dataclass
class Measured:
    stdout: str
    stderr: str
    returncode: int
    wall_s: float
    peak_rss_mib: float  # the child's own high-water mark (VmHWM, sampled; see run_measured)
    tree_peak_mib: float  # sampled sum over the child and its descendants
    peak_anon_mib: float  # sampled RssAnon of the child
    peak_file_mib: float  # sampled RssFile of the child
    load_before: float
    load_after: float


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Measured:
    """Run `cmd`, sampling the RSS of its process tree every 0.2 s."""
    import psutil

    load_before = load()
    out_f, err_f = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, env=env, cwd=cwd, text=True)
    peaks = {"tree": 0, "anon": 0, "file": 0, "hwm": 0}
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                peaks["tree"] = max(peaks["tree"], sum(_rss(p) for p in procs))
                status = _status(proc.pid)
                peaks["anon"] = max(peaks["anon"], status.get("RssAnon", 0))
                peaks["file"] = max(peaks["file"], status.get("RssFile", 0))
                peaks["hwm"] = max(peaks["hwm"], status.get("VmHWM", 0))
            except psutil.Error:
                pass
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out_f.seek(0), err_f.seek(0)
    # The peak is the child's VmHWM (the high-water mark of its own address space, monotonic, so a
    # late sample holds an earlier spike), not wait4's ru_maxrss: subprocess starts children with
    # vfork, and Linux folds the parent's high-water mark into the child's ru_maxrss at exec, so a
    # bench process holding 3 GB reported 3 GB for every child (measured: 2,967 MiB for a retrain
    # whose sampled RSS never passed 450).
    peak_kib = peaks["hwm"] or usage.ru_maxrss
    return Measured(out_f.read(), err_f.read(), proc.returncode, wall, peak_kib / 1024,
                    peaks["tree"] / 2**20, peaks["anon"] / 1024, peaks["file"] / 1024, load_before, load())


def _rss(p: Any) -> int:
    try:
        return p.memory_info().rss
    except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
        return 0


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon", "RssFile", "VmHWM")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])  # kB
    return out


def smaps(pid: int) -> dict[str, float]:
    """RSS of a process by what is mapped (MiB): heap, the index's files by kind, other files."""
    out: dict[str, float] = {}
    kind = "other"
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split()
                name = parts[5] if len(parts) > 5 else ""
                kind = _kind(name)
            elif first == "Rss:":
                out[kind] = out.get(kind, 0.0) + int(line.split()[1]) / 1024
    return out


def _kind(name: str) -> str:
    if not name or name.startswith("[heap") or name.startswith("[anon"):
        return "heap (anonymous)"
    if name.startswith("["):
        return "heap (anonymous)" if name == "[stack]" else "other"
    base = os.path.basename(name)
    if base == "vectors.npy":
        return "vectors.npy (re-rank reads)"
    if base == "index.faiss":
        return "index.faiss (codes, ids)"
    if base == "meta.arrow":
        return "meta.arrow (metadata)"
    if base.startswith("trained-"):
        return "trained (centroids)"
    return "code and libraries"


# -- files ----------------------------------------------------------------------------------
FILES_CHILD = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[4])
from llm2search.indexer.pipeline import IndexingConfig, index_folder
from llm2search.models.presets import resolve_model
from llm2search.store.memory import peak_rss_mib


class NoOpEmbedder:
    # Stands in for the model: unit vectors of the model's size, no compute.
    def __init__(self, spec):
        self.spec, self.dim = spec, spec.dim
        self._rng = np.random.default_rng(0)

    def embed_pixels(self, pixels):
        v = self._rng.standard_normal((len(pixels), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


if __name__ == "__main__":
    folder, index, model = sys.argv[1:4]
    report = index_folder(folder, index, IndexingConfig(model=model, progress=False),
                          embedder=NoOpEmbedder(resolve_model(model)))
    print(json.dumps({**report.to_json(), "peak_rss_mib": peak_rss_mib()}))  # VmHWM (see run_measured)
"""


def make_files(folder: Path, n: int) -> float:
    """`n` tiny JPEGs, 1,000 per folder, each with unique trailing bytes (so none is a
    duplicate); cached: a complete folder is reused. Returns seconds spent."""
    from PIL import Image

    done = folder / ".complete"
    if done.exists() and done.read_text() == str(n):
        return 0.0
    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    bases = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
        bases.append(buf.getvalue())
    for i in range(n):
        sub = folder / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"IMG_{i:07d}.jpg").write_bytes(bases[i % len(bases)] + b"#%d" % i)
    done.write_text(str(n))
    return time.perf_counter() - started


def bench_files(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work / "files"
    model = tiny_model(args.work)
    rows = []
    for n in args.sizes:
        folder, index = work / f"photos-{n}", work / f"index-{n}"
        gen = make_files(folder, n)
        if gen:
            log(f"files: generated {n:,} files in {gen:.0f} s")
        shutil.rmtree(index, ignore_errors=True)
        log(f"files: indexing {n:,} files (no-op embedder), load {load()}")
        m = run_measured([sys.executable, "-c", FILES_CHILD, str(folder), str(index), str(model), str(ROOT)])
        if m.returncode:
            raise RuntimeError(f"indexing {n} files failed: {m.stderr[-3000:]}")
        report = json.loads(m.stdout.strip().splitlines()[-1])
        row = {"files": n, "embedded": report["embedded"], "index_s": report["seconds"], "process_s": m.wall_s,
               "files_per_s": report["images_per_second"], "peak_rss_mib": m.peak_rss_mib,
               "tree_peak_mib": m.tree_peak_mib, "peak_anon_mib": m.peak_anon_mib, "index_type": report["index_type"],
               "live": report["live"], "load": [m.load_before, m.load_after]}
        log(f"files: {n:,}: {row['index_s']:.0f} s, peak RSS {m.peak_rss_mib:.0f} MiB (tree {m.tree_peak_mib:.0f})")
        reruns = []
        for _ in range(3):
            r = run_measured([sys.executable, "-m", "llm2search.cli", "index", str(folder), "--index", str(index),
                                    "--model", str(model), "--json"], cwd=ROOT)
            if r.returncode:
                raise RuntimeError(f"rerun failed: {r.stderr[-3000:]}")
            again = json.loads(r.stdout[r.stdout.index("{"):])
            reruns.append({"wall_s": r.wall_s, "peak_rss_mib": r.peak_rss_mib, "embedded": again["embedded"],
                           "unchanged": again["unchanged"], "load": r.load_before})
        row["reruns"] = reruns
        walls = ", ".join(f"{x['wall_s']:.2f}" for x in reruns)
        log(f"files: {n:,}: no-change reruns {walls} s")
        row["plan"] = plan_memory(folder, index)
        log(f"files: {n:,}: change detection peak {row['plan']['steps'][-1]['hwm_mib']:.0f} MiB")
        rows.append(row)
        if args.clean:
            shutil.rmtree(index, ignore_errors=True)
    base = rows[0]
    for r in rows:
        r["peak_vs_smallest"] = r["peak_rss_mib"] / base["peak_rss_mib"]
        r["tree_vs_smallest"] = r["tree_peak_mib"] / base["tree_peak_mib"]
    return {"rows": rows}


def plan_memory(folder: Path, index: Path) -> dict[str, Any]:
    """bench/plan_memory.py in a fresh process: change detection's memory, step by step."""
    m = run_measured([sys.executable, str(BENCH_DIR / "plan_memory.py"), str(folder), str(index)], cwd=ROOT)
    if m.returncode:
        raise RuntimeError(f"plan_memory.py failed: {m.stderr[-3000:]}")
    return json.loads(m.stdout.strip().splitlines()[-1])


def print_files(result: dict[str, Any]) -> None:
    print("| files | index s | files/s | peak RSS MiB | × smallest | tree peak MiB | × smallest | "
          "no-change rerun, whole process (3 runs) s | rerun embedded | load avg |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
    for r in result["rows"]:
        reruns = " / ".join(f"{x['wall_s']:.2f}" for x in r["reruns"])
        print(f"| {r['files']:,} | {r['index_s']:.1f} | {r['files_per_s']:.0f} | {r['peak_rss_mib']:.0f} | "
              f"{r['peak_vs_smallest']:.2f} | {r['tree_peak_mib']:.0f} | {r['tree_vs_smallest']:.2f} | {reruns} | "
              f"{max(x['embedded'] for x in r['reruns'])} | {r['load'][0]}–{r['load'][1]} |")
    print("\nchange detection of a no-change rerun, step by step (bench/plan_memory.py, a fresh process):")
    print("| files | step | s | RSS MiB | peak MiB | RSS added since imports, B/file |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in result["rows"]:
        for st in r.get("plan", {}).get("steps", [])[1:]:
            print(f"| {r['files']:,} | {st['step']} | {st['s']:.2f} | {st['rss_mib']:.0f} | {st['hwm_mib']:.0f} | "
                  f"{st['rss_bytes_per_file']:.0f} |")


# -- vectors --------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamGenerator(Generator):
    """bench/search.py's Generator as a stream: a photo library is a sequence of bursts (shots
    taken together), each burst of one topic; topics have log-normal sizes, every level has the
    same anisotropic spectrum. Queries are held-out shots of random bursts, moved off by extra
    spread. Generated a block of bursts at a time: 5M x 1280 never sits in memory."""

    def stream(self, n: int, nq: int, block: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(database rows, queries) per block of about `block` rows, float32 unit vectors."""
        rng = np.random.default_rng(self.seed)
        d = self.dim
        lib = library_model(rng, n, self)
        basis, common, centers, p, scale = lib.basis, lib.common, lib.centers, lib.p, lib.axis_scale
        k = len(centers)
        bursts = max(1, n // self.points_per_burst)
        query_bursts = set(rng.choice(bursts, size=min(nq, bursts), replace=False).tolist())
        made, b = 0, 0
        while made < n:
            count = min(block // self.points_per_burst, bursts - b) if b < bursts else 1
            sizes = rng.poisson(self.points_per_burst - 1, count) + 1
            topics = rng.choice(k, size=count, p=p)
            burst_coef = rng.standard_normal((count, d), dtype=np.float32) * scale[topics]
            lab = np.repeat(np.arange(count), sizes)[: n - made]
            local = (self.burst_weight * burst_coef[lab]
                     + self.within_weight * rng.standard_normal((len(lab), d), dtype=np.float32) * scale[topics[lab]])
            x = _unit(self.common_weight * common + self.center_weight * centers[topics[lab]] + local @ basis)
            wanted = [i for i in range(count) if b + i in query_bursts]
            q = np.empty((0, d), np.float32)
            if wanted:
                w = np.array(wanted)
                own = self.within_weight * rng.standard_normal((len(w), d), dtype=np.float32) * scale[topics[w]]
                held = self.common_weight * common + self.center_weight * centers[topics[w]] + (
                    self.burst_weight * burst_coef[w] + own) @ basis
                noise = rng.standard_normal((len(w), d), dtype=np.float32) * scale[topics[w]]
                q = _unit(_unit(held) + self.query_noise * (noise @ basis)).astype(np.float32)
            made += len(lab)
            b += count
            yield x.astype(np.float32), q


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def tiny_model(work: Path) -> Path:
    """A random tiny model with the real preset's shapes (336 px, 1280-d), so the CLI, the
    server and the writer resolve a real model identity."""
    from llm2search.models.tiny import TinyModelConfig, build_tiny_model

    model = work / "tiny-1280-336"
    if not (model / "llm2search_model.json").exists():
        build_tiny_model(model, TinyModelConfig(name="tiny-bench", dim=1280, image_size=336))
    return model


def synthetic_meta(start: int, rows: int) -> Any:
    """Metadata rows of synthetic photos with realistic path lengths; other columns null."""
    import pyarrow as pa

    from llm2search.store.shard import META_SCHEMA

    ids = np.arange(start, start + rows)
    known = {
        "path": [f"/home/user/Pictures/{2000 + i // 250_000}/{(i // 1000) % 250:03d}/IMG_{i:08d}.jpg" for i in ids],
        "size": np.full(rows, 2_400_000, dtype=np.int64),
        "mtime_ns": ids.astype(np.int64) * 1_000_000_000,
        "content_hash": [f"{i:032x}" for i in ids],
        "width": np.full(rows, 4000, dtype=np.int32),
        "height": np.full(rows, 3000, dtype=np.int32),
        "format": ["JPEG"] * rows,
        "exif_time": ids.astype(np.int64),
        "indexed_at": np.zeros(rows, dtype=np.int64),
        "deleted": np.zeros(rows, dtype=bool),
    }
    return pa.table({f.name: pa.array(known[f.name], f.type) if f.name in known else pa.nulls(rows, f.type)
                     for f in META_SCHEMA}, schema=META_SCHEMA)


def build_store(store: Path, n: int, nq: int, model: Path, gen: StreamGenerator,
                train_first: bool = False) -> dict[str, Any]:
    """Commit `n` generated vectors as the indexer does, with the first shard trained on (an index
    that grew, retrained later: `retrain`); cached in `store` under the generator's fingerprint.
    Queries go beside it. `train_first`: the first shards are trained on with the nlist --retrain
    gives at `n` (the same sample size, TRAIN_POINTS_PER_LIST x nlist, of the same stream), the
    rest committed in two blocks, so the store has the layout a retrain leaves (3 shards) without
    paying for a retrain; its time and peak are measured by a run without it."""
    from llm2search.models.presets import resolve_model
    from llm2search.store.shard import ShardData
    from llm2search.store.vector_index import TRAIN_POINTS_PER_LIST, IndexConfig, choose_nlist
    from llm2search.store.writer import IndexWriter

    fp = gen.fingerprint(n, nq) + ("-train-first" if train_first else "")
    stamp = store.parent / f"{store.name}.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == fp and (store / "manifest.json").exists():
        log(f"vectors: cached store of {n:,}")
        return json.loads(stamp.read_text())
    shutil.rmtree(store, ignore_errors=True)
    spec = resolve_model(model)
    started, load_before = time.perf_counter(), load()
    queries, pending, at = [], [], 0
    nlist = choose_nlist(n)
    first = COMMIT_ROWS * -(-nlist * TRAIN_POINTS_PER_LIST // COMMIT_ROWS) if train_first else COMMIT_ROWS
    config = IndexConfig(nlist=nlist) if train_first else IndexConfig()
    with IndexWriter(store, spec.identity(), spec.dim, config) as writer:
        for x, q in gen.stream(n, nq):
            queries.append(q)
            big = train_first and at >= first  # after training: two big blocks
            pending.append(x.astype(np.float16) if big else x)
            held = sum(len(p) for p in pending)
            step = -(-(n - first) // 2) if big else COMMIT_ROWS
            if held >= step or at + held == n:
                if big:  # its float16 chunks as they came, never one float32 copy
                    chunks, rest = pending, pending[0][:0]
                else:
                    block = np.concatenate(pending)
                    chunks, rest = [block[:step]], block[step:]
                count = sum(len(c) for c in chunks)
                writer.commit(ShardData(chunks, synthetic_meta(at, count)))
                at += count
                pending = [rest.astype(np.float16) if train_first else rest] if len(rest) else []
                if writer.manifest.index_type == "flat" and at >= first:
                    writer.maybe_train(force=True)  # later commits are IVF-PQ shards
                    log(f"vectors: trained at {at:,} rows: {writer.manifest.factory}")
                if at % 1_000_000 == 0 or big:
                    log(f"vectors: committed {at:,} of {n:,}")
        factory = writer.manifest.factory
    xq = np.concatenate(queries)[:nq]
    np.save(store.parent / f"{store.name}-queries.npy", xq)
    info = {"fingerprint": fp, "n": n, "queries": len(xq), "build_s": time.perf_counter() - started,
            "factory_before_retrain": factory, "load": [load_before, load()]}
    stamp.write_text(json.dumps(info))
    return info


def ground_truth(store: Path, xq: np.ndarray, cache: Path) -> tuple[np.ndarray, float, float]:
    """Exact top-K (global row ids in manifest order) over the stored float16 vectors, a chunk at
    a time: (ids, seconds in faiss's exact searches alone, wall seconds)."""
    import faiss

    from llm2search.store.manifest import read_manifest
    from llm2search.store.shard import VECTORS_FILE, read_tombstones, shard_dir
    from llm2search.store.vector_file import VectorReader

    manifest = read_manifest(store)
    key = hashlib.sha256(json.dumps([manifest.generation, [s.name for s in manifest.shards], len(xq)]).encode()).hexdigest()[:12]
    if cache.exists():
        saved = np.load(cache)
        if str(saved["key"]) == key:
            return saved["ids"], float(saved["search_s"]), float(saved["wall_s"])
    started = time.perf_counter()
    best_s = np.full((len(xq), K), -np.inf, dtype=np.float32)
    best_i = np.full((len(xq), K), -1, dtype=np.int64)
    search_s, offset = 0.0, 0
    for s in manifest.shards:
        dead = read_tombstones(store, s)
        with VectorReader(shard_dir(store, s.name) / VECTORS_FILE) as r:
            for start in range(0, r.rows, GT_CHUNK_ROWS):
                x = np.ascontiguousarray(r.read(start, start + GT_CHUNK_ROWS), dtype=np.float32)
                t = time.perf_counter()
                scores, ids = faiss.knn(xq, x, K, metric=faiss.METRIC_INNER_PRODUCT)
                search_s += time.perf_counter() - t
                ids = ids + start
                if len(dead):
                    gone = np.isin(ids, dead)
                    scores[gone] = -np.inf
                ids = ids + offset
                all_s, all_i = np.concatenate([best_s, scores], 1), np.concatenate([best_i, ids], 1)
                top = np.argsort(-all_s, axis=1)[:, :K]
                best_s, best_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
        offset += s.count
    wall = time.perf_counter() - started
    np.savez(cache, key=key, ids=best_i, search_s=search_s, wall_s=wall)
    return best_i, search_s, wall


SEARCH_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[4])
import numpy as np
os.environ.setdefault("OMP_NUM_THREADS", "2")
store, queries, single = sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, os.path.join(sys.argv[4], "bench"))
from scale import smaps
started = time.perf_counter()
from llm2search.search.coarse import CoarseConfig
from llm2search.search.searcher import SearchIndex
index = SearchIndex(store, embedder=object(), use_gpu=False)
opened = time.perf_counter()
after_open = smaps(os.getpid())
offsets = np.cumsum([0] + [s.info.count for s in index.shards])[:-1]
where = {s.info.name: int(o) for s, o in zip(index.shards, offsets)}
def ids(hits):
    return [where[h.shard] + h.row for h in hits]
best, got = 0.0, None
for _ in range(3):
    t = time.perf_counter()
    out = [ids(h) for s in range(0, len(queries), 1000) for h in index.search_vectors(queries[s:s + 1000], 10)]
    best = max(best, len(queries) / (time.perf_counter() - t))
    got = out
def singles(searcher):
    times, found = [], []
    searcher.search_vector(queries[0], 10)
    for q in queries[:single]:
        t = time.perf_counter()
        hits = searcher.search_vector(q, 10)
        times.append((time.perf_counter() - t) * 1000)
        found.append(ids(hits))
    return times, found
# The baseline in the same process and on the same warm pages: the centroids scanned exactly.
with SearchIndex(store, embedder=object(), use_gpu=False, coarse=CoarseConfig(project_min_lists=0)) as exact:
    exact_times, exact_ids = singles(exact)
t = time.perf_counter()
projected = index.warm_coarse()
projection_s = time.perf_counter() - t
times, single_ids = singles(index)
after_queries = smaps(os.getpid())
print(json.dumps({"open_s": opened - started, "import_and_open_s": opened - started, "batch_qps": best,
                  "p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
                  "coarse_projection": projected, "coarse_projection_build_s": projection_s if projected else None,
                  "exact_coarse_p50_ms": float(np.percentile(exact_times, 50)),
                  "exact_coarse_p99_ms": float(np.percentile(exact_times, 99)),
                  "ids": got, "single_ids": single_ids, "exact_coarse_single_ids": exact_ids,
                  "factory": index.manifest.factory, "shards": len(index.shards),
                  "smaps_open": after_open, "smaps_queries": after_queries}))
"""


def search_ours(store: Path, query_file: Path, single: int) -> dict[str, Any]:
    m = run_measured([sys.executable, "-c", SEARCH_CHILD, str(store), str(query_file), str(single), str(ROOT)], cwd=ROOT)
    if m.returncode:
        raise RuntimeError(f"search failed: {m.stderr[-3000:]}")
    out = json.loads(m.stdout.strip().splitlines()[-1])
    out["peak_rss_mib"] = m.peak_rss_mib
    return out


OPEN_CHILD = r"""
import json, sys, time
t = time.perf_counter()
sys.path.insert(0, sys.argv[2])
from llm2search.search.searcher import SearchIndex
i = time.perf_counter()
index = SearchIndex(sys.argv[1], embedder=object(), use_gpu=False)
print(json.dumps({"imports_s": i - t, "open_s": time.perf_counter() - i}))
"""


def open_time(store: Path) -> dict[str, Any]:
    runs = []
    for _ in range(3):
        m = run_measured([sys.executable, "-c", OPEN_CHILD, str(store), str(ROOT)])
        if m.returncode:
            raise RuntimeError(m.stderr[-2000:])
        runs.append({**json.loads(m.stdout.strip().splitlines()[-1]), "wall_s": m.wall_s})
    return {"runs": runs}


def info_wall(store: Path) -> list[float]:
    out = []
    for _ in range(3):
        m = run_measured([sys.executable, "-m", "llm2search.cli", "info", "--index", str(store)], cwd=ROOT)
        if m.returncode:
            raise RuntimeError(m.stderr[-2000:])
        out.append(m.wall_s)
    return out


def retrain(store: Path, model: Path, work: Path) -> dict[str, Any]:
    empty = work / "empty-folder"
    empty.mkdir(parents=True, exist_ok=True)
    m = run_measured([sys.executable, "-m", "llm2search.cli", "index", str(empty), "--index", str(store),
                            "--model", str(model), "--retrain", "--json"], cwd=ROOT)
    if m.returncode:
        raise RuntimeError(f"retrain failed: {m.stderr[-3000:]}")
    report = json.loads(m.stdout[m.stdout.index("{"):])
    return {"wall_s": m.wall_s, "peak_rss_mib": m.peak_rss_mib, "peak_anon_mib": m.peak_anon_mib,
            "peak_file_mib": m.peak_file_mib, "embedded": report["embedded"], "training": report.get("training"),
            "load": [m.load_before, m.load_after]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_rss(store: Path, xq: np.ndarray) -> dict[str, Any]:
    """smaps of a real `llm2search serve` on `store`: after it opened the index, and after it
    answered every query through POST /api/search/vectors (k=10) in batches, then one at a time."""
    import httpx

    port = free_port()
    err = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "llm2search.cli", "serve", "--index", str(store), "--port", str(port),
                             "--device", "cpu", "--cpu-search"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/api/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            err.seek(0)
            raise RuntimeError(f"the server did not answer /api/health: {err.read()[-2000:]}")
        httpx.get(f"{url}/api/info", timeout=600)
        opened = smaps(proc.pid)
        started = time.perf_counter()
        with httpx.Client(timeout=600) as client:
            for s in range(0, len(xq), SERVER_BATCH):
                r = client.post(f"{url}/api/search/vectors", json={"vectors": xq[s:s + SERVER_BATCH].tolist(), "k": K})
                r.raise_for_status()
            took = time.perf_counter() - started
            # Single searches too, so the server holds what they use (the coarse projection at many
            # lists, built on the first one: search/coarse.py); then their own latency.
            client.post(f"{url}/api/search/vectors", json={"vectors": xq[:1].tolist(), "k": K}).raise_for_status()
            if _projects(store):
                time.sleep(SERVER_WARM_WAIT_S)
            single_ms = []
            for q in xq[:SERVER_SINGLES]:
                t = time.perf_counter()
                client.post(f"{url}/api/search/vectors", json={"vectors": [q.tolist()], "k": K}).raise_for_status()
                single_ms.append((time.perf_counter() - t) * 1000)
        queried = smaps(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"after_open": opened, "after_queries": queried, "http_qps": len(xq) / took,
            "http_single_p50_ms": float(np.percentile(single_ms, 50))}


def _projects(store: Path) -> bool:
    """Whether single searches of `store` take the coarse projection (IVF with enough lists)."""
    from llm2search.search.coarse import CoarseConfig
    from llm2search.store.manifest import read_manifest
    from llm2search.store.vector_index import factory_nlist

    min_lists = CoarseConfig().project_min_lists
    return 0 < min_lists <= factory_nlist(read_manifest(store).factory)


def _recall(ids: list[list[int]], gt: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(ids, gt)]))


def bench_vectors(args: argparse.Namespace) -> dict[str, Any]:
    import shutil as _sh

    work = args.work / "vectors"
    work.mkdir(parents=True, exist_ok=True)
    model = tiny_model(args.work)
    gen = StreamGenerator()
    # The per-vector RSS is the server's RSS at N minus the same server on a 1k-vector index.
    base_store = work / "store-1000"
    build_store(base_store, 1000, 10, model, gen)
    baseline = server_rss(base_store, np.load(work / "store-1000-queries.npy"))
    rows = []
    for n in args.sizes:
        store = work / f"store-{n}"
        need = n * args_bytes_per_vector(gen.dim) * 2.2
        free = _sh.disk_usage(work).free
        if free < need and not (store / "manifest.json").exists():
            raise SystemExit(f"{n:,} vectors need about {need / 2**30:.0f} GiB free under {work}; {free / 2**30:.0f} GiB is")
        built = build_store(store, n, args.queries, model, gen, train_first=args.train_first)
        log(f"vectors: {n:,}: built ({built['factory_before_retrain']}) in {built['build_s']:.0f} s, load {load()}")
        if (args.keep_training or args.train_first) and _retrained(store, n):
            trained = None
            how = "trained from its first rows" if args.train_first else "retrained earlier"
            log(f"vectors: {n:,}: kept the store's training ({built['factory_before_retrain']}, {how})")
        else:
            trained = retrain(store, model, work)
            log(f"vectors: {n:,}: retrain {trained['wall_s']:.0f} s, peak RSS {trained['peak_rss_mib']:.0f} MiB")
        query_file = work / f"store-{n}-queries.npy"
        xq, load_before = np.load(query_file), load()
        gt, flat_search_s, gt_wall = ground_truth(store, xq, work / f"store-{n}-gt.npz")
        log(f"vectors: {n:,}: ground truth for {len(xq)} queries in {gt_wall:.0f} s "
            f"(Flat {len(xq) / flat_search_s:.1f} q/s)")
        ours = search_ours(store, query_file, args.single)
        ours["recall"] = _recall(ours.pop("ids"), gt)
        ours["single_recall"] = _recall(ours.pop("single_ids"), gt)
        ours["exact_coarse_single_recall"] = _recall(ours.pop("exact_coarse_single_ids"), gt)
        log(f"vectors: {n:,}: recall@10 {ours['recall']:.3f}, {ours['batch_qps']:.0f} q/s, p50 {ours['p50_ms']:.2f} ms "
            f"(centroids scanned exactly: {ours['exact_coarse_p50_ms']:.2f} ms)")
        opens = open_time(store)
        infos = info_wall(store)
        server = server_rss(store, xq)
        rows.append({"n": n, "built": built, "retrain": trained, "load": [load_before, load()], "flat_qps": len(xq) / flat_search_s,
                     "gt_wall_s": gt_wall, "ours": ours, "open": opens, "info_wall_s": infos, "server": server,
                     "disk_bytes": sum(f.stat().st_size for f in store.rglob("*") if f.is_file())})
        log(f"vectors: {n:,}: server RSS {sum(server['after_queries'].values()):.0f} MiB")
        if args.clean:
            _sh.rmtree(store, ignore_errors=True)
    return {"rows": rows, "baseline_server": baseline, "generator": asdict(gen)}


def _retrained(store: Path, n: int) -> bool:
    """Whether the store's training is already what --retrain gives at `n` vectors."""
    from llm2search.store.manifest import read_manifest
    from llm2search.store.vector_index import choose_nlist, factory_nlist

    return factory_nlist(read_manifest(store).factory) == choose_nlist(n)


def args_bytes_per_vector(dim: int) -> int:
    return 2 * dim + 400  # float16 vector + metadata, codes and ids


def per_vector(server: dict[str, float], base: dict[str, float], n: int) -> dict[str, float]:
    kinds = set(server) | set(base)
    return {k: (server.get(k, 0.0) - base.get(k, 0.0)) * 2**20 / n for k in sorted(kinds)}


def print_vectors(result: dict[str, Any]) -> None:
    base = result["baseline_server"]["after_queries"]
    print("| vectors | index | retrain s | retrain peak RSS MiB (anon / file) | recall@10 | batch q/s | Flat q/s | "
          "× Flat | single p50 / p99 ms | server RSS B/vector (heap + index.faiss + meta.arrow) | "
          "+ vectors.npy page cache B/vector | open s | info s | load avg |")
    print("|---:|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|")
    for r in result["rows"]:
        o, t, n = r["ours"], r["retrain"], r["n"]
        pv = per_vector(r["server"]["after_queries"], base, n)
        held = sum(v for k, v in pv.items() if k not in ("vectors.npy (re-rank reads)", "code and libraries", "other"))
        opens = [x["open_s"] for x in r["open"]["runs"]]
        retrained = (f"{t['wall_s']:.0f} | {t['peak_rss_mib']:.0f} ({t['peak_anon_mib']:.0f} / {t['peak_file_mib']:.0f})"
                     if t else "kept | kept")
        load_avg = f"{t['load'][0]}–{t['load'][1]}" if t else f"{r['load'][0]}–{r['load'][1]}"
        print(f"| {n:,} | `{o['factory']}` ({o['shards']} shards) | {retrained} | {o['recall']:.3f} | {o['batch_qps']:,.0f} | "
              f"{r['flat_qps']:.1f} | {o['batch_qps'] / r['flat_qps']:.0f}× | {o['p50_ms']:.2f} / {o['p99_ms']:.2f} | "
              f"{held:.0f} | {pv.get('vectors.npy (re-rank reads)', 0):.0f} | {min(opens):.2f} | "
              f"{min(r['info_wall_s']):.2f} | {load_avg} |")
    print("\nsingle searches: the coarse search through the low-rank projection (search/coarse.py) vs the centroids scanned "
          "exactly, same process, same queries:")
    print("| vectors | lists | projection p50 / p99 ms | exact scan p50 / p99 ms | p50 ratio | "
          "recall@10 projection / exact | projection build s | server, one vector per request: HTTP p50 ms |")
    print("|---:|---:|---|---|---:|---|---:|---:|")
    for r in result["rows"]:
        o = r["ours"]
        build = f"{o['coarse_projection_build_s']:.1f}" if o.get("coarse_projection") else "none (few lists)"
        print(f"| {r['n']:,} | {o['factory'].split(',')[0][3:]} | {o['p50_ms']:.2f} / {o['p99_ms']:.2f} | "
              f"{o['exact_coarse_p50_ms']:.2f} / {o['exact_coarse_p99_ms']:.2f} | "
              f"{o['exact_coarse_p50_ms'] / o['p50_ms']:.2f}× | {o['single_recall']:.3f} / "
              f"{o['exact_coarse_single_recall']:.3f} | {build} | {r['server'].get('http_single_p50_ms', float('nan')):.2f} |")
    print("\nserver RSS per vector by mapping (after open → after all queries), minus the same server on a 1k index:")
    for r in result["rows"]:
        a = per_vector(r["server"]["after_open"], result["baseline_server"]["after_open"], r["n"])
        b = per_vector(r["server"]["after_queries"], base, r["n"])
        parts = ", ".join(f"{k} {a.get(k, 0):.1f} → {b.get(k, 0):.1f}" for k in sorted(b) if abs(b.get(k, 0)) >= 0.05)
        print(f"- {r['n']:,}: {parts}")
    rows = result["rows"]
    if len(rows) >= 2:
        ns = np.log([r["n"] for r in rows])
        metrics = {
            "retrain wall": [r["retrain"]["wall_s"] if r["retrain"] else np.nan for r in rows],
            "retrain peak RSS": [r["retrain"]["peak_rss_mib"] if r["retrain"] else np.nan for r in rows],
            "batch q/s": [r["ours"]["batch_qps"] for r in rows],
            "single p50": [r["ours"]["p50_ms"] for r in rows],
            "server RSS (after queries)": [sum(r["server"]["after_queries"].values()) for r in rows],
            "open": [min(x["open_s"] for x in r["open"]["runs"]) for r in rows],
            "build (commit) wall": [r["built"]["build_s"] for r in rows],
        }
        print("\nfitted exponent b of value ∝ N^b (least squares on log-log):")
        for name, values in metrics.items():
            if any(np.isnan(values)):
                continue  # a size whose training was kept (--keep-training)
            b = np.polyfit(ns, np.log(np.maximum(values, 1e-9)), 1)[0]
            print(f"- {name}: b = {b:.2f}  ({', '.join(f'{v:,.2f}' for v in values)})")


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["files", "vectors"])
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--single", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="small sizes: seconds")
    p.add_argument("--clean", action="store_true", help="delete each size's index after measuring it")
    p.add_argument("--keep-training", action="store_true",
                   help="vectors: a cached store an earlier run retrained is searched as it is (no retrain measured)")
    p.add_argument("--train-first", action="store_true",
                   help="vectors: build each store trained from the start at the nlist --retrain gives "
                        "(faster; no retrain measured)")
    p.add_argument("--work", type=Path, default=BENCH_DIR / ".work" / "scale")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = [10_000, 1_000_000] if args.part == "files" else [100_000, 500_000, 1_000_000, 5_000_000]
    if args.quick:
        args.sizes = [300, 900] if args.part == "files" else [3_000, 12_000]
        args.queries, args.single = 100, 20
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "part": args.part, "sizes": args.sizes,
                              "command": " ".join(["python", "bench/scale.py", *(argv if argv is not None else sys.argv[1:])]),
                              "load_start": load()}
    result.update(bench_files(args) if args.part == "files" else bench_vectors(args))
    result["seconds"] = time.perf_counter() - started
    result["load_end"] = load()
    m = result["machine"]
    print(f"# bench/scale.py {args.part}  {m['cpus']} CPUs ({m['cpu_model']}), {m['date']}, "
          f"{result['seconds'] / 60:.0f} min, load average {result['load_start']} → {result['load_end']}")
    (print_files if args.part == "files" else print_vectors)(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
