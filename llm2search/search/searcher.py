"""Open an index and search it: every shard searched, candidates re-ranked exactly on the stored
float16 vectors, merged into one top-k, joined with Parquet metadata."""

from __future__ import annotations

import functools
import os
import re
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import pyarrow as pa

from ..errors import IndexClosedError, IndexCorruptError, InvalidQueryError, ItemNotFoundError
from .coarse import CoarseConfig, CoarseSearch
from .filters import SearchFilter
from .merge import Ranked, Scored, empty_scored, finish, keep_best, merge_candidates, top_exact
from ..models.presets import spec_for_index
from ..store.manifest import Manifest, ShardInfo, read_manifest
from ..store.readers import Lease, pin, pin_held, same_version
from ..store.verify import check_sizes
from ..store.meta_map import ShardMeta
from ..store.shard import open_shard_index, open_shard_meta, open_shard_vectors, read_tombstones
from ..store.vector_index import IndexConfig, coarse_quantizer, read_index, set_nprobe
from .gpu import GpuSearchConfig, SearchPlan, gpu_candidates, plan_search

MAX_K = 10_000
NO_FILTER = SearchFilter()
# A filtered shard whose allowed rows hold at most this many floats is scanned exactly with numpy
# (cheaper than a faiss pass with a selector); bigger sets go through faiss with an IDSelector.
EXACT_SCAN_ELEMENTS = 1 << 22
EXACT_SCAN_CHUNK_ELEMENTS = 1 << 24  # rows x dim per chunk of a fallback exact scan (64 MB fp32)
RERANK_CHUNK_ROWS = 512  # float16 rows gathered and decoded per step of the exact re-rank (2.5 MB)
# A re-rank of at most this many rows (one query's) decodes float16 with numpy on the calling
# thread; bigger ones (batches) use faiss's OpenMP decoder on a thread pool. Right after the text
# encoder, torch's OpenMP threads still spin and an OpenMP decode waits for them (bench/query.py
# times both).
NUMPY_DECODE_MAX_ROWS = 1024
T = TypeVar("T")
EXIF_FIELDS = ("camera_make", "camera_model", "lens", "gps_lat", "gps_lon", "gps_alt")
_ROW = re.compile(r"[0-9]{1,12}")
ALLOWED_CACHE = 32  # row selections kept per shard (the web page repeats the same filter)


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    path: str
    size: int
    mtime_ns: int
    width: int
    height: int
    format: str
    exif_time: int | None
    content_hash: str
    shard: str
    row: int
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    gps_alt: float | None = None

    @property
    def id(self) -> str:
        """Stable id of an indexed item within this index version: `shard:row`."""
        return f"{self.shard}:{self.row}"

    @property
    def taken(self) -> int:
        """When the photo was taken (epoch seconds): EXIF capture time, else the file's mtime."""
        return self.exif_time if self.exif_time is not None else self.mtime_ns // 1_000_000_000

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self), "taken": self.taken}


class _OpenShard:
    def __init__(self, index_dir: Path, info: ShardInfo, trained: Any | None):
        self.info = info
        # The shared coarse centroids belong to the trained index: keep it alive with the shard.
        self._trained = trained
        index = open_shard_index(index_dir, info, coarse_quantizer(trained) if trained is not None else None)
        self.index = index  # on the CPU: a GPU copy of the whole version is search/gpu.py's
        self.vectors = open_shard_vectors(index_dir, info)
        if self.vectors.shape[0] != info.count or self.vectors.dtype != np.float16:
            raise ValueError(f"shard {info.name}: vectors.npy holds {self.vectors.dtype} {self.vectors.shape} "
                             f"for {info.count} rows")
        if self.index.ntotal != info.count:
            raise ValueError(f"shard {info.name}: index.faiss holds {self.index.ntotal} vectors for {info.count} rows")
        self.dead = np.zeros(info.count, dtype=bool)
        self.dead[read_tombstones(index_dir, info)] = True
        self.ivf = _cpu_ivf(self.index)  # None for Flat
        self._dir = index_dir
        self._meta: ShardMeta | None = None
        self._allowed: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def meta(self) -> pa.Table:
        """The shard's metadata table (memory-mapped where the shard has meta.arrow): filters
        read its columns; hits read their rows through meta_rows."""
        return self._shard_meta().table

    def meta_rows(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """The metadata rows of `rows` only, as dicts (store/meta_map.py: no whole-column copy)."""
        return self._shard_meta().rows(rows)

    def _shard_meta(self) -> ShardMeta:
        if self._meta is None:
            try:
                meta = open_shard_meta(self._dir, self.info)
            except FileNotFoundError:
                raise
            except (pa.ArrowException, OSError) as e:
                raise IndexCorruptError(
                    f"the metadata of shard {self.info.name} cannot be read ({_first_line(e)}); run "
                    f"`llm2search verify --index {self._dir} --repair` to drop it") from e
            if meta.num_rows != self.info.count:
                raise IndexCorruptError(
                    f"shard {self.info.name} has {meta.num_rows} metadata rows for {self.info.count} "
                    f"vectors; run `llm2search verify --index {self._dir} --repair` to drop it")
            self._meta = meta
        return self._meta

    def allowed(self, flt: SearchFilter) -> tuple[np.ndarray, np.ndarray]:
        """(sorted live rows that pass `flt`, the same as a little-endian bitmap for faiss)."""
        key = flt.row_key()
        with self._lock:
            if key in self._allowed:
                self._allowed.move_to_end(key)
                return self._allowed[key]
        mask = flt.row_mask(self.meta()) & ~self.dead
        entry = (np.flatnonzero(mask), np.packbits(mask, bitorder="little"))
        with self._lock:
            self._allowed[key] = entry
            while len(self._allowed) > ALLOWED_CACHE:
                self._allowed.popitem(last=False)
        return entry

    def nearest(self, queries: np.ndarray, kk: int,
                coarse: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of each query's `kk` best rows by the index's own scores (PQ estimates
        for IVF-PQ, exact for Flat); tombstoned and missing rows score -inf with row -1. `coarse`
        is the queries' (distances, lists) from the quantizer every shard shares, searched once."""
        kk = min(self.info.count, kk + self.info.deleted)
        if coarse is not None and self.ivf is not None:
            scores, rows = self.ivf.search_preassigned(queries, kk, coarse[1], coarse[0])
        else:
            scores, rows = self.index.search(queries, kk)
        gone = (rows < 0) | self.dead[np.maximum(rows, 0)]
        scores[gone] = -np.inf
        rows[gone] = -1
        return scores, rows

    def filtered_candidates(self, q: np.ndarray, want: int, need: int, flt: SearchFilter) -> np.ndarray:
        """Live rows that pass `flt` whose exact scores decide this shard's part of the top-k: up
        to `want` candidates, and at least `need` whenever that many rows pass the filter."""
        rows, bitmap = self.allowed(flt)
        if len(rows) * q.shape[1] <= EXACT_SCAN_ELEMENTS or len(rows) <= want:
            return rows  # every allowed row is re-ranked exactly: nothing can be missed
        found = self._search_selected(q, min(want, len(rows)), bitmap)
        # An IVF probe can hold too few allowed rows under a narrow filter, and GPU indexes take
        # no selector: then scan the allowed rows exactly, so a filter never shrinks the answer.
        if found is None or len(found) < min(need, len(rows)):
            return self._exact_top(q, rows, want)
        return found

    def _search_selected(self, q: np.ndarray, kk: int, bitmap: np.ndarray) -> np.ndarray | None:
        import faiss

        sel = faiss.IDSelectorBitmap(self.info.count, faiss.swig_ptr(bitmap))
        ivf = faiss.try_extract_index_ivf(self.index)
        params = (faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nprobe) if ivf is not None
                  else faiss.SearchParameters(sel=sel))
        try:
            _, ids = self.index.search(q, kk, params=params)
        except (RuntimeError, TypeError, AttributeError):  # an index type without selector support
            return None
        ids = ids[0][ids[0] >= 0]
        return ids[~self.dead[ids]]

    def _exact_top(self, q: np.ndarray, rows: np.ndarray, want: int) -> np.ndarray:
        chunk = max(1, EXACT_SCAN_CHUNK_ELEMENTS // q.shape[1])
        best_rows, best_scores = [], []
        for start in range(0, len(rows), chunk):
            r = rows[start:start + chunk]
            s = np.asarray(self.vectors[r], dtype=np.float32) @ q[0]
            if len(s) > want:
                keep = np.argpartition(-s, want - 1)[:want]
                r, s = r[keep], s[keep]
            best_rows.append(r)
            best_scores.append(s)
        r, s = np.concatenate(best_rows), np.concatenate(best_scores)
        if len(s) > want:
            r = r[np.argpartition(-s, want - 1)[:want]]
        return r


def _pinned(method: Callable[..., T]) -> Callable[..., T]:
    """A public read of a SearchIndex: refused once closed; and where the version's files
    vanished under a reader that holds no lease, answered again from the newest version."""

    @functools.wraps(method)
    def answer(self: "SearchIndex", *args: Any, **kwargs: Any) -> T:
        self._check_open()
        try:
            return method(self, *args, **kwargs)
        except FileNotFoundError as e:
            if self._lease is not None and self._lease.held or self._fixed:
                raise IndexCorruptError(
                    f"{e.filename or e} is missing from the index at {self.dir} although this "
                    f"reader holds a lease on it; run `llm2search verify --index {self.dir}`") from e
            self.refresh()
            return method(self, *args, **kwargs)

    return answer


class SearchIndex:
    """A read-only view of one committed version of an index. It pins that version (a reader
    lease, store/readers.py): writers may commit, compact, retrain and collect garbage meanwhile,
    and it keeps answering from its own version until `refresh` or `close`. Use it as a context
    manager, or call `close`, to let the writer delete files only this version still uses.

    A shard-group view (Ray Serve's groups and router) opens `version`, a committed manifest that
    another reader still pins (so its files are there), instead of the newest one, and only the
    shards named in `shards` (none: the router's view, which keeps the coarse quantizer). Its
    shard positions are its own, in manifest order, so ties break as in a view of every shard."""

    def __init__(self, index_dir: str | Path, model: str | None = None, device: str | None = None,
                 config: IndexConfig = IndexConfig(), embedder: Any = None, use_gpu: bool = True,
                 gpu: GpuSearchConfig = GpuSearchConfig(), version: Manifest | None = None,
                 shards: Sequence[str] | None = None, coarse: CoarseConfig = CoarseConfig()):
        self.dir = Path(index_dir)
        self._version = version
        self._fixed = version is not None  # never moves to a newer version
        self._wanted = None if shards is None else frozenset(shards)
        self.config = config
        self._model_override = model
        self._device = device
        self._embedder = embedder
        self._use_gpu = use_gpu
        self._gpu_config = gpu
        self._coarse_config = coarse
        self._gpu: Any = None  # the GPU copy answering unfiltered searches (search/gpu.py), if any
        self._lease: Lease | None = None
        self._release = None  # releases the lease when this object is garbage-collected
        self._open_version()
        self._fp16 = _fp16_decoder(self.manifest.dim)

    def _open_version(self) -> None:
        """Pin the newest version and open its shards. A reader without a lease (the index
        directory is read-only to it) can see a version's files deleted by a writer elsewhere
        between reading the manifest and opening them: then it pins the newer version."""
        for attempt in range(3):
            lease = pin(self.dir) if self._version is None else pin_held(self.dir, self._version)
            try:
                chosen = self._chosen(lease.manifest)
                check_sizes(self.dir, replace(lease.manifest, shards=chosen))
                self.manifest: Manifest = lease.manifest
                self._trained = self._read_trained()
                self._quantizer = coarse_quantizer(self._trained) if self._trained is not None else None
                self._coarse = None if self._quantizer is None else CoarseSearch(
                    self._quantizer, self.config.nprobe, self._coarse_config,
                    key=(str(self.dir.resolve()), self.manifest.trained["file"]))
                self.shards = [_OpenShard(self.dir, s, self._trained) for s in chosen]
            except FileNotFoundError as e:
                lease.close()
                if attempt == 2 or lease.held or self._fixed:
                    raise IndexCorruptError(
                        f"{e.filename or e} is missing from the index at {self.dir}; run "
                        f"`llm2search verify --index {self.dir}` to see what else is, and "
                        "`--repair` to drop what cannot be read") from e
                continue
            except (RuntimeError, ValueError, OSError) as e:
                lease.close()
                raise IndexCorruptError(
                    f"the index at {self.dir} cannot be read ({_first_line(e)}); run "
                    f"`llm2search verify --index {self.dir}` and `--repair` to drop what is damaged") from e
            except BaseException:
                lease.close()
                raise
            for s in self.shards:
                set_nprobe(s.index, self.config.nprobe)
            self._by_name = {s.info.name: i for i, s in enumerate(self.shards)}
            self._close_gpu()  # a refresh: free the old copy first, so the new one can fit
            self.search_plan: SearchPlan
            self.search_plan, self._gpu = plan_search(self.manifest, self.shards, self._trained, self.config.nprobe,
                                                      self._use_gpu, self._gpu_config)
            self._lease = lease
            self._release = weakref.finalize(self, lease.close)
            return

    def _chosen(self, manifest: Manifest) -> tuple[ShardInfo, ...]:
        if self._wanted is None:
            return manifest.shards
        unknown = self._wanted - {s.name for s in manifest.shards}
        if unknown:
            raise InvalidQueryError(f"generation {manifest.generation} of {self.dir} has no shard "
                                    f"{', '.join(sorted(unknown))}")
        return tuple(s for s in manifest.shards if s.name in self._wanted)

    def _read_trained(self) -> Any | None:
        """The trained IVF-PQ template, whose coarse centroids every IVF-PQ shard shares."""
        if self.manifest.index_type != "ivfpq" or not self.manifest.trained:
            return None
        return read_index(self.dir / self.manifest.trained["file"], mmap=False)

    @property
    def generation(self) -> int:
        """The manifest generation this reader answers from."""
        return self.manifest.generation

    def refresh(self) -> bool:
        """Move to the newest committed version if there is one (True when it moved), releasing
        the old version's files. Not meant to run while another thread searches this object:
        the server opens a new SearchIndex per version instead. A view of a given version never
        moves."""
        self._check_open()
        if self._fixed or same_version(read_manifest(self.dir), self.manifest):
            return False
        old = self._release
        self._open_version()
        if old is not None:
            old()
        return True

    def close(self) -> None:
        """Release this version's files (idempotent). Searching a closed index is an error."""
        if self._release is not None:
            self._release()
        self._lease = None
        self.shards = []
        self._close_gpu()

    def _close_gpu(self) -> None:
        if self._gpu is not None:
            self._gpu.close()
            self._gpu = None

    @property
    def closed(self) -> bool:
        return self._lease is None

    def __enter__(self) -> "SearchIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._lease is None:
            raise IndexClosedError(f"this SearchIndex of {self.dir} was closed; open the index again")

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from ..models.embedder import Embedder

            spec = spec_for_index(self.manifest.model, self._model_override)
            self._embedder = Embedder(spec, self._device)
        return self._embedder

    @property
    def count(self) -> int:
        return self.manifest.count

    def search(self, text: str, k: int = 10, filter: SearchFilter | None = None) -> list[Hit]:
        """Photos that best match `text` (English, Chinese, or any language the model reads)."""
        check_k(k)
        if not isinstance(text, str) or not text.strip():
            raise InvalidQueryError("the query text is empty; give a sentence such as 'a dog on a beach'")
        return self.search_vector(self.embedder.embed_texts([text])[0], k, filter)

    def search_vector(self, vector: np.ndarray, k: int = 10,
                      filter: SearchFilter | None = None) -> list[Hit]:
        """Nearest items to a unit vector of the index's model (text, image or a mix), among the
        rows `filter` allows; they are the k best by score, in the filter's sort order."""
        return self.search_vectors(np.asarray(vector).reshape(1, -1), k, filter)[0]

    @_pinned
    def search_vectors(self, vectors: np.ndarray, k: int = 10,
                       filter: SearchFilter | None = None) -> list[list[Hit]]:
        """search_vector for many queries at once (an (n, dim) array): one coarse search, one
        pass over each shard and one re-rank for the whole batch, which is several times the
        throughput of n single searches (bench/search.py)."""
        check_k(k)
        flt = filter if filter is not None else NO_FILTER
        queries = self.check_queries(vectors)
        if flt.restricts_rows:
            return [self._search_filtered(q.reshape(1, -1), k, flt) for q in queries]
        return self._finish(*self._top_rows(queries, k), flt)

    def check_queries(self, vectors: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(vectors, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.manifest.dim:
            raise InvalidQueryError(f"query vectors have shape {q.shape}; this index holds "
                                    f"{self.manifest.dim}-d vectors, so pass (n, {self.manifest.dim})")
        if not np.all(np.isfinite(q)):
            raise InvalidQueryError("a query vector holds NaN or infinite values")
        return q

    def _top_rows(self, queries: np.ndarray, k: int) -> Ranked:
        """Each query's k best live rows by exact score on the stored vectors: (scores, shard
        positions, rows), each (n, <= k), padded with -inf / -1 where the index has fewer rows."""
        return merge_candidates([self.scored_candidates(queries, k)], self.rerank_depth(k), k)

    def rerank_depth(self, k: int) -> int:
        """Candidates scored exactly: k from Flat (its scores are exact already), rerank_factor
        x k from IVF-PQ (over all shards unfiltered, per shard when filtered)."""
        return k if self.manifest.index_type == "flat" else k * self.config.rerank_factor

    # -- shard-group primitives: a router merging the answers of several SearchIndex views
    # -- (each opened on some shards of one version) gets what one view of all shards returns
    def scored_candidates(self, queries: np.ndarray, k: int,
                          coarse: tuple[np.ndarray, np.ndarray] | None = None) -> Scored:
        """The candidates a search for the top k re-ranks, from this view's shards, with their
        exact scores: each query's `rerank_depth(k)` best by index score. `coarse` is
        `coarse(queries)` of any view of this version (the router's); None: searched here."""
        estimate, owners, rows = self._nearest(queries, k, coarse)
        return Scored(estimate, self._exact_scores(queries, owners, rows), owners, rows)

    def filtered_top(self, q: np.ndarray, k: int, flt: SearchFilter) -> Ranked:
        """One query's k best rows of this view's shards among those `flt` allows, by exact
        score: each shard's candidates (rerank_factor x k per shard, or every allowed row when
        that is cheaper), re-ranked exactly."""
        want = self.rerank_depth(k)
        owners, rows = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for i, shard in enumerate(self.shards):
            if shard.info.count:
                ids = shard.filtered_candidates(q, want, k, flt)
                rows.append(ids)
                owners.append(np.full(len(ids), i, dtype=np.int64))
        owner_row, row_row = np.concatenate(owners)[None, :], np.concatenate(rows)[None, :]
        return top_exact(Ranked(self._exact_scores(q, owner_row, row_row), owner_row, row_row), k)

    def join_hits(self, scores: np.ndarray, owners: np.ndarray, rows: np.ndarray, ranks: np.ndarray) -> list[Hit]:
        """Hits for parallel arrays of (score, shard position, row, rank), metadata joined."""
        return self._hits(scores, owners, rows, ranks)

    def _candidates(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows a search for the top k scores exactly (see _nearest)."""
        return self._nearest(queries, k, None)

    def _nearest(self, queries: np.ndarray, k: int,
                 coarse: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(index scores, shard positions, rows) to score exactly, (n, depth) each, unordered,
        -inf / -1 for padding. The index scores are PQ estimates for IVF-PQ, exact for Flat:
        each shard's exact top k. IVF-PQ: each shard's best `rerank_factor x k` by PQ estimate;
        all shards copy one trained quantizer, so their estimates are comparable and the best
        `rerank_factor x k` over all shards are kept, whatever the shard count."""
        live = [i for i, s in enumerate(self.shards) if s.info.count]
        if not live:
            empty = empty_scored(len(queries))
            return empty.estimate, empty.owners, empty.rows
        depth = self.rerank_depth(k)
        if self._gpu is not None:
            found = gpu_candidates(self._gpu, self.search_plan, queries, k, depth)
            if found is not None:
                return found
        if coarse is None:
            coarse = self.coarse(queries)
        found = [self.shards[i].nearest(queries, depth, coarse) for i in live]
        estimate = np.concatenate([f[0] for f in found], axis=1)
        rows = np.concatenate([f[1] for f in found], axis=1)
        owners = np.concatenate([np.full(f[1].shape, i, dtype=np.int64) for i, f in zip(live, found)], axis=1)
        kept = keep_best(Scored(estimate, estimate, owners, rows), depth)
        return kept.estimate, kept.owners, kept.rows

    def _rerank(self, queries: np.ndarray, owners: np.ndarray, rows: np.ndarray, k: int) -> Ranked:
        """The k best candidates per query by exact score: (scores, owners, rows)."""
        return top_exact(Ranked(self._exact_scores(queries, owners, rows), owners, rows), k)

    def _exact_scores(self, queries: np.ndarray, owners: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Inner products of each query with its candidate rows' stored float16 vectors (-inf
        for row -1, and for a row whose stored vector is not finite), gathered from the
        memory-mapped vector files in small chunks (decoded floats stay in cache), chunks spread
        over threads: numpy and faiss release the GIL."""
        scores = np.full(rows.shape, -np.inf, dtype=np.float32)
        tasks = []
        for owner in np.unique(owners[rows >= 0]):
            q_at, c_at = np.nonzero((owners == owner) & (rows >= 0))
            vectors = self.shards[int(owner)].vectors
            shard_rows = rows[q_at, c_at]
            for start in range(0, len(q_at), RERANK_CHUNK_ROWS):
                part = slice(start, start + RERANK_CHUNK_ROWS)
                tasks.append((vectors, shard_rows[part], q_at[part], c_at[part]))

        def score(task: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], batched: bool) -> None:
            vectors, chunk_rows, q_at, c_at = task
            gathered = np.take(vectors, chunk_rows, axis=0)
            v = self._fp16.decode(gathered.view(np.uint8)) if batched else gathered.astype(np.float32)
            scores[q_at, c_at] = np.einsum("ij,ij->i", v, queries[q_at])

        if sum(len(t[1]) for t in tasks) > NUMPY_DECODE_MAX_ROWS:
            list(_rerank_pool().map(lambda task: score(task, True), tasks))
        else:
            for task in tasks:
                score(task, False)
        bad = ~np.isfinite(scores) & (rows >= 0)
        if bad.any():  # a damaged vector file: those rows are left out, never served as NaN
            scores[bad] = -np.inf
            _warn_damaged(self.dir, {self.shards[int(o)].info.name for o in owners[bad]})
        return scores

    def _search_filtered(self, q: np.ndarray, k: int, flt: SearchFilter) -> list[Hit]:
        """One query among the rows `flt` allows (see filtered_top)."""
        return self._finish(*self.filtered_top(q, k, flt), flt)[0]

    def _finish(self, scores: np.ndarray, owners: np.ndarray, rows: np.ndarray,
                flt: SearchFilter) -> list[list[Hit]]:
        """Per query: drop padding and scores under min_score, join metadata, apply the sort."""
        return finish(Ranked(scores, owners, rows), flt, self._hits)

    def coarse(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(distances, lists) of the queries' nprobe nearest coarse centroids, or None for Flat.
        Every IVF-PQ shard is a copy of one trained index, so the coarse quantizer is searched
        once per query instead of once per shard (bench/search.py measured the saving); single
        searches over many lists take a low-rank preselection first (search/coarse.py)."""
        if self._coarse is None or any(s.ivf is None for s in self.shards):
            return None
        return self._coarse.search(queries)

    def warm_coarse(self, timeout: float | None = None) -> bool:
        """Build the low-rank copy of the centroids now, if single searches use one at this many
        lists (search/coarse.py), and wait for it: True when they take it (False: none, or Flat)."""
        self._check_open()
        return self._coarse is not None and self._coarse.wait(timeout)

    def _hits(self, scores: np.ndarray, owners: np.ndarray, rows: np.ndarray,
              ranks: np.ndarray | None = None) -> list[Hit]:
        """Hits for parallel arrays of (score, shard position, row[, rank]), metadata joined."""
        metas: dict[int, list[dict[str, Any]]] = {}
        positions = np.zeros(len(rows), dtype=np.int64)
        for owner in np.unique(owners):  # one Parquet take per shard, not one slice per hit
            where = np.flatnonzero(owners == owner)
            metas[int(owner)] = self.shards[int(owner)].meta_rows(rows[where])
            positions[where] = np.arange(len(where))
        if ranks is None:
            ranks = np.arange(1, len(rows) + 1)
        hits = []
        for rank, score, owner, row, pos in zip(ranks, scores, owners, rows, positions):
            shard = self.shards[int(owner)]
            m = metas[int(owner)][int(pos)]
            hits.append(Hit(
                rank=int(rank), score=float(score), path=m["path"], size=m["size"],
                mtime_ns=m["mtime_ns"], width=m["width"], height=m["height"], format=m["format"],
                exif_time=m["exif_time"], content_hash=m["content_hash"],
                shard=shard.info.name, row=int(row), **{f: m.get(f) for f in EXIF_FIELDS},
            ))
        return hits

    def hits_at(self, owners: np.ndarray, rows: np.ndarray) -> list[Hit]:
        """Hits (score 0, ranked in order) for parallel arrays of shard positions and rows."""
        return self._hits(np.zeros(len(rows)), np.asarray(owners, dtype=np.int64), np.asarray(rows, dtype=np.int64))

    def vector_at(self, owner: int, row: int) -> np.ndarray:
        """The stored unit vector of row `row` of the shard at position `owner`."""
        return np.asarray(self.shards[owner].vectors[row], dtype=np.float32)

    def _locate(self, item_id: str) -> tuple[int, int]:
        """(shard position, row) of a live item id `shard:row`; anything else is not found."""
        name, sep, row_text = str(item_id).rpartition(":")
        owner = self._by_name.get(name) if sep else None
        if owner is None or not _ROW.fullmatch(row_text):  # ASCII digits: '١' or '²' are no row
            raise ItemNotFoundError(f"no item {item_id!r} in this index (ids look like '000001-1a2b3c4d:17')")
        row = int(row_text)
        shard = self.shards[owner]
        if row >= shard.info.count or shard.dead[row]:
            raise ItemNotFoundError(f"no item {item_id!r} in this index (deleted or out of range)")
        return owner, row

    @_pinned
    def item(self, item_id: str) -> dict[str, Any]:
        """Metadata of one indexed item by the id a Hit carries."""
        owner, row = self._locate(item_id)
        hit = self._hits(np.zeros(1), np.array([owner]), np.array([row]))[0]
        data = hit.to_json()
        del data["rank"], data["score"]
        return data

    @_pinned
    def file_path(self, item_id: str) -> str:
        """The name to open an item's file with (exact bytes when the name is not UTF-8)."""
        from ..store.pathnames import from_stored

        owner, row = self._locate(item_id)
        m = self.shards[owner].meta().slice(row, 1).to_pylist()[0]
        return from_stored(m["path"], m.get("path_bytes"))

    @_pinned
    def vector_by_id(self, item_id: str) -> np.ndarray:
        """The stored unit vector of an item (for "more like this")."""
        owner, row = self._locate(item_id)
        return np.asarray(self.shards[owner].vectors[row], dtype=np.float32)

    @_pinned
    def vector_of(self, path: str) -> np.ndarray:
        """The stored vector of an indexed file (for "more like this"), by its stored path."""
        import pyarrow.compute as pc

        for shard in self.shards:
            match = pc.equal(shard.meta().column("path"), pa.scalar(path, pa.string()))
            rows = np.flatnonzero(pc.fill_null(match, False).to_numpy(zero_copy_only=False))
            live = rows[~shard.dead[rows]]
            if len(live):
                return np.asarray(shard.vectors[live[0]], dtype=np.float32)
        raise InvalidQueryError(f"{path} is not in this index")


def _warn_damaged(index_dir: Path, shards: set[str]) -> None:
    import warnings

    warnings.warn(f"shard(s) {', '.join(sorted(shards))} of {index_dir} hold vectors that are not finite; "
                  f"their rows are left out of results. Run `llm2search verify --index {index_dir} --repair`",
                  RuntimeWarning, stacklevel=3)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _rerank_pool() -> ThreadPoolExecutor:
    """Threads for the exact re-rank of batched searches, one per core (at most 4)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="llm2search-rerank")
        return _POOL


def _fp16_decoder(dim: int) -> Any:
    """faiss's float16 -> float32 decoder: faster than numpy's astype for batches (OpenMP)."""
    import faiss

    return faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)


def _cpu_ivf(index: Any) -> Any:
    import faiss

    try:
        return faiss.try_extract_index_ivf(index)
    except (RuntimeError, TypeError):  # a GPU index is not a CPU IndexIVF
        return None


def open_index(index_dir: str | Path, model: str | None = None, device: str | None = None,
               coarse: CoarseConfig = CoarseConfig()) -> SearchIndex:
    """Open the committed index at `index_dir` for searching (memory-mapped; instant). The
    version opened stays readable until the index is closed (`with open_index(...) as index`).
    `coarse` says how single searches find their lists (search/coarse.py)."""
    return SearchIndex(index_dir, model=model, device=device, coarse=coarse)


def check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1 or k > MAX_K:
        raise InvalidQueryError(f"k must be between 1 and {MAX_K}, got {k!r}")
