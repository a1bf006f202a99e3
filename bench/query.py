"""Query latency, split into load, encode, search, re-rank and metadata join; the cold start of
`llm2search query` against a warm process (the HTTP server when its extra is installed, else an
in-process SearchIndex).

    python bench/query.py            # 100,000 photos (IVF-PQ), ~3 min
    python bench/query.py --quick    # 3,000 photos (IVF-PQ forced), seconds; tests/test_bench_quick.py

The index holds synthetic 1280-d vectors (bench/search.py's generator) under a tiny model of the
real preset's shapes, so load, search, re-rank and join do LLM2CLIP-sized work; the encode
column is the tiny text tower, a floor: the real Llama-3-8B encoder costs far more (GPU advised).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH_DIR))

QUERIES = ["一群人在徒步", "a dog running on the beach", "海上的日落", "children playing football",
           "一碗面条", "snow on the trees", "城市里的一辆黄色汽车", "a birthday cake with candles"]


def build(work: Path, n: int) -> tuple[Path, Path]:
    """A tiny model with the real shapes and an index of `n` synthetic vectors under it."""
    import pyarrow as pa

    from llm2search.models.presets import resolve_model
    from llm2search.models.tiny import TinyModelConfig, build_tiny_model
    from llm2search.store.shard import META_SCHEMA, ShardData
    from llm2search.store.vector_index import IndexConfig
    from llm2search.store.writer import IndexWriter
    from search import Generator, _meta, generate

    model = work / "tiny-1280-336"
    if not (model / "llm2search_model.json").exists():
        build_tiny_model(model, TinyModelConfig(name="tiny-bench", dim=1280, image_size=336))
    index = work / f"index-{n}"
    if (index / "manifest.json").exists():
        return model, index
    shutil.rmtree(index, ignore_errors=True)
    spec = resolve_model(str(model))
    data = generate(n, 1, Generator())
    with IndexWriter(index, spec.identity(), spec.dim, IndexConfig(ivf_threshold=1)) as writer:
        for start in range(0, n, 100_000):
            rows = min(100_000, n - start)
            writer.commit(ShardData(data.xb[start:start + rows], _meta(start, rows, pa, META_SCHEMA)))
        writer.maybe_train()
    return model, index


def phases(index_dir: Path, repeats: int) -> dict[str, list[float]]:
    """Time each step of SearchIndex.search in this process by calling the searcher's own steps
    one at a time, and check that they answer what search() answers."""
    from llm2search.search.filters import SearchFilter
    from llm2search.search.searcher import SearchIndex

    t: dict[str, list[float]] = {k: [] for k in ("load index", "load model", "encode", "search",
                                                  "re-rank", "metadata join", "total (search())")}
    started = time.perf_counter()
    searcher = SearchIndex(index_dir, use_gpu=False, device="cpu")
    t["load index"].append(_ms(started))
    started = time.perf_counter()
    searcher.embedder.embed_texts([QUERIES[0]])
    t["load model"].append(_ms(started))
    k = 10
    no_filter = SearchFilter()
    for i in range(repeats):
        text = QUERIES[i % len(QUERIES)] + (f" {i}" if i >= len(QUERIES) else "")
        s = time.perf_counter()
        q = searcher.embedder.embed_texts([text])[0].reshape(1, -1).astype(np.float32)
        t["encode"].append(_ms(s))
        s = time.perf_counter()  # the steps search() runs, called one by one
        _, owners, rows = searcher._candidates(q, k)  # shared coarse search + each shard's lists
        t["search"].append(_ms(s))
        s = time.perf_counter()
        top = searcher._rerank(q, owners, rows, k)
        t["re-rank"].append(_ms(s))
        s = time.perf_counter()
        hits = searcher._finish(*top, no_filter)[0]
        t["metadata join"].append(_ms(s))
        s = time.perf_counter()
        real = searcher.search(text, k)
        t["total (search())"].append(_ms(s))
        assert [h.id for h in real] == [h.id for h in hits], "the timed steps answered differently from search()"
    return t


def cold_cli(model: Path, index: Path, runs: int) -> list[float]:
    """Wall time of `llm2search query` from process start to exit (OS page cache warm)."""
    exe = Path(sys.executable).parent / "llm2search"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "llm2search.cli"]
    out = []
    for i in range(runs):
        started = time.perf_counter()
        subprocess.run([*cmd, "query", QUERIES[i % len(QUERIES)], "--index", str(index), "-k", "10",
                        "--device", "cpu", "--json"], check=True, capture_output=True, env=_env())
        out.append(_ms(started))
    return out


def warm_server(index: Path, repeats: int) -> dict[str, list[float]] | None:
    """Start `llm2search serve`, time until /api/health answers, then text searches over HTTP."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401

        import llm2search.serve.server  # noqa: F401
    except ImportError:
        return None
    exe = Path(sys.executable).parent / "llm2search"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "llm2search.cli"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = subprocess.Popen([*cmd, "serve", "--index", str(index), "--port", str(port),
                             "--device", "cpu", "--cpu-search"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        ready = None
        while time.perf_counter() - started < 180 and proc.poll() is None:
            try:
                urllib.request.urlopen(base + "/api/health", timeout=1).read()
                ready = _ms(started)
                break
            except OSError:
                time.sleep(0.1)
        if ready is None:
            return None
        times = []
        for i in range(repeats + 1):
            body = json.dumps({"text": QUERIES[i % len(QUERIES)] + f" {i}", "k": 10}).encode()
            req = urllib.request.Request(base + "/api/search/text", body, {"Content-Type": "application/json"})
            s = time.perf_counter()
            urllib.request.urlopen(req, timeout=60).read()
            if i:  # the first request loads the text model
                times.append(_ms(s))
        return {"server start to ready": [ready], "warm server (HTTP search/text)": times}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--cold-runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--work", type=Path, default=BENCH_DIR / ".work" / "query")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.cold_runs = 3000, 10, 2
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    model, index = build(args.work, args.n)
    from llm2search.store.manifest import read_manifest

    manifest = read_manifest(index)
    timings = phases(index, args.repeats)
    # The same steps with a single query's re-rank forced onto the batch path's OpenMP decoder,
    # the alternative searcher.NUMPY_DECODE_MAX_ROWS decides against.
    from llm2search.search import searcher as searcher_module

    numpy_max, searcher_module.NUMPY_DECODE_MAX_ROWS = searcher_module.NUMPY_DECODE_MAX_ROWS, 0
    try:
        timings["re-rank, faiss OpenMP decode instead (comparison)"] = phases(index, args.repeats)["re-rank"]
    finally:
        searcher_module.NUMPY_DECODE_MAX_ROWS = numpy_max
    timings["cold `llm2search query` (process wall)"] = cold_cli(model, index, args.cold_runs)
    server = warm_server(index, args.repeats)
    warm_label = "warm server (HTTP search/text)" if server else "warm in-process (SearchIndex.search)"
    if server:
        timings.update(server)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = [{"phase": name, "runs": len(v), "p50_ms": float(np.percentile(v, 50)),
             "p99_ms": float(np.percentile(v, 99))} for name, v in timings.items()]
    cold = np.median(timings["cold `llm2search query` (process wall)"])
    warm = np.median(timings["warm server (HTTP search/text)"] if server else timings["total (search())"])
    print(f"# bench/query.py  {args.n:,} photos ({manifest.factory}, {len(manifest.shards)} shards), "
          f"tiny model 1280-d; {os.cpu_count()} CPUs ({cpu}), {args.threads} threads, {date}")
    print("| phase | runs | p50 ms | p99 ms |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['runs']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    print(f"cold `llm2search query` / {warm_label}: {cold / warm:.0f}x ({cold:.0f} ms vs {warm:.1f} ms)"
          + ("" if server else "; server not measured: the 'server' extra (fastapi, uvicorn) is not installed"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": date, "cpus": os.cpu_count(), "cpu_model": cpu, "n": args.n, "factory": manifest.factory,
            "shards": len(manifest.shards), "warm": warm_label, "server_measured": bool(server),
            "cold_over_warm": float(cold / warm), "rows": rows,
            "command": " ".join(["python", "bench/query.py", *(argv or sys.argv[1:])]),
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
