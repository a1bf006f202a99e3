"""Bounded load test of `llm2search serve`: N concurrent clients send a fixed number of mixed
requests (text, Chinese text, filtered, k=1000, image upload, more-like-this, thumbnails, embed)
to a server on 127.0.0.1, and the script reports p50/p99 latency and errors per kind.

    python bench/load.py                      # tiny model, 300 photos, 16 clients, 3000 requests
    python bench/load.py --url http://127.0.0.1:8000 --token T   # an already running server

By default it builds everything itself in a temporary folder: a tiny model, synthetic photos,
an index, and a server started with the real `llm2search serve` command in its own process.
Stops after --requests requests or --max-seconds, whichever comes first."""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np

TEXTS = ["a dog running on a beach", "a group of people hiking in the mountains", "sunset over the sea",
         "一群人在徒步", "海边的一只狗", "城市里的一辆黄色汽车", "a bowl of noodles", "snow on the trees"]
# (kind, weight): the share of requests of each kind.
MIX = [("text", 35), ("text_zh", 15), ("text_filtered", 15), ("text_k1000", 5), ("image", 10),
       ("similar", 8), ("thumbnail", 8), ("embed_text", 4)]


def make_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = folder / f"{2015 + i % 8}"
        sub.mkdir(parents=True, exist_ok=True)
        grid = rng.integers(0, 256, size=(4, 5, 3)).astype(np.uint8)
        size = (160 + 40 * (i % 5), 120 + 30 * (i % 4))
        img = Image.fromarray(grid).resize(size, Image.Resampling.BILINEAR)
        path = sub / f"p{i:05d}.{'png' if i % 4 == 0 else 'jpg'}"
        img.save(path)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, token: str, batching: bool = True, extra: tuple[str, ...] = (),
                 wait_s: float = 180) -> tuple[subprocess.Popen, str]:
    """`llm2search serve` (plus `extra` arguments, such as --ray) in its own process."""
    port = free_port()
    exe = Path(sys.executable).parent / "llm2search"
    cmd = [str(exe), "serve", "--index", str(index), "--port", str(port), "--device", "cpu", "--cpu-search",
           "--batching" if batching else "--no-batching", *extra]
    log = open(index.parent / f"serve-{port}.log", "w+")  # a file, not a pipe: it never fills up
    proc = subprocess.Popen(cmd, env={**os.environ, "LLM2SEARCH_TOKEN": token}, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"server exited: {log.read()}")
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"server did not start within {wait_s:.0f} s")


def run_load(url: str, token: str | None, clients: int, total: int, max_seconds: float,
             images: list[bytes], ids: list[str], folders: list[str], seed: int = 0) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kinds = [k for k, w in MIX for _ in range(w)]
    lock = threading.Lock()
    issued = 0
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[str]] = defaultdict(list)
    deadline = time.monotonic() + max_seconds

    def one(client: httpx.Client, rng: random.Random, kind: str) -> httpx.Response:
        if kind in ("text", "text_zh"):
            text = rng.choice(TEXTS[3:6] if kind == "text_zh" else TEXTS)
            return client.post("/api/search/text", json={"text": text, "k": 20})
        if kind == "text_filtered":
            filt = rng.choice([{"folder": rng.choice(folders)}, {"types": ["png"]}, {"min_width": 240},
                               {"after": "2000-01-01", "sort": "date"}, {"folder": rng.choice(folders), "min_score": -0.5}])
            return client.post("/api/search/text", json={"text": rng.choice(TEXTS), "k": 50, "filter": filt})
        if kind == "text_k1000":
            return client.post("/api/search/text", json={"text": rng.choice(TEXTS), "k": 1000})
        if kind == "image":
            return client.post("/api/search/image", files={"image": ("q.jpg", rng.choice(images), "image/jpeg")},
                               data={"k": "20"})
        if kind == "similar":
            return client.post("/api/search/similar", json={"id": rng.choice(ids), "k": 20})
        if kind == "thumbnail":
            return client.get(f"/api/items/{rng.choice(ids)}/thumbnail", params={"size": rng.choice([128, 256])})
        return client.post("/api/embed/text", json={"texts": rng.sample(TEXTS, 4)})

    def worker(n: int) -> None:
        nonlocal issued
        rng = random.Random(seed * 1000 + n)
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            while True:
                with lock:
                    if issued >= total or time.monotonic() > deadline:
                        return
                    issued += 1
                kind = rng.choice(kinds)
                started = time.perf_counter()
                try:
                    r = one(client, rng, kind)
                    ok, why = r.status_code == 200, f"{r.status_code} {r.text[:120]}"
                except httpx.HTTPError as e:
                    ok, why = False, f"{type(e).__name__}: {e}"
                elapsed = time.perf_counter() - started
                with lock:
                    latencies[kind].append(elapsed)
                    if not ok:
                        errors[kind].append(why)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    rows = {}
    everything = [x for v in latencies.values() for x in v]
    for kind in [k for k, _ in MIX] + ["all"]:
        xs = np.array(everything if kind == "all" else latencies.get(kind, []), dtype=np.float64) * 1000
        errs = sum(len(v) for v in errors.values()) if kind == "all" else len(errors.get(kind, []))
        if len(xs):
            rows[kind] = {"requests": int(len(xs)), "p50_ms": float(np.percentile(xs, 50)),
                          "p99_ms": float(np.percentile(xs, 99)), "max_ms": float(xs.max()), "errors": errs}
    return {"clients": clients, "requests": len(everything), "seconds": wall,
            "requests_per_second": len(everything) / wall if wall else 0.0, "rows": rows,
            "error_samples": {k: v[:3] for k, v in errors.items()}}


def markdown(result: dict) -> str:
    lines = ["| request | count | p50 ms | p99 ms | max ms | errors |", "|---|---:|---:|---:|---:|---:|"]
    for kind, r in result["rows"].items():
        name = f"**{kind}**" if kind == "all" else kind
        lines.append(f"| {name} | {r['requests']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['errors']} |")
    lines.append("")
    lines.append(f"{result['requests']} requests from {result['clients']} concurrent clients in "
                 f"{result['seconds']:.1f} s ({result['requests_per_second']:.0f} requests/s).")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--max-seconds", type=float, default=300.0, help="stop sending after this long")
    p.add_argument("--photos", type=int, default=300)
    p.add_argument("--url", help="load an already running server instead of starting one")
    p.add_argument("--token", default=os.environ.get("LLM2SEARCH_TOKEN"))
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the baseline run (model calls serialised one request at a time)")
    args = p.parse_args()
    if args.url and not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise SystemExit("this load test only targets servers on this machine (127.0.0.1 / localhost)")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="llm2search-load-") as tmp:
        tmp_path = Path(tmp)
        os.environ.setdefault("HF_HOME", str(tmp_path / "hf"))
        token = args.token
        if args.url:
            photos = make_photos(tmp_path / "queries", 20, seed=7)
            results = {"server": load(args.url.rstrip("/"), token, args, photos)}
        else:
            from llm2search.indexer.pipeline import IndexingConfig, index_folder
            from llm2search.models.tiny import build_tiny_model

            model = build_tiny_model(tmp_path / "model")
            photos = make_photos(tmp_path / "photos", args.photos)
            t0 = time.perf_counter()
            index_folder(tmp_path / "photos", tmp_path / "index",
                         IndexingConfig(model=str(model), device="cpu", workers=0, progress=False))
            print(f"indexed {len(photos)} photos in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            token = token or "load-test-token"
            results = {}
            for batching in ([False] if not args.no_baseline else []) + [True]:
                proc, url = start_server(tmp_path / "index", token, batching)
                try:
                    name = "batched model calls" if batching else "baseline: one model call per request"
                    results[name] = load(url, token, args, photos)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    for name, result in results.items():
        result["machine"] = machine
        print(f"\n### {name}\n")
        print(markdown(result))
        if result["error_samples"]:
            print("error samples:", json.dumps(result["error_samples"], indent=2), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def load(url: str, token: str | None, args: argparse.Namespace, photos: list[Path]) -> dict:
    from PIL import Image

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    seed_hits = httpx.post(url + "/api/search/text", json={"text": "photo", "k": 200},
                           headers=headers, timeout=60).json()["hits"]
    ids = [h["id"] for h in seed_hits]
    folders = sorted({str(Path(h["path"]).parent) for h in seed_hits})
    images = []
    for path in photos[:20]:
        buf = io.BytesIO()
        Image.open(path).convert("RGB").save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
    return run_load(url, token, args.clients, args.requests, args.max_seconds, images, ids, folders)


if __name__ == "__main__":
    main()
