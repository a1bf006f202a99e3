"""Text-to-image and image-to-text Recall@K, by exact search and through the product's index.

Images are decoded and preprocessed as the indexer does and embedded with the same model; the
"index" side writes the vectors into a real store (IndexWriter, IVF-PQ or Flat as asked) and
queries it with SearchIndex.search_vectors (search_vector for a batch), so its loss against
exact search is the loss a user of the index sees. Image-to-text uses a second store that holds the caption vectors.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..models.preprocess import ImageDecodeError, decode_image
from ..store.vector_index import IndexConfig
from .datasets import Dataset

KS = (1, 5, 10)
EVAL_BATCH = 1000  # queries per SearchIndex.search_vectors call
INDEX_TYPES = ("ivfpq", "flat", "auto")


@dataclass(frozen=True)
class EvalConfig:
    index_type: str = "ivfpq"  # ivfpq: force IVF-PQ at any size; flat; auto: what `index` would pick
    batch_size: int = 32
    index: IndexConfig = field(default_factory=IndexConfig)
    progress: bool = True


@dataclass
class EvalReport:
    dataset: str
    model: str
    images: int
    captions: int
    skipped_images: int  # could not be decoded (with their captions)
    index: dict[str, str]  # direction -> the faiss factory its index side used
    recall: dict[str, dict[str, dict[str, float]]]  # direction -> exact|index -> "R@K" -> value

    def loss(self, direction: str, k: int = 10) -> float:
        r = self.recall[direction]
        return r["exact"][f"R@{k}"] - r["index"][f"R@{k}"]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "loss_R@10": {d: self.loss(d) for d in self.recall}}

    def table(self) -> str:
        lines = [f"| direction | search | {' | '.join(f'R@{k}' for k in KS)} |",
                 "|---|---|" + "---|" * len(KS)]
        for direction, rows in self.recall.items():
            for how, values in rows.items():
                label = "exact" if how == "exact" else f"index `{self.index[direction]}`"
                cells = " | ".join(f"{100 * values[f'R@{k}']:.1f}" for k in KS)
                lines.append(f"| {direction} | {label} | {cells} |")
        return "\n".join(lines)


def evaluate(ds: Dataset, embedder: Any, model_identity: dict[str, Any], model_name: str,
             config: EvalConfig = EvalConfig()) -> EvalReport:
    """Recall@1/5/10 both ways, exact and through the index."""
    image_vectors, kept = embed_images(ds, embedder, config)
    ds, skipped = _drop_images(ds, kept)
    text_vectors = embed_texts(ds.captions, embedder, config)
    relevance = np.zeros((len(ds.captions), len(ds.images)), dtype=bool)
    for c, targets in enumerate(ds.relevant):
        relevance[c, list(targets)] = True
    index_cfg = _index_config(config)
    recall: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="llm2search-eval-") as tmp:
        image_store, image_factory = _build_store(Path(tmp) / "images", image_vectors, model_identity, index_cfg)
        text_store, text_factory = _build_store(Path(tmp) / "captions", text_vectors, model_identity, index_cfg)
        t2i_exact = _top_exact(text_vectors, image_vectors)
        t2i_index = _top_index(image_store, text_vectors, index_cfg)
        i2t_exact = _top_exact(image_vectors, text_vectors)
        i2t_index = _top_index(text_store, image_vectors, index_cfg)
    recall["text→image"] = {"exact": recall_at(t2i_exact, relevance), "index": recall_at(t2i_index, relevance)}
    recall["image→text"] = {"exact": recall_at(i2t_exact, relevance.T), "index": recall_at(i2t_index, relevance.T)}
    factories = {"text→image": image_factory, "image→text": text_factory}
    return EvalReport(ds.name, model_name, len(ds.images), len(ds.captions), skipped, factories, recall)


def recall_at(top: np.ndarray, relevance: np.ndarray) -> dict[str, float]:
    """top[q] = result ids best first (-1 = none); a query counts at K when any relevant item is
    among its first K results. Queries with nothing relevant are left out."""
    has = relevance.any(axis=1)
    safe = np.where(top >= 0, top, 0)
    hit = np.take_along_axis(relevance, safe, axis=1) & (top >= 0)
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), top.shape[1])
    return {f"R@{k}": float((first[has] < k).mean()) if has.any() else 0.0 for k in KS}


def embed_images(ds: Dataset, embedder: Any, config: EvalConfig) -> tuple[np.ndarray, list[int]]:
    """Unit vectors of the images that decode; returns them and the indices that did."""
    preprocess = embedder.spec.preprocess
    vectors, kept, batch, batch_ids = [], [], [], []
    bar = _progress(len(ds.images), "images", config.progress)
    for i, ref in enumerate(ds.images):
        try:
            batch.append(decode_image(ref.read(), preprocess).pixels)
            batch_ids.append(i)
        except (OSError, ImageDecodeError) as e:
            print(f"skipping {ref.id}: {e}", file=sys.stderr)
        if len(batch) >= config.batch_size or (i == len(ds.images) - 1 and batch):
            vectors.append(embedder.embed_pixels(np.stack(batch)))
            kept += batch_ids
            bar(len(batch))
            batch, batch_ids = [], []
    bar(0, close=True)
    if not vectors:
        from ..errors import InputPathError

        raise InputPathError(f"no image of {ds.name} could be decoded")
    return np.concatenate(vectors).astype(np.float32), kept


def embed_texts(texts: list[str], embedder: Any, config: EvalConfig) -> np.ndarray:
    out = []
    bar = _progress(len(texts), "captions", config.progress)
    for s in range(0, len(texts), config.batch_size):
        out.append(embedder.embed_texts(texts[s:s + config.batch_size]))
        bar(len(out[-1]))
    bar(0, close=True)
    return np.concatenate(out).astype(np.float32)


def _drop_images(ds: Dataset, kept: list[int]) -> tuple[Dataset, int]:
    if len(kept) == len(ds.images):
        return ds, 0
    new_index = {old: new for new, old in enumerate(kept)}
    captions, relevant = [], []
    for text, targets in zip(ds.captions, ds.relevant):
        t = tuple(new_index[i] for i in targets if i in new_index)
        if t:
            captions.append(text)
            relevant.append(t)
    images = [ds.images[i] for i in kept]
    return replace(ds, images=images, captions=captions, relevant=relevant), len(ds.images) - len(kept)


def _index_config(config: EvalConfig) -> IndexConfig:
    if config.index_type == "ivfpq":
        return replace(config.index, ivf_threshold=1)
    if config.index_type == "flat":
        return replace(config.index, ivf_threshold=2**62)
    return config.index


def _build_store(path: Path, vectors: np.ndarray, identity: dict[str, Any],
                 cfg: IndexConfig) -> tuple[Path, str]:
    """Write `vectors` (ids = row numbers) as one shard of a real index, trained as `cfg` says."""
    import pyarrow as pa

    from ..store.shard import META_SCHEMA, ShardData
    from ..store.writer import IndexWriter

    n = len(vectors)
    known = {"path": [f"eval:{i}" for i in range(n)], "deleted": [False] * n}
    meta = pa.table({f.name: pa.array(known[f.name], f.type) if f.name in known else pa.nulls(n, f.type)
                     for f in META_SCHEMA}, schema=META_SCHEMA)
    with IndexWriter(path, identity, vectors.shape[1], cfg) as writer:
        writer.commit(ShardData(vectors, meta))
        writer.maybe_train()
        return path, writer.manifest.factory


def _top_exact(queries: np.ndarray, items: np.ndarray, k: int = max(KS)) -> np.ndarray:
    scores = queries @ items.T
    k = min(k, items.shape[0])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _top_index(store: Path, queries: np.ndarray, cfg: IndexConfig, k: int = max(KS)) -> np.ndarray:
    from ..search.searcher import SearchIndex

    index = SearchIndex(store, config=cfg, embedder=object(), use_gpu=False)
    offsets = dict(zip((s.info.name for s in index.shards),
                       np.cumsum([0] + [s.info.count for s in index.shards]).tolist()))
    k = min(k, index.count)
    top = np.full((len(queries), max(KS)), -1, dtype=np.int64)
    for start in range(0, len(queries), EVAL_BATCH):  # batched: one pass over the shards per batch
        batch = index.search_vectors(queries[start:start + EVAL_BATCH], k)
        for q, hits in enumerate(batch, start=start):
            ids = [offsets[h.shard] + h.row for h in hits]
            top[q, :len(ids)] = ids
    return top


def _progress(total: int, unit: str, enabled: bool) -> Callable[..., None]:
    if not enabled or total == 0:
        return lambda n, close=False: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit[:-1] if unit.endswith("s") else unit, desc=unit,
               file=sys.stderr, dynamic_ncols=True)

    def update(n: int, close: bool = False) -> None:
        if n:
            bar.update(n)
        if close:
            bar.close()

    return update
