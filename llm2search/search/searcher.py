"""Open an index and search it: every shard searched, candidates re-ranked exactly on the stored
float16 vectors, merged into one top-k, joined with Parquet metadata."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import IndexCorruptError, InvalidQueryError
from ..models.presets import spec_for_index
from ..store.manifest import Manifest, ShardInfo, read_manifest
from ..store.shard import open_shard_index, open_shard_vectors, read_shard_meta, read_tombstones
from ..store.vector_index import IndexConfig, set_nprobe, to_gpu_if_available

MAX_K = 10_000


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

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self)}


class _OpenShard:
    def __init__(self, index_dir: Path, info: ShardInfo, use_gpu: bool):
        self.info = info
        index = open_shard_index(index_dir, info)
        self.index = to_gpu_if_available(index) if use_gpu else index
        self.vectors = open_shard_vectors(index_dir, info)
        self.dead = np.zeros(info.count, dtype=bool)
        self.dead[read_tombstones(index_dir, info)] = True
        self._dir = index_dir
        self._meta: pa.Table | None = None

    def meta(self) -> pa.Table:
        if self._meta is None:
            self._meta = read_shard_meta(self._dir, self.info)
        return self._meta


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

    def search(self, text: str, k: int = 10) -> list[Hit]:
        """Photos that best match `text` (English, Chinese, or any language the model reads)."""
        _check_k(k)
        if not isinstance(text, str) or not text.strip():
            raise InvalidQueryError("the query text is empty; give a sentence such as 'a dog on a beach'")
        return self.search_vector(self.embedder.embed_texts([text])[0], k)

    def search_vector(self, vector: np.ndarray, k: int = 10) -> list[Hit]:
        """Nearest items to a unit vector of the index's model (text, image or a mix)."""
        _check_k(k)
        q = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.manifest.dim:
            raise InvalidQueryError(f"vector has {q.shape[1]} dimensions; this index holds {self.manifest.dim}")
        exact = self.manifest.index_type == "flat"
        want = k if exact else k * self.config.rerank_factor
        scores, owners, rows = [], [], []
        for i, shard in enumerate(self.shards):
            n = shard.info.count
            if n == 0:
                continue
            kk = min(n, want + shard.info.deleted)
            _, ids = shard.index.search(q, kk)
            ids = ids[0][ids[0] >= 0]
            ids = ids[~shard.dead[ids]]
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
        top = np.argsort(-all_scores, kind="stable")[:k]
        return self._hits(all_scores[top], all_owners[top], all_rows[top])

    def _hits(self, scores: np.ndarray, owners: np.ndarray, rows: np.ndarray) -> list[Hit]:
        hits = []
        for rank, (score, owner, row) in enumerate(zip(scores, owners, rows), start=1):
            shard = self.shards[int(owner)]
            m = shard.meta().slice(int(row), 1).to_pylist()[0]
            hits.append(Hit(
                rank=rank, score=float(score), path=m["path"], size=m["size"],
                mtime_ns=m["mtime_ns"], width=m["width"], height=m["height"], format=m["format"],
                exif_time=m["exif_time"], content_hash=m["content_hash"],
                shard=shard.info.name, row=int(row),
            ))
        return hits

    def vector_of(self, path: str) -> np.ndarray:
        """The stored vector of an indexed file (for "more like this")."""
        for shard in self.shards:
            paths = shard.meta().column("path").to_pylist()
            for row, p in enumerate(paths):
                if p == path and not shard.dead[row]:
                    return np.asarray(shard.vectors[row], dtype=np.float32)
        raise InvalidQueryError(f"{path} is not in this index")


def open_index(index_dir: str | Path, model: str | None = None, device: str | None = None) -> SearchIndex:
    """Open the committed index at `index_dir` for searching (memory-mapped; instant)."""
    return SearchIndex(index_dir, model=model, device=device)


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1 or k > MAX_K:
        raise InvalidQueryError(f"k must be between 1 and {MAX_K}, got {k!r}")
