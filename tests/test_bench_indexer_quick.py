"""The indexer benchmarks run and print well-formed results (their speed is not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(*args: str) -> object:
    out = subprocess.run([sys.executable, *args, "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=True)
    return json.loads(out.stdout)


def test_preprocess_bench_quick() -> None:
    result = run_bench("bench/preprocess.py", "--quick")
    rows = {r["method"]: r for r in result["rows"]}
    default = rows["PIL draft decode to >= 2x target (default)"]
    assert default["images_per_s"] > 0 and default["ratio"] > 0
    assert 0 <= default["mean_diff"] <= default["max_diff"] <= 255
    assert rows["CLIPImageProcessor (transformers, full decode)"]["ratio"] == 1.0


def test_memory_bench_small_sizes() -> None:
    result = run_bench("bench/memory.py", "--sizes", "30", "90")
    assert [r["photos"] for r in result] == [30, 90]
    for r in result:
        assert r["live"] == r["photos"] and r["rerun_embedded"] == 0 and r["rerun_unchanged"] == r["photos"]
        assert r["peak_rss_mib"] > 0
