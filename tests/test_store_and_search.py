"""Store + search against exact answers: id/metadata alignment, IVF-PQ recall, model identity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import llm2search
from llm2search.indexer.pipeline import IndexingConfig, index_folder
from llm2search.models.embedder import Embedder
from llm2search.models.preprocess import decode_image
from llm2search.models.presets import resolve_model
from llm2search.search.searcher import SearchIndex
from llm2search.store.manifest import read_manifest
from llm2search.store.shard import META_SCHEMA, ShardData
from llm2search.store.vector_index import IndexConfig
from llm2search.store.writer import IndexWriter


def test_each_photo_is_found_first_by_its_own_pixels(tiny_model: Path, photos: Path, tmp_path: Path) -> None:
    """Re-embed every file from disk; its vector must find that same file first, so shard row
    ids, stored vectors and Parquet metadata are aligned."""
    index = tmp_path / "index"
    index_folder(photos, index, IndexingConfig(model=str(tiny_model), workers=1, progress=False))
    spec = resolve_model(tiny_model)
    embedder = Embedder(spec, "cpu")
    searcher = SearchIndex(index, embedder=embedder)
    files = sorted(p for p in photos.rglob("*") if p.is_file())
    assert searcher.count == len(files) == 20
    pixels = np.stack([decode_image(p.read_bytes(), spec.preprocess).pixels for p in files])
    vectors = embedder.embed_pixels(pixels)
    for path, vector in zip(files, vectors):
        hit = searcher.search_vector(vector, k=1)[0]
        assert hit.path == str(path)
        assert hit.score == pytest.approx(1.0, abs=2e-3)  # stored as float16
        assert hit.size == path.stat().st_size


def test_api_search_text(tiny_model: Path, photos: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    report = llm2search.index_folder(photos, index, llm2search.IndexingConfig(model=str(tiny_model), workers=0, progress=False))
    assert report.new == 20 and report.live == 20
    hits = llm2search.open_index(index).search("一只在草地上的狗", k=4)
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    assert len({h.path for h in hits}) == 4
    with pytest.raises(llm2search.InvalidQueryError):
        llm2search.open_index(index).search("  ")


def _clustered(n: int, dim: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    labels = rng.integers(0, len(centers), n)
    x = centers[labels] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim) * 4
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _meta(n: int, offset: int) -> pa.Table:
    return pa.Table.from_pylist([
        {"path": f"/synthetic/{offset + i}.jpg", "size": 1, "mtime_ns": 0, "content_hash": str(offset + i),
         "width": 1, "height": 1, "format": "JPEG", "exif_time": None, "indexed_at": 0, "deleted": False}
        for i in range(n)
    ], schema=META_SCHEMA)


def test_ivfpq_recall_after_rerank(tmp_path: Path) -> None:
    """Past the threshold the index trains one shared IVF-PQ; with exact re-rank on the stored
    float16 vectors, recall@10 against exact search must stay >= 0.9."""
    rng = np.random.default_rng(0)
    dim, n = 128, 40_000
    centers = rng.standard_normal((200, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    data = _clustered(n, dim, rng, centers)
    identity = {"name": "synthetic", "fingerprint": "synthetic", "dim": dim, "preprocess": {}, "text_config": {}}
    config = IndexConfig(ivf_threshold=20_000)  # default nprobe and re-rank depth
    with IndexWriter(tmp_path, identity, dim, config) as writer:
        for start in range(0, n, 15_000):  # three shards
            part = data[start:start + 15_000]
            writer.commit(ShardData(part, _meta(len(part), start)))
        assert writer.maybe_train()
    manifest = read_manifest(tmp_path)
    assert manifest.index_type == "ivfpq" and len(manifest.shards) == 3
    assert manifest.factory.startswith("IVF") and "x4fs" in manifest.factory

    queries = _clustered(200, dim, rng, centers)  # held out: near the data, not in it
    exact = np.argsort(-(queries @ data.astype(np.float16).astype(np.float32).T), axis=1)[:, :10]
    searcher = SearchIndex(tmp_path, config=config)
    hits_at = 0
    for q, truth in zip(queries, exact):
        got = {int(h.path.split("/")[-1][:-4]) for h in searcher.search_vector(q, k=10)}
        hits_at += len(got & set(truth.tolist()))
    recall = hits_at / (10 * len(queries))
    print(f"IVF-PQ ({manifest.factory}, nprobe {config.nprobe}, re-rank x{config.rerank_factor}) "
          f"recall@10 vs exact: {recall:.3f}")
    assert recall >= 0.9


def test_index_refuses_vectors_from_another_model(tiny_model: Path, photos: Path, tmp_path: Path) -> None:
    from llm2search.models.tiny import TinyModelConfig, build_tiny_model

    other = build_tiny_model(tmp_path / "other", TinyModelConfig(seed=7))
    index = tmp_path / "index"
    index_folder(photos, index, IndexingConfig(model=str(tiny_model), workers=0, progress=False))
    before = json.loads((index / "manifest.json").read_text())
    with pytest.raises(llm2search.ModelMismatchError, match="built with model"):
        index_folder(photos, index, IndexingConfig(model=str(other), workers=0, progress=False))
    with pytest.raises(llm2search.ModelMismatchError):
        llm2search.open_index(index, model=str(other)).search("a dog")
    assert json.loads((index / "manifest.json").read_text()) == before  # nothing lost or changed
    assert len(llm2search.open_index(index).search("a dog", k=20)) == 20
