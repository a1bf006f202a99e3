"""llm2search: find photos by what they show, from a sentence in English or Chinese.

    import llm2search
    report = llm2search.index_folder("~/Photos", "~/photo-index")
    for hit in llm2search.open_index("~/photo-index").search("一群人在徒步", k=5):
        print(hit.rank, hit.score, hit.path)

Imports are lazy: `import llm2search` loads neither torch nor faiss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    IndexCorruptError, IndexLockedError, IndexNotFoundError, InputPathError, InvalidQueryError,
    ItemNotFoundError, Llm2SearchError, ModelLoadError, ModelMismatchError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .indexer.pipeline import IndexingConfig, IndexReport, index_folder
    from .search.info import index_info
    from .search.filters import SearchFilter
    from .search.searcher import Hit, SearchIndex, open_index

_LAZY = {
    "index_folder": "indexer.pipeline",
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
    "InvalidQueryError", "ItemNotFoundError", "Llm2SearchError", "ModelLoadError", "ModelMismatchError", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'llm2search' has no attribute {name!r}")
