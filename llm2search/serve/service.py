"""What the HTTP server serves, without HTTP: one open index with its models kept hot. Model calls
are serialised by a lock (a torch model is not re-entrant), and requests that arrive while the
model is busy are embedded together in the next batch; vector search runs concurrently. A new
index version (another process ran `llm2search index`) is picked up on the next request; each
request answers from the version it started on, which stays open until its last request ends."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import numpy as np

from ..errors import InvalidQueryError
from ..models.spec import identities_match
from ..search.filters import SearchFilter
from ..search.info import index_info
from ..search.query import WeightedVector, caption_probabilities, combine, image_pixels
from ..search.searcher import Hit, SearchIndex
from ..store.manifest import manifest_path
from .batching import Batcher
from .config import ServiceConfig
from .files import open_indexed
from .thumbnails import thumbnail_jpeg, viewable

THUMBNAIL_CACHE = 1024  # thumbnails kept in memory (about 10 kB each at 256 px)
MAX_TEXT_BATCH = 64  # texts per model call when requests queue up
MAX_IMAGE_BATCH = 16  # images per model call
WARM_COARSE_S = 60.0  # at most this long for the low-rank copy of the centroids at start (~1 s at 8,192 lists)


@dataclass
class _Version:
    """One open index version and the requests using it."""

    index: SearchIndex
    users: int = 0
    retired: bool = False  # a newer version is current; close this one when users reach 0


@dataclass(frozen=True)
class QueryText:
    text: str
    weight: float = 1.0


class SearchService:
    """`open_index(config)` opens the newest version: a SearchIndex by default; the Ray Serve
    router passes one that searches through its shard groups (serve/router.py), whose embedder
    is a remote deployment that batches concurrent calls itself (`remote_models`): then calls
    go out concurrently, neither serialised nor batched here."""

    def __init__(self, config: ServiceConfig, open_index: Callable[[ServiceConfig], Any] | None = None,
                 remote_models: bool = False):
        self.config = config
        self._open_index = open_index or _search_index
        self._model_lock = threading.Lock()
        one = not config.batching  # a batch limit of one input: plain serialisation
        self._embed_texts: Callable[[np.ndarray], np.ndarray] = Batcher(
            lambda texts: self.index.embedder.embed_texts(list(texts)), self._model_lock, 1 if one else MAX_TEXT_BATCH)
        self._embed_pixels: Callable[[np.ndarray], np.ndarray] = Batcher(
            lambda pixels: self.index.embedder.embed_pixels(pixels), self._model_lock, 1 if one else MAX_IMAGE_BATCH)
        if remote_models:
            self._embed_texts = lambda texts: self.index.embedder.embed_texts(list(texts))
            self._embed_pixels = lambda pixels: self.index.embedder.embed_pixels(pixels)
        self._reload_lock = threading.Lock()
        self._reloading = False  # one thread opens a new version at a time
        self._stamp = _stamp(config.index_dir)
        self._current = _Version(self._open())
        self._checked = time.monotonic()
        self._thumbs: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._thumbs_lock = threading.Lock()

    # -- the index, reopened when a new version is committed --------------------------------
    def _open(self) -> SearchIndex:
        return self._open_index(self.config)

    @property
    def index(self) -> SearchIndex:
        """The newest version (for its model and counts; searches pin a version with _use)."""
        self._maybe_reload()
        return self._current.index

    @contextmanager
    def _use(self) -> Iterator[SearchIndex]:
        """The newest version, held for one request: a version replaced meanwhile is closed
        (its reader lease released, so the writer may delete its files) when its last request
        ends."""
        self._maybe_reload()
        with self._reload_lock:
            version = self._current
            version.users += 1
        try:
            yield version.index
        finally:
            with self._reload_lock:
                version.users -= 1
                done = version.retired and version.users == 0
            if done:
                version.index.close()

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.config.reload_seconds:
            return
        with self._reload_lock:
            if now - self._checked < self.config.reload_seconds:
                return
            self._checked = now
            stamp = _stamp(self.config.index_dir)
            if stamp == self._stamp or self._reloading:
                return
            self._reloading = True
            old = self._current
        # Opened outside the lock: requests keep answering from the current version meanwhile
        # (on Ray Serve, opening waits for every shard group to open the new version).
        try:
            fresh = self._open()
        except BaseException:
            with self._reload_lock:
                self._reloading = False
            raise
        if identities_match(old.index.manifest.model, fresh.manifest.model):
            fresh._embedder = old.index._embedder  # same weights: keep the hot model
        with self._reload_lock:
            self._current, self._stamp, self._reloading = _Version(fresh), stamp, False
            old.retired = True
            done = old.users == 0
        if done:
            old.index.close()

    def warm(self) -> None:
        """Load both towers and run each once, and build the coarse search's low-rank copy of
        the centroids (search/coarse.py), so the first requests pay no load time."""
        self.embed_texts(["warm up"])
        size = self.index.embedder.spec.preprocess.image_size
        self._embed_pixels(np.zeros((1, size, size, 3), dtype=np.uint8))
        self.index.warm_coarse(WARM_COARSE_S)

    # -- embeddings ----------------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise InvalidQueryError("a query text is empty; give a sentence such as 'a dog on a beach'")
        return self._embed_texts(np.array(list(texts), dtype=object))

    def truncated(self, texts: Sequence[str]) -> int:
        """How many of `texts` are longer than the text model's token limit (searched cut).
        Under the model lock: a fast tokenizer is not thread-safe ("Already borrowed")."""
        if not texts:
            return 0
        with self._model_lock:
            return sum(self.index.embedder.truncated(list(texts)))

    @property
    def token_limit(self) -> int:
        return int(self.index.embedder.token_limit)

    def embed_image(self, data: bytes) -> np.ndarray:
        pixels = image_pixels(data, self.index.embedder, self.config.max_pixels)  # decoded in parallel
        return self._embed_pixels(pixels)[0]

    # -- searches ------------------------------------------------------------------------
    def search_text(self, text: str, k: int, flt: SearchFilter) -> list[Hit]:
        vector = self.embed_texts([text])[0]
        with self._use() as index:
            return index.search_vector(vector, k, flt)

    def search_vectors(self, vectors: Sequence[Sequence[float]], k: int, flt: SearchFilter) -> list[list[Hit]]:
        """One batch search for many query vectors (SearchIndex.search_vectors checks them)."""
        try:
            matrix = np.asarray(vectors, dtype=np.float32)
        except ValueError as e:  # ragged rows
            raise InvalidQueryError("the query vectors must all have the same length") from e
        with self._use() as index:
            return index.search_vectors(matrix, k, flt)

    def search_image(self, data: bytes, k: int, flt: SearchFilter) -> list[Hit]:
        vector = self.embed_image(data)
        with self._use() as index:
            return index.search_vector(vector, k, flt)

    def similar(self, item_id: str, k: int, flt: SearchFilter, exclude_self: bool = True) -> list[Hit]:
        with self._use() as index:
            vector = index.vector_by_id(item_id)
            if not exclude_self:
                return index.search_vector(vector, k, flt)
            hits = [h for h in index.search_vector(vector, min(k + 1, 10_000), flt) if h.id != item_id][:k]
        return [replace(h, rank=i) for i, h in enumerate(hits, start=1)]

    def combined(self, texts: Sequence[QueryText], images: Sequence[tuple[bytes, float]],
                 items: Sequence[tuple[str, float]], negatives: Sequence[str], negative_weight: float,
                 k: int, flt: SearchFilter) -> list[Hit]:
        """Weighted sum of text, image and item vectors minus the negative texts, renormalised."""
        parts: list[WeightedVector] = []
        all_texts = [t.text for t in texts] + list(negatives)
        if all_texts:
            vectors = self.embed_texts(all_texts)
            weights = [t.weight for t in texts] + [-abs(negative_weight)] * len(negatives)
            parts += [WeightedVector(v, w) for v, w in zip(vectors, weights)]
        parts += [WeightedVector(self.embed_image(data), w) for data, w in images]
        with self._use() as index:
            parts += [WeightedVector(index.vector_by_id(i), w) for i, w in items]
            if not any(p.weight > 0 for p in parts):
                raise InvalidQueryError("the query needs at least one text, image or item with a positive weight")
            return index.search_vector(combine(parts), k, flt)

    def match(self, captions: Sequence[str], image: bytes | None = None,
              item_id: str | None = None) -> list[dict[str, Any]]:
        """Probability of each caption for one image: softmax(100 x cosine)."""
        if (image is None) == (item_id is None):
            raise InvalidQueryError("give exactly one of an image or an item id")
        if not captions:
            raise InvalidQueryError("give at least one caption")
        if image is not None:
            vector = self.embed_image(image)
        else:
            with self._use() as index:
                vector = index.vector_by_id(str(item_id))
        probs, cos = caption_probabilities(vector, self.embed_texts(captions))
        return [{"caption": c, "probability": float(p), "cosine": float(s)}
                for c, p, s in zip(captions, probs, cos)]

    # -- items ---------------------------------------------------------------------------
    def item(self, item_id: str) -> dict[str, Any]:
        with self._use() as index:
            return index.item(item_id)

    def thumbnail(self, item_id: str, size: int) -> bytes:
        with self._use() as index:
            meta = index.item(item_id)
            path = index.file_path(item_id)
            roots = index.manifest.roots
        key = (item_id, size, int(meta["mtime_ns"]))
        with self._thumbs_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        with open_indexed(path, meta, roots) as fh:
            data = thumbnail_jpeg(fh, size)
        with self._thumbs_lock:
            self._thumbs[key] = data
            while len(self._thumbs) > THUMBNAIL_CACHE:
                self._thumbs.popitem(last=False)
        return data

    def full_image(self, item_id: str) -> tuple[bytes | BinaryIO, str]:
        """(bytes, or an open file the caller closes; media type)."""
        with self._use() as index:
            path, meta, roots = index.file_path(item_id), index.item(item_id), index.manifest.roots
        return viewable(open_indexed(path, meta, roots), meta["format"])

    def info(self) -> dict[str, Any]:
        with self._use() as index:
            data = index_info(index.dir)
            data["search"] = index.search_plan.to_json()  # GPU or CPU, chosen when this version opened
        data["max_pixels"] = self.config.max_pixels
        return data


def _search_index(c: ServiceConfig) -> SearchIndex:
    return SearchIndex(c.index_dir, model=c.model, device=c.device, use_gpu=c.use_gpu, config=c.search)


def _stamp(index_dir: Path) -> tuple[int, int, int] | None:
    try:
        st = manifest_path(index_dir).stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
