"""llm2search: find photos by what they show, from a sentence in English or Chinese.

    import llm2search
    report = llm2search.index_folder("~/Photos", "~/photo-index")
    for hit in llm2search.open_index("~/photo-index").search("一群人在徒步", k=5):
        print(hit.rank, hit.score, hit.path)

Imports are lazy: `import llm2search` loads neither torch nor faiss.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Arrow's C++ allocator is chosen once, when pyarrow loads: unless the user chose one, it is
# glibc's (Arrow's "system" pool) rather than mimalloc, whose per-thread pages freed Parquet
# reads do not give back (store/memory.py). No effect when pyarrow was imported first.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from .errors import (
    IndexCorruptError, IndexLockedError, IndexNotFoundError, InputPathError, InvalidQueryError,
    ItemNotFoundError, Llm2SearchError, ModelLoadError, ModelMismatchError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .indexer.pipeline import IndexingConfig, IndexReport
    from .search.info import index_info
    from .search.filters import SearchFilter
    from .search.searcher import Hit, SearchIndex, open_index

_LAZY = {
    "IndexingConfig": "indexer.pipeline",
    "IndexReport": "indexer.pipeline",
    "open_index": "search.searcher",
    "SearchIndex": "search.searcher",
    "Hit": "search.searcher",
    "SearchFilter": "search.filters",
    "index_info": "search.info",
}

__all__ = [
    "IndexCorruptError", "IndexLockedError", "IndexNotFoundError", "InputPathError",
    "InvalidQueryError", "ItemNotFoundError", "Llm2SearchError", "ModelLoadError", "ModelMismatchError", "index_folder",
    *_LAZY,
]


def index_folder(folder: Any, index_dir: Any, config: "IndexingConfig | None" = None, embedder: Any = None) -> "IndexReport":
    """Bring the index at `index_dir` up to date with `folder`: on this host, or on a Ray cluster
    when `config.ray` is set ("auto", an address, or llm2search.cluster.config.RayConfig; there,
    `folder` may also be a Parquet listing of files)."""
    from .indexer.pipeline import IndexingConfig, index_folder as index_here

    config = config if config is not None else IndexingConfig()
    if config.ray is None:
        return index_here(folder, index_dir, config, embedder)
    if embedder is not None:
        raise ValueError("a Ray run loads the model in its actors: pass config.model, not an embedder")
    from .cluster.driver import index_on_ray

    return index_on_ray(folder, index_dir, config)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'llm2search' has no attribute {name!r}")
