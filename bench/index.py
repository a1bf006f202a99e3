"""End-to-end indexing throughput: `index_folder` on generated photos, with the tiny model and
with a no-op embedder (the pipeline's own ceiling: scan, read, hash, decode, preprocess, store),
and how time and peak memory grow from 1k to 10k to 50k files.

    python bench/index.py            # 1,000 / 10,000 / 50,000 photos, both embedders (~15 min)
    python bench/index.py --quick    # 100 / 300 photos (seconds); used by tests/test_bench_quick.py

Each (embedder, size) runs in a fresh subprocess that indexes into an empty index with the
product's defaults; it reports its own peak RSS, and the parent samples the peak RSS of its whole
process tree (decode workers included). The tiny model is
built with the real preset's shapes (336 px input, 1280-d output), so decoding, preprocessing and
the store do the work they do for LLM2CLIP; only the towers are tiny.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PHOTO_SIZE = (640, 480)  # generated JPEGs: ~40 KB, decoded in full (no draft at this size)
DISTINCT_BASES = 200  # distinct pictures; every file gets unique trailing bytes (unique hash)

CHILD = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[5])
from llm2search.indexer.pipeline import IndexingConfig, index_folder
from llm2search.models.presets import resolve_model
from llm2search.store.memory import peak_rss_mib
folder, index, model, mode = sys.argv[1:5]

class NoOpEmbedder:
    # Stands in for the model: unit vectors of the model's size, no compute.
    def __init__(self, spec):
        self.spec = spec
        self.dim = spec.dim
        self._rng = np.random.default_rng(0)

    def embed_pixels(self, pixels):
        v = self._rng.standard_normal((len(pixels), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

config = IndexingConfig(model=model, progress=False)
embedder = NoOpEmbedder(resolve_model(model)) if mode == "noop" else None
report = index_folder(folder, index, config, embedder=embedder)
print(json.dumps({"seconds": report.seconds, "embedded": report.embedded, "failed": report.failed,
                  "images_per_s": report.images_per_second, "index_type": report.index_type,
                  "peak_rss_mib": peak_rss_mib()}))  # VmHWM, not ru_maxrss
"""


def make_photos(folder: Path, n: int) -> Path:
    """`n` JPEGs with distinct content hashes (cached: an existing complete folder is reused)."""
    from PIL import Image

    done = folder / ".complete"
    if done.exists() and int(done.read_text()) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    w, h = PHOTO_SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    bases = []
    for _ in range(min(n, DISTINCT_BASES)):
        c0, c1 = rng.integers(0, 255, 3), rng.integers(0, 255, 3)
        t = ((xx * rng.uniform(0.5, 2) + yy * rng.uniform(0.5, 2)) / (w + h))[..., None]
        img = c0 * (1 - t) + c1 * t + rng.normal(0, 12, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
        bases.append(buf.getvalue())
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        # Bytes after the JPEG end marker are ignored by decoders but change the content hash,
        # so every file is embedded (the indexer reuses vectors of identical files).
        (sub / f"IMG_{i:06d}.jpg").write_bytes(bases[i % len(bases)] + f"#{i}".encode())
    done.write_text(str(n))
    return folder


def run_one(photos: Path, model: Path, mode: str) -> dict:
    """Index `photos` into a fresh index in a child process; the peak RSS of the child's whole
    process tree (decode workers included) is sampled every 0.1 s."""
    import psutil

    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(photos), str(Path(tmp) / "index"),
                                 str(model), mode, str(ROOT)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        tree_peak = 0
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
                tree_peak = max(tree_peak, sum(_rss(p) for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.1)
        out, err = proc.communicate()
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"indexing {photos} ({mode}) failed: {err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["process_seconds"] = wall  # includes interpreter start and imports
    result["tree_peak_rss_mib"] = tree_peak / 2**20
    return result


def _rss(p) -> int:
    try:
        return p.memory_info().rss
    except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000])
    p.add_argument("--modes", nargs="+", default=["noop", "tiny"], choices=["noop", "tiny"])
    p.add_argument("--quick", action="store_true", help="100 and 300 photos")
    p.add_argument("--work", type=Path, default=BENCH_DIR / ".work" / "index")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = [100, 300]
    sys.path.insert(0, str(ROOT))
    from llm2search.models.tiny import TinyModelConfig, build_tiny_model

    model = args.work / "tiny-1280-336"
    if not (model / "llm2search_model.json").exists():
        build_tiny_model(model, TinyModelConfig(name="tiny-bench", dim=1280, image_size=336))
    rows = []
    for n in args.sizes:
        photos = make_photos(args.work / f"photos-{n}", n)
        for mode in args.modes:
            r = run_one(photos, model, mode)
            r.update(photos=n, embedder="no-op" if mode == "noop" else "tiny model")
            rows.append(r)
            print(f"{n:>7,} photos  {r['embedder']:<10}  {r['images_per_s']:8.1f} images/s  "
                  f"{r['seconds']:7.1f} s  peak RSS {r['peak_rss_mib']:6.0f} MiB "
                  f"(process tree {r['tree_peak_rss_mib']:.0f} MiB)", file=sys.stderr, flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# bench/index.py  {os.cpu_count()} CPUs ({cpu}), {date}; photos {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} "
          f"JPEG; tiny model at 336 px / 1280-d; product defaults (decode workers = cores - 1)")
    print("| photos | embedder | images/s | index s | process s | peak RSS MiB | process tree peak MiB | index type |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['photos']:,} | {r['embedder']} | {r['images_per_s']:.1f} | {r['seconds']:.1f} | "
              f"{r['process_seconds']:.1f} | {r['peak_rss_mib']:.0f} | {r['tree_peak_rss_mib']:.0f} | "
              f"{r['index_type']} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": date, "cpus": os.cpu_count(), "cpu_model": cpu,
                                         "command": " ".join(["python", "bench/index.py", *(argv or sys.argv[1:])]),
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
