"""bench/search.py, bench/index.py and bench/query.py in --quick mode print well-formed results
(their speed is not judged here; bench/README.md holds the measured numbers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, tmp_path: Path, *args: str) -> tuple[dict, str]:
    out_json = tmp_path / "result.json"
    done = subprocess.run([sys.executable, f"bench/{script}", "--quick", "--work", str(tmp_path / "work"),
                           "--json", str(out_json), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out_json.read_text()), done.stdout


def test_search_bench_quick(tmp_path: Path) -> None:
    result, stdout = run_bench("search.py", tmp_path, "--systems", "flat,ours,autofaiss", "--sweep")
    rows = {r["system"]: r for r in result["rows"]}
    flat, ours = rows["Flat (exact)"], rows["ours (product)"]
    assert flat["recall"] == 1.0 and flat["ram_bytes_per_vector"] >= 1280 * 4
    assert ours["index"].startswith("IVF") and "PQ" in ours["index"]
    assert 0.0 < ours["recall"] <= 1.0
    for r in rows.values():
        assert r["batch_qps"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] and r["build_s"] >= 0
        assert r["disk_bytes_per_vector"] > 0 and r["ram_bytes_per_vector"] > 0
    assert ours["ram_bytes_per_vector"] < flat["ram_bytes_per_vector"]
    assert 1.0 <= ours["list_imbalance"] < 100 and result["data"]["cluster_size_imbalance"] >= 1.0
    # autofaiss is skipped in --quick (its own venv, minutes of OPQ training), and says so
    assert "autofaiss" not in rows and "autofaiss skipped" in result["skipped"]
    assert "| Flat (exact) |" in stdout and "| ours (product) |" in stdout and "autofaiss skipped" in stdout
    # --sweep: nprobe x re-rank depth through the product's call, and the re-rank variants
    sweep = result["sweep"]
    assert {(s["nprobe"], s["rerank_factor"]) for s in sweep} == {(p, f) for p in (8, 16, 32, 64) for f in (5, 10, 15, 20, 30)}
    assert all(0 < s["recall"] <= 1 and s["batch_qps"] > 0 for s in sweep)
    experiments = result["rerank_experiments"]
    assert experiments["decoder_qps"]["faiss"] > 0 and experiments["decoder_qps"]["numpy"] > 0
    full, *adaptive = experiments["adaptive"]
    assert full["rows_per_query"] == experiments["depth"]
    # nprobe 32, x15 (the defaults) in the sweep; ties between PQ estimates may pick other rows
    assert len(adaptive) == 6 and abs(full["recall"] - result["sweep"][12]["recall"]) <= 0.01
    assert all(a["first"] <= a["rows_per_query"] <= full["rows_per_query"] and 0 < a["recall"] <= 1 for a in adaptive)
    assert "| adaptive re-rank: first |" in stdout


def test_index_bench_quick(tmp_path: Path) -> None:
    result, stdout = run_bench("index.py", tmp_path)
    rows = result["rows"]
    assert {(r["photos"], r["embedder"]) for r in rows} == {
        (n, e) for n in (100, 300) for e in ("no-op", "tiny model")}
    for r in rows:
        assert r["embedded"] == r["photos"] and r["failed"] == 0
        assert r["images_per_s"] > 0 and 0 < r["peak_rss_mib"] <= r["tree_peak_rss_mib"] * 1.05
    assert "| 300 | no-op |" in stdout


def test_query_bench_quick(tmp_path: Path) -> None:
    result, stdout = run_bench("query.py", tmp_path)
    phases = {r["phase"]: r for r in result["rows"]}
    for name in ("load index", "load model", "encode", "search", "re-rank", "metadata join",
                 "total (search())", "cold `llm2search query` (process wall)"):
        assert 0 <= phases[name]["p50_ms"] <= phases[name]["p99_ms"], name
    assert result["factory"].startswith("IVF") and result["cold_over_warm"] > 0
    assert ("warm server (HTTP search/text)" in phases) == result["server_measured"]
    assert "| re-rank |" in stdout


def test_scale_bench_quick(tmp_path: Path) -> None:
    files, stdout = run_bench("scale.py", tmp_path, "files")
    assert [r["files"] for r in files["rows"]] == [300, 900] and "| 900 |" in stdout
    for r in files["rows"]:
        assert r["embedded"] == r["files"] and r["peak_rss_mib"] > 0 and r["tree_peak_mib"] > 0
        assert [x["embedded"] for x in r["reruns"]] == [0, 0, 0]  # nothing changed, nothing embedded
        steps = r["plan"]["steps"]  # change detection's memory, step by step
        assert r["plan"]["files"] == r["files"] and r["plan"]["to_embed"] == 0 and len(steps) == 4
        assert all(st["hwm_mib"] >= st["rss_mib"] > 0 for st in steps)
    vectors, stdout = run_bench("scale.py", tmp_path, "vectors")
    for r in vectors["rows"]:
        assert 0.0 < r["ours"]["recall"] <= 1.0 and r["ours"]["factory"].startswith("IVF")
        assert r["retrain"]["embedded"] == 0 and r["retrain"]["training"]["nlist"] > 0
        assert r["flat_qps"] > 0 and r["ours"]["batch_qps"] > 0 and r["server"]["after_queries"]
        # single searches measured both ways in one process: the quick sizes have too few lists
        # for the coarse projection
        assert r["ours"]["coarse_projection"] is False and r["ours"]["exact_coarse_p50_ms"] > 0
        assert 0.0 < r["ours"]["single_recall"] <= 1.0 and 0.0 < r["ours"]["exact_coarse_single_recall"] <= 1.0
    assert "fitted exponent" in stdout and "exact scan p50" in stdout
    # bench/coarse.py on the same IVF-PQ store: every way of finding the lists, one table
    store = tmp_path / "work" / "vectors" / f"store-{vectors['rows'][-1]['n']}"
    done = subprocess.run([sys.executable, "bench/coarse.py", str(store), "--count", "20", "--nprobe", "8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == 1 + 9 + 3 and table[0].startswith("| exact scan") and table[0].endswith("| 1.0000 | 1.0× |")
    for line in table:
        assert 0.0 < float(line.split("|")[5]) <= 1.0
