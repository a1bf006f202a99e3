"""The overhead of Ray Serve: requests/s and p50/p99 of `llm2search serve --ray` vs `llm2search
serve` on this machine, with bench/load.py's load (the same mix, clients and request count) sent
to each in turn, and each endpoint's latency one request at a time (what the hops cost).

    python bench/serve_ray.py                  # tiny model, 300 photos, 16 clients, 3000 requests each
    python bench/serve_ray.py --groups 2 --group-replicas 2 --requests 1000

Builds a tiny model, synthetic photos and their IVF-PQ index (several shards, so both groups
have some) in a temporary folder, starts each server with the real command in its own process
(`--ray local`: a Ray cluster of its own on this machine, shut down when the server stops) and
prints both tables and the ratios."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.append(str(Path(__file__).resolve().parent))  # appended: bench/ray.py must not shadow ray
import load as load_bench  # noqa: E402 - bench/load.py: photos, servers, the load itself

SEQUENTIAL = 30  # requests per endpoint, one at a time


def one_at_a_time(url: str, token: str) -> dict[str, float]:
    """p50 ms of each kind of request sent alone: the hops without queueing."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        hit = c.post("/api/search/text", json={"text": "a photo", "k": 5}).json()["hits"][0]
        vector = c.post("/api/embed/text", json={"texts": ["a photo"]}).json()["vectors"][0]
        requests = {
            "health": lambda: c.get("/api/health"),
            "item (metadata)": lambda: c.get(f"/api/items/{hit['id']}"),
            "embed text": lambda: c.post("/api/embed/text", json={"texts": ["a dog"]}),
            "search by vector, k=20": lambda: c.post("/api/search/vectors", json={"vectors": [vector], "k": 20}),
            "search by text, k=20": lambda: c.post("/api/search/text", json={"text": "a dog", "k": 20}),
            "search by text, filtered": lambda: c.post("/api/search/text", json={
                "text": "a dog", "k": 20, "filter": {"types": ["png"]}}),
        }
        out = {}
        for name, send in requests.items():
            times = []
            for _ in range(SEQUENTIAL):
                started = time.perf_counter()
                r = send()
                times.append((time.perf_counter() - started) * 1000)
                assert r.status_code == 200, r.text
            out[name] = statistics.median(times)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--max-seconds", type=float, default=300.0)
    p.add_argument("--photos", type=int, default=300)
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--group-replicas", type=int, default=1)
    p.add_argument("--cpus-per-replica", type=float, default=0.25,
                   help="Ray CPUs reserved per replica (the Ray cluster gets this machine's cores)")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="llm2search-serve-ray-") as tmp:
        tmp_path = Path(tmp)
        os.environ.setdefault("HF_HOME", str(tmp_path / "hf"))
        from llm2search.indexer.pipeline import IndexingConfig, index_folder
        from llm2search.models.tiny import build_tiny_model
        from llm2search.store.manifest import read_manifest
        from llm2search.store.vector_index import IndexConfig

        model = build_tiny_model(tmp_path / "model")
        photos = load_bench.make_photos(tmp_path / "photos", args.photos)
        index = tmp_path / "index"
        # IVF-PQ in shards of 60 rows: both groups hold shards, as on a real cluster.
        index_folder(tmp_path / "photos", index, IndexingConfig(
            model=str(model), device="cpu", workers=0, progress=False, shard_size=60,
            index=IndexConfig(ivf_threshold=100, nlist=4, ivf_shard_rows=60)))
        manifest = read_manifest(index)
        print(f"index: {manifest.count} photos, {manifest.index_type}, {len(manifest.shards)} shards", file=sys.stderr)
        token = "load-test-token"
        ray_args = ("--ray", "local", "--groups", str(args.groups), "--group-replicas", str(args.group_replicas),
                    "--cpus-per-replica", str(args.cpus_per_replica))
        results = {}
        for name, extra in [("llm2search serve", ()), (f"llm2search serve --ray ({args.groups} groups x "
                                                       f"{args.group_replicas} replica(s))", ray_args)]:
            started = time.perf_counter()
            proc, url = load_bench.start_server(index, token, True, extra, wait_s=600)
            print(f"{name}: up in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            try:
                sequential = one_at_a_time(url, token)
                results[name] = load_bench.load(url, token, args, photos)
                results[name]["one_at_a_time_p50_ms"] = sequential
            finally:
                proc.send_signal(signal.SIGINT)  # the CLI's own shutdown: Serve and its Ray cluster
                try:
                    proc.wait(timeout=120)
                except Exception:  # noqa: BLE001
                    proc.kill()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    (one, one_r), (ray_name, ray_r) = results.items()
    for name, result in results.items():
        result["machine"] = machine
        print(f"\n### {name}\n")
        print(load_bench.markdown(result))
        if result["error_samples"]:
            print("error samples:", json.dumps(result["error_samples"], indent=2), file=sys.stderr)
    a, b = one_r["rows"]["all"], ray_r["rows"]["all"]
    print("\n| server | requests/s | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|")
    for name, r in results.items():
        row = r["rows"]["all"]
        print(f"| {name} | {r['requests_per_second']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} |")
    print(f"\nRay Serve / one host: {ray_r['requests_per_second'] / one_r['requests_per_second']:.2f}x requests/s, "
          f"p50 {b['p50_ms'] / a['p50_ms']:.2f}x, p99 {b['p99_ms'] / a['p99_ms']:.2f}x ({machine})")
    print("\nOne request at a time, p50 ms:\n\n| request | llm2search serve | --ray | difference |\n|---|---:|---:|---:|")
    for kind, local_ms in one_r["one_at_a_time_p50_ms"].items():
        ray_ms = ray_r["one_at_a_time_p50_ms"][kind]
        print(f"| {kind} | {local_ms:.1f} | {ray_ms:.1f} | +{ray_ms - local_ms:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
