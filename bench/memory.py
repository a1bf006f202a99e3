"""Indexing memory does not grow with the collection: peak RSS for 2k vs 20k photos (tiny
model, same settings), plus the time of a rerun over the unchanged collection.

Each size runs in a fresh subprocess that reports its own peak RSS and its decode workers' peak.
The comparison is the ratio of the 20k run's peak to the 2k run's (1.0 = flat).

    python bench/memory.py                  # 2,000 and 20,000 photos (~3 minutes here)
    python bench/memory.py --sizes 200 2000 # --quick does this
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = r"""
import json, sys, time
from llm2search.indexer.pipeline import IndexingConfig, index_folder
from llm2search.store.memory import peak_rss_mib
folder, index, model = sys.argv[1:4]
config = IndexingConfig(model=model, workers=1, batch_size=64, progress=False)
first = index_folder(folder, index, config)
peak_self = peak_rss_mib()  # VmHWM, not ru_maxrss (which holds the vfork parent's)
start = time.perf_counter()
again = index_folder(folder, index, config)
rerun = time.perf_counter() - start
print(json.dumps({"seconds": first.seconds, "images_per_s": first.images_per_second,
                  "peak_rss_mib": peak_self,
                  "rerun_seconds": rerun, "rerun_embedded": again.embedded,
                  "rerun_unchanged": again.unchanged, "live": again.live}))
"""


def make_collection(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        grid = rng.integers(0, 256, size=(6, 8, 3)).astype(np.uint8)
        Image.fromarray(grid).resize((320, 240), Image.Resampling.BILINEAR).save(sub / f"{i:06d}.jpg", quality=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 20_000])
    parser.add_argument("--quick", action="store_true", help="sizes 200 and 2,000")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [200, 2_000] if args.quick else args.sizes

    from llm2search.models.tiny import build_tiny_model

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "model")
        for n in sizes:
            folder, index = Path(tmp) / f"photos{n}", Path(tmp) / f"index{n}"
            t0 = time.perf_counter()
            make_collection(folder, n)
            gen = time.perf_counter() - t0
            out = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(index), str(model)],
                                 capture_output=True, text=True, check=True)
            row = {"photos": n, "generate_seconds": gen, **json.loads(out.stdout.strip().splitlines()[-1])}
            results.append(row)
    base = results[0]
    for r in results:
        r["peak_ratio_vs_smallest"] = r["peak_rss_mib"] / base["peak_rss_mib"]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("tiny model, 1 decode worker (bounded read-ahead), batch 64; peak RSS of the indexing process")
    print(f"{'photos':>8} {'index s':>8} {'img/s':>7} {'peak MiB':>9} {'x smallest':>10} {'rerun s':>8} {'rerun embedded':>15}")
    for r in results:
        print(f"{r['photos']:>8} {r['seconds']:>8.1f} {r['images_per_s']:>7.0f} {r['peak_rss_mib']:>9.0f} "
              f"{r['peak_ratio_vs_smallest']:>10.2f} {r['rerun_seconds']:>8.2f} {r['rerun_embedded']:>15}")


if __name__ == "__main__":
    main()
