"""Indexing on Ray vs on one host, measured in the same run: images/s of `llm2search index`'s
single-host path and of its Ray path (the overhead ratio) on this machine, and the Ray path on a
1-node vs a 2-node local cluster (ray.cluster_utils.Cluster) holding the same CPUs in total.

    python bench/ray.py              # 600 photos (several minutes on a 2-core machine)
    python bench/ray.py --quick      # 40 photos (a smoke run)

Each configuration runs in a fresh subprocess into an empty index: the cluster is started there
(and shut down there; `ray stop` is never used), and the time counted is the indexing call alone,
cluster start excluded. The tiny model has the real preset's shapes (336 px, 1280-d), so decode,
preprocessing and the store do LLM2CLIP's work; the towers are tiny, so this measures what Ray
adds around the model, not GPU throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[5])
folder, index, model, mode = sys.argv[1:5]
from llm2search.indexer.pipeline import IndexingConfig, index_folder
config = IndexingConfig(model=model, device="cpu", progress=False)
cluster = None
if mode != "single":
    import ray
    from ray.cluster_utils import Cluster
    from llm2search.cluster.config import RayConfig
    from llm2search.cluster.driver import index_on_ray
    nodes = 1 if mode == "ray-1-node" else 2
    cpus = 2 / nodes  # the same CPUs in total, split over the nodes
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus)
    ray.init(address=cluster.address, log_to_driver=False)
    rc = RayConfig(address=cluster.address, embed_actors=2, actor_cpus=0.5, decode_cpus=0.5, write_cpus=0.5,
                   unit_files=int(sys.argv[6]))
    config = IndexingConfig(model=model, device="cpu", progress=False, ray=rc)
started = time.monotonic()
report = index_on_ray(folder, index, config) if cluster else index_folder(folder, index, config)
seconds = time.monotonic() - started
print(json.dumps({"seconds": seconds, "embedded": report.embedded, "live": report.live}))
if cluster:
    ray.shutdown()
    cluster.shutdown()
"""


def run_one(photos: Path, index: Path, model: Path, mode: str, unit_files: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(photos), str(index), str(model), mode, str(ROOT),
                          str(unit_files)], capture_output=True, text=True, timeout=3600,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["images_per_s"] = r["embedded"] / r["seconds"] if r["seconds"] > 0 else 0.0
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=600)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--work", type=Path, default=BENCH_DIR / ".work" / "ray")
    args = p.parse_args(argv)
    n = 40 if args.quick else args.photos
    from index import make_photos  # bench/index.py's generated JPEGs (cached)

    from llm2search.models.tiny import TinyModelConfig, build_tiny_model

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / "tiny-1280-336"
    if not (model / "llm2search_model.json").exists():
        build_tiny_model(model, TinyModelConfig(name="tiny-bench", dim=1280, image_size=336))
    photos = make_photos(args.work / f"photos-{n}", n)
    unit_files = max(10, n // 8)  # several work units, so commits happen along the way
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for mode in ("single", "ray-1-node", "ray-2-nodes"):
            r = run_one(photos, Path(tmp) / mode, model, mode, unit_files)
            rows.append({"mode": mode, **r})
    base = rows[0]["images_per_s"] or 1.0
    for r in rows:
        r["ratio_vs_single"] = r["images_per_s"] / base
    result = {"photos": n, "unit_files": unit_files, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{n} photos (640x480 JPEG), tiny model 336 px / 1280-d, {result['machine']}, {result['date']}")
    print(f"{'mode':<14}{'seconds':>9}{'images/s':>10}{'vs single':>11}")
    for r in rows:
        print(f"{r['mode']:<14}{r['seconds']:>9.1f}{r['images_per_s']:>10.1f}{r['ratio_vs_single']:>10.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
