"""Near-duplicate groups (`llm2search duplicates`): pair precision and recall on a generated,
labelled set (llm2search/demo/copies.py: originals with re-saved, resized, WebP, PNG and burst
copies), with the bundled demo model, at several thresholds; plus the score gap between the
closest distinct pair and the farthest true copy.

    python bench/duplicates.py                 # 200 originals (~600 files), demo model
    python bench/duplicates.py --quick         # 40 originals
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
THRESHOLDS = (0.80, 0.85, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)


def main() -> None:
    from llm2search.demo.copies import pair_scores, read_labels, write_copies
    from llm2search.indexer.pipeline import IndexingConfig, index_folder
    from llm2search.library.duplicates import DuplicatesConfig, find_duplicates
    from llm2search.search.searcher import open_index

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--originals", type=int, default=None)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / ".work" / "duplicates")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    originals = args.originals or (40 if args.quick else 200)
    shutil.rmtree(args.work, ignore_errors=True)
    labels = read_labels(write_copies(args.work / "photos", originals, seed=1))
    started = time.perf_counter()
    index_folder(args.work / "photos", args.work / "index",
                 IndexingConfig(model=args.model, device="cpu", workers=0, progress=False))
    index_s = time.perf_counter() - started
    idx = open_index(args.work / "index", device="cpu")
    rows = []
    for t in THRESHOLDS:
        started = time.perf_counter()
        groups = find_duplicates(idx, DuplicatesConfig(threshold=t))
        took = time.perf_counter() - started
        found = [{Path(m.path).name for m in g.members} for g in groups]
        p, r = pair_scores(found, labels)
        rows.append({"threshold": t, "groups": len(groups), "precision": round(p, 4), "recall": round(r, 4),
                     "seconds": round(took, 3)})
    true_groups = len({g for g in labels.values() if sum(1 for x in labels.values() if x == g) > 1})
    result = {"files": len(labels), "originals": originals, "true_groups": true_groups, "model": args.model,
              "index_seconds": round(index_s, 1), "rows": rows, "machine": platform.platform(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    print(f"{len(labels)} files, {originals} originals, {true_groups} true groups; model {args.model}")
    print(f"{'threshold':>9} {'groups':>6} {'precision':>9} {'recall':>6} {'seconds':>7}")
    for row in rows:
        print(f"{row['threshold']:>9.2f} {row['groups']:>6} {row['precision']:>9.3f} {row['recall']:>6.3f} {row['seconds']:>7.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
