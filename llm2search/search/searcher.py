"""Open an index and search it: every shard searched, candidates re-ranked exactly on the stored
float16 vectors, merged into one top-k, joined with Parquet metadata."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import IndexCorruptError, InvalidQueryError, ItemNotFoundError
from .filters import SearchFilter, order_hits
from ..models.presets import spec_for_index
from ..store.manifest import Manifest, ShardInfo, read_manifest
from ..store.shard import open_shard_index, open_shard_vectors, read_shard_meta, read_tombstones
from ..store.vector_index import IndexConfig, set_nprobe, to_gpu_if_available

MAX_K = 10_000
NO_FILTER = SearchFilter()
# A filtered shard whose allowed rows hold at most this many floats is scanned exactly with numpy
# (cheaper than a faiss pass with a selector); bigger sets go through faiss with an IDSelector.
EXACT_SCAN_ELEMENTS = 1 << 22
EXACT_SCAN_CHUNK_ELEMENTS = 1 << 24  # rows x dim per chunk of a fallback exact scan (64 MB fp32)
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
    def __init__(self, index_dir: Path, info: ShardInfo, use_gpu: bool):
        self.info = info
        index = open_shard_index(index_dir, info)
        self.index = to_gpu_if_available(index) if use_gpu else index
        self.vectors = open_shard_vectors(index_dir, info)
        self.dead = np.zeros(info.count, dtype=bool)
        self.dead[read_tombstones(index_dir, info)] = True
        self.ivf = _cpu_ivf(self.index)  # None for Flat and for shards moved to a GPU
        self._dir = index_dir
        self._meta: pa.Table | None = None
        self._allowed: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def meta(self) -> pa.Table:
        if self._meta is None:
            self._meta = read_shard_meta(self._dir, self.info)
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

    def candidates(self, q: np.ndarray, want: int, need: int, flt: SearchFilter,
                   coarse: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Live rows whose exact scores decide this shard's part of the top-k: up to `want`
        candidates, and at least `need` whenever that many rows pass the filter. `coarse` is the
        query's (distances, lists) from the quantizer every shard shares, searched once."""
        n = self.info.count
        if not flt.restricts_rows:
            kk = min(n, want + self.info.deleted)
            if coarse is not None:
                _, ids = self.ivf.search_preassigned(q, kk, coarse[1], coarse[0])
            else:
                _, ids = self.index.search(q, kk)
            ids = ids[0][ids[0] >= 0]
            return ids[~self.dead[ids]]
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


class SearchIndex:
    """A read-only view of one committed version of an index."""

    def __init__(self, index_dir: str | Path, model: str | None = None, device: str | None = None,
                 config: IndexConfig = IndexConfig(), embedder: Any = None, use_gpu: bool = True):
        self.dir = Path(index_dir)
        self.config = config
        self.manifest: Manifest = read_manifest(self.dir)
        self._model_override = model
        self._device = device
        self._embedder = embedder
        self.shards = self._open_shards(use_gpu)
        self._by_name = {s.info.name: i for i, s in enumerate(self.shards)}

    def _open_shards(self, use_gpu: bool) -> list[_OpenShard]:
        for attempt in range(3):  # a writer may garbage-collect between manifest read and open
            try:
                shards = [_OpenShard(self.dir, s, use_gpu) for s in self.manifest.shards]
            except (FileNotFoundError, RuntimeError) as e:
                if attempt == 2:
                    raise IndexCorruptError(f"shard files of {self.dir} are missing: {e}") from e
                self.manifest = read_manifest(self.dir)
                continue
            for s in shards:
                set_nprobe(s.index, self.config.nprobe)
            return shards
        return []

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
        _check_k(k)
        if not isinstance(text, str) or not text.strip():
            raise InvalidQueryError("the query text is empty; give a sentence such as 'a dog on a beach'")
        return self.search_vector(self.embedder.embed_texts([text])[0], k, filter)

    def search_vector(self, vector: np.ndarray, k: int = 10,
                      filter: SearchFilter | None = None) -> list[Hit]:
        """Nearest items to a unit vector of the index's model (text, image or a mix), among the
        rows `filter` allows; they are the k best by score, in the filter's sort order."""
        _check_k(k)
        flt = filter if filter is not None else NO_FILTER
        q = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.manifest.dim:
            raise InvalidQueryError(f"vector has {q.shape[1]} dimensions; this index holds {self.manifest.dim}")
        if not np.all(np.isfinite(q)):
            raise InvalidQueryError("the query vector holds NaN or infinite values")
        exact = self.manifest.index_type == "flat"
        coarse = None if exact or flt.restricts_rows else self._coarse(q)
        scores, owners, rows = [], [], []
        for i, shard in enumerate(self.shards):
            if shard.info.count == 0:
                continue
            ids = shard.candidates(q, self._depth(shard, k, exact, flt), k, flt, coarse)
            if len(ids) == 0:
                continue
            # Exact scores on the stored vectors: re-ranks IVF-PQ candidates, same as Flat's own.
            order = np.sort(ids)
            exact_scores = np.asarray(shard.vectors[order], dtype=np.float32) @ q[0]
            scores.append(exact_scores)
            rows.append(order)
            owners.append(np.full(len(order), i))
        if not scores:
            return []
        all_scores = np.concatenate(scores)
        all_rows = np.concatenate(rows)
        all_owners = np.concatenate(owners)
        if flt.min_score is not None:
            keep = all_scores >= flt.min_score
            all_scores, all_rows, all_owners = all_scores[keep], all_rows[keep], all_owners[keep]
        top = np.argsort(-all_scores, kind="stable")[:k]
        hits = self._hits(all_scores[top], all_owners[top], all_rows[top])
        if flt.sort != "score" and hits:
            order = order_hits(np.array([h.score for h in hits]), np.array([h.taken for h in hits]), flt.sort)
            hits = [replace(hits[j], rank=rank) for rank, j in enumerate(order, start=1)]
        return hits

    def _depth(self, shard: _OpenShard, k: int, exact: bool, flt: SearchFilter) -> int:
        """Candidates asked of a shard: k from exact shards; from IVF-PQ shards the re-rank
        budget (rerank_factor x k in all) split by shard size, plus k each. A filtered search
        keeps rerank_factor x k per shard, so it never sees fewer candidates than a post-filter
        of the unfiltered search would."""
        if exact:
            return k
        if flt.restricts_rows:
            return k * self.config.rerank_factor
        budget = k * self.config.rerank_factor
        return int(np.ceil(budget * shard.info.count / max(1, self.manifest.total_rows))) + k

    def _coarse(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Every IVF-PQ shard is a copy of one trained index, so the coarse quantizer is searched
        once per query instead of once per shard (bench/search.py measured the saving)."""
        if not self.shards or any(s.ivf is None for s in self.shards):
            return None
        ivf = self.shards[0].ivf
        return ivf.quantizer.search(q, ivf.nprobe)

    def _hits(self, scores: np.ndarray, owners: np.ndarray, rows: np.ndarray) -> list[Hit]:
        metas: dict[int, list[dict[str, Any]]] = {}
        positions = np.zeros(len(rows), dtype=np.int64)
        for owner in np.unique(owners):  # one Parquet take per shard, not one slice per hit
            where = np.flatnonzero(owners == owner)
            metas[int(owner)] = self.shards[int(owner)].meta().take(pa.array(rows[where])).to_pylist()
            positions[where] = np.arange(len(where))
        hits = []
        for rank, (score, owner, row, pos) in enumerate(zip(scores, owners, rows, positions), start=1):
            shard = self.shards[int(owner)]
            m = metas[int(owner)][int(pos)]
            hits.append(Hit(
                rank=rank, score=float(score), path=m["path"], size=m["size"],
                mtime_ns=m["mtime_ns"], width=m["width"], height=m["height"], format=m["format"],
                exif_time=m["exif_time"], content_hash=m["content_hash"],
                shard=shard.info.name, row=int(row),
            ))
        return hits

    def _locate(self, item_id: str) -> tuple[int, int]:
        """(shard position, row) of a live item id `shard:row`; anything else is not found."""
        name, sep, row_text = str(item_id).rpartition(":")
        owner = self._by_name.get(name) if sep else None
        if owner is None or not row_text.isdigit() or len(row_text) > 12:
            raise ItemNotFoundError(f"no item {item_id!r} in this index (ids look like '000001-1a2b3c4d:17')")
        row = int(row_text)
        shard = self.shards[owner]
        if row >= shard.info.count or shard.dead[row]:
            raise ItemNotFoundError(f"no item {item_id!r} in this index (deleted or out of range)")
        return owner, row

    def item(self, item_id: str) -> dict[str, Any]:
        """Metadata of one indexed item by the id a Hit carries."""
        owner, row = self._locate(item_id)
        hit = self._hits(np.zeros(1), np.array([owner]), np.array([row]))[0]
        data = hit.to_json()
        del data["rank"], data["score"]
        return data

    def file_path(self, item_id: str) -> str:
        """The name to open an item's file with (exact bytes when the name is not UTF-8)."""
        from ..store.pathnames import from_stored

        owner, row = self._locate(item_id)
        m = self.shards[owner].meta().slice(row, 1).to_pylist()[0]
        return from_stored(m["path"], m.get("path_bytes"))

    def vector_by_id(self, item_id: str) -> np.ndarray:
        """The stored unit vector of an item (for "more like this")."""
        owner, row = self._locate(item_id)
        return np.asarray(self.shards[owner].vectors[row], dtype=np.float32)

    def vector_of(self, path: str) -> np.ndarray:
        """The stored vector of an indexed file (for "more like this")."""
        for shard in self.shards:
            paths = shard.meta().column("path").to_pylist()
            for row, p in enumerate(paths):
                if p == path and not shard.dead[row]:
                    return np.asarray(shard.vectors[row], dtype=np.float32)
        raise InvalidQueryError(f"{path} is not in this index")


def _cpu_ivf(index: Any) -> Any:
    import faiss

    try:
        return faiss.try_extract_index_ivf(index)
    except (RuntimeError, TypeError):  # a GPU index is not a CPU IndexIVF
        return None


def open_index(index_dir: str | Path, model: str | None = None, device: str | None = None) -> SearchIndex:
    """Open the committed index at `index_dir` for searching (memory-mapped; instant)."""
    return SearchIndex(index_dir, model=model, device=device)


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1 or k > MAX_K:
        raise InvalidQueryError(f"k must be between 1 and {MAX_K}, got {k!r}")
