"""Where change detection's memory goes (issue 12): a rerun's planning steps, one at a time.

    python bench/plan_memory.py FOLDER INDEX [--json out.json]

Runs what `llm2search index FOLDER --index INDEX` runs before it embeds anything (the index's
live rows read, the folder scanned into Arrow, the two joined into a change plan), in this
process, and prints after each step the process's RSS, its high-water mark (VmHWM) and the bytes
Arrow's memory pool holds (buffers built from numpy arrays are not the pool's), and the RSS
added since the imports per file. bench/scale.py
files runs it on every size it indexed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _status() -> dict[str, float]:
    with open("/proc/self/status") as fh:
        fields = {line.split(":")[0]: line.split()[1] for line in fh if line.startswith(("VmRSS", "VmHWM", "RssAnon"))}
    return {"rss_mib": int(fields["VmRSS"]) / 1024, "hwm_mib": int(fields["VmHWM"]) / 1024,
            "anon_mib": int(fields["RssAnon"]) / 1024}


def profile(folder: Path, index: Path) -> dict:
    import pyarrow as pa

    from llm2search.indexer.changes import plan_changes, scan_table
    from llm2search.indexer.scan import scan
    from llm2search.indexer.state import IndexState
    from llm2search.store.manifest import read_manifest
    from llm2search.store.writer import read_errors

    steps = [{"step": "imports", **_status(), "arrow_mib": pa.total_allocated_bytes() / 2**20, "s": 0.0}]

    def step(name: str, started: float, rows: int) -> None:
        steps.append({"step": name, "rows": rows, **_status(), "arrow_mib": pa.total_allocated_bytes() / 2**20,
                      "s": time.perf_counter() - started})

    manifest = read_manifest(index)
    t = time.perf_counter()
    state = IndexState.load(index, manifest)
    step("index's live rows (path, size, mtime)", t, state.live.num_rows)
    t = time.perf_counter()
    scanned = scan_table(scan(folder))
    step("folder scanned (Arrow)", t, scanned.files.num_rows)
    t = time.perf_counter()
    plan = plan_changes(scanned, state, str(folder), read_errors(index, manifest))
    step("change plan (join on path)", t, scanned.files.num_rows)
    files = max(1, scanned.files.num_rows)
    for s in steps:  # what the step added since the imports, per file
        s["rss_bytes_per_file"] = (s["rss_mib"] - steps[0]["rss_mib"]) * 2**20 / files
        s["arrow_bytes_per_file"] = s["arrow_mib"] * 2**20 / files
    return {"folder": str(folder), "files": scanned.files.num_rows, "live_rows": state.live.num_rows,
            "to_embed": plan.embed.num_rows, "unchanged": plan.unchanged, "steps": steps,
            "arrow_pool_peak_mib": pa.default_memory_pool().max_memory() / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("index", type=Path)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    result = profile(args.folder.resolve(), args.index)
    print(f"# change detection over {result['files']:,} files, {result['live_rows']:,} live rows "
          f"(Arrow pool peak {result['arrow_pool_peak_mib']:.0f} MiB)")
    print("| step | s | RSS MiB | peak MiB | Arrow pool MiB | RSS since imports, B/file | Arrow pool B/file |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in result["steps"]:
        print(f"| {s['step']} | {s['s']:.2f} | {s['rss_mib']:.0f} | {s['hwm_mib']:.0f} | {s['arrow_mib']:.0f} | "
              f"{s['rss_bytes_per_file']:.0f} | {s['arrow_bytes_per_file']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
