"""Build the index autofaiss chooses, inside autofaiss's own virtual environment.

Run by bench/search.py with the interpreter of bench/.autofaiss-venv (autofaiss 2.18 needs
numpy < 2, which the project does not allow). Writes the index, autofaiss's own infos and our
timing to --out. Not meant to be imported by the project.

Compatibility fix (the only one): autofaiss 2.18 calls `faiss.OPQMatrix(d, M=.., d2=..)` with
keyword arguments, which faiss-cpu 1.15's SWIG constructor rejects with a TypeError. A subclass
that forwards them positionally replaces `faiss.OPQMatrix` before autofaiss is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import faiss


class _OPQMatrix(faiss.OPQMatrix):  # type: ignore[misc, name-defined]
    def __init__(self, d: int = 0, M: int = 1, d2: int = -1):  # noqa: N803 - faiss's names
        super().__init__(d, M, d2)


faiss.OPQMatrix = _OPQMatrix

from autofaiss import build_index  # noqa: E402 - must follow the fix above


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--embeddings", required=True, help="folder holding one .npy of float32 vectors")
    p.add_argument("--out", required=True)
    p.add_argument("--max-memory", required=True, help="autofaiss max_index_memory_usage, e.g. 200MB")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--available-memory", default="8G")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    _, infos = build_index(
        embeddings=args.embeddings,
        index_path=str(out / "knn.index"),
        index_infos_path=str(out / "index_infos.json"),
        max_index_memory_usage=args.max_memory,
        current_memory_available=args.available_memory,
        metric_type="ip",
        nb_cores=args.cores,
    )
    seconds = time.perf_counter() - started
    from importlib.metadata import version

    (out / "build.json").write_text(json.dumps({
        "build_seconds": seconds,
        "infos": infos,
        "max_memory": args.max_memory,
        "cores": args.cores,
        "versions": {name: version(name) for name in ("autofaiss", "faiss-cpu", "numpy", "pyarrow")}
        | {"python": platform.python_version()},
        "pid": os.getpid(),
    }, indent=2))


if __name__ == "__main__":
    main()
