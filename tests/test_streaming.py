"""Merges, compaction, re-indexing and training stream vectors a chunk at a time (DESIGN §7):
the streamed results are checked against exact in-memory answers, across chunk boundaries."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from llm2search.store import kmeans, shard as shard_module, vector_file
from llm2search.store.manifest import read_manifest
from llm2search.store.shard import (META_SCHEMA, ShardData, open_shard_index, open_shard_vectors, read_shard_meta,
                                    shard_dir)
from llm2search.store.vector_file import VectorReader, VectorSpool, VectorWriter
from llm2search.store.vector_index import IndexConfig, coarse_quantizer, read_index, read_shard_index, train_ivfpq
from llm2search.store.writer import IndexWriter

DIM = 16


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _meta(start: int, n: int) -> pa.Table:
    cols = {"path": [f"/p/{i:05d}.jpg" for i in range(start, start + n)], "size": list(range(start, start + n)),
            "mtime_ns": [0] * n, "content_hash": [f"{i:032x}" for i in range(start, start + n)],
            "width": [1] * n, "height": [1] * n, "format": ["JPEG"] * n, "indexed_at": [0] * n,
            "deleted": [False] * n}
    return pa.table({f.name: pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(n, f.type)
                     for f in META_SCHEMA}, schema=META_SCHEMA)


def test_vector_file_reads_and_writes_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_file, "CHUNK_ROWS", 7)
    x = np.random.default_rng(0).standard_normal((50, DIM)).astype(np.float16)
    path = tmp_path / "v.npy"
    out = VectorWriter(path, 50, DIM)
    for start in range(0, 50, 9):
        out.write(x[start:start + 9])
    out.close()
    np.testing.assert_array_equal(np.load(path), x)  # a plain .npy file
    with VectorReader(path) as r:
        assert (r.rows, r.dim) == (50, DIM)
        np.testing.assert_array_equal(r.read(45, 60), x[45:])
        sparse, dense = np.array([3, 49]), np.arange(0, 50, 2)  # one pread per row / ranges
        np.testing.assert_array_equal(r.take(sparse), x[sparse])
        np.testing.assert_array_equal(r.take(dense), x[dense])
        keep = np.array([0, 6, 7, 8, 30, 49])
        np.testing.assert_array_equal(np.concatenate(list(r.chunks(keep, chunk_rows=7))), x[keep])
    short = VectorWriter(tmp_path / "short.npy", 5, DIM)
    short.write(x[:4])
    with pytest.raises(ValueError, match="4 of 5 rows"):
        short.close()
    path.write_bytes(path.read_bytes()[:-DIM])  # truncated: the last row is short
    with VectorReader(path) as r, pytest.raises(ValueError, match="truncated"):
        r.read(40, 50)


def test_vector_spool_reads_back_what_was_appended(tmp_path: Path) -> None:
    x = np.random.default_rng(2).standard_normal((23, DIM)).astype(np.float32)
    with VectorSpool(tmp_path, DIM) as spool:
        for start, stop in ((0, 5), (5, 5), (5, 17), (17, 23)):  # an empty append adds nothing
            spool.append(x[start:stop])
        assert spool.rows == 23 and os.listdir(tmp_path) == []  # no name on disk
        parts = list(spool.chunks(chunk_rows=4))
        assert [len(p) for p in parts] == [4] * 5 + [3]
        np.testing.assert_array_equal(np.concatenate(parts), x.astype(np.float16))  # stored as float16
        assert list(spool.chunks()) and len(np.concatenate(list(spool.chunks()))) == 23  # read again
        with pytest.raises(ValueError, match="width"):
            spool.append(x[:, :3])


@pytest.mark.parametrize("how", ["compact", "retrain"])
def test_merge_streams_exactly_the_live_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Flat compaction and the IVF-PQ retrain both merge three shards with tombstones."""
    monkeypatch.setattr(vector_file, "CHUNK_ROWS", 64)
    monkeypatch.setattr(shard_module, "META_BATCH_ROWS", 50)
    rng = np.random.default_rng(1)
    parts = [_unit(rng.standard_normal((n, DIM))) for n in (300, 170, 230)]
    index = tmp_path / "index"
    config = IndexConfig(ivf_threshold=10**9, nlist=8, ivf_shard_rows=10**6)
    with IndexWriter(index, {"name": "t", "dim": DIM}, DIM, config) as w:
        for start, x in zip((0, 300, 470), parts):
            w.commit(ShardData(x, _meta(start, len(x))))
        names = [s.name for s in w.manifest.shards]
        dead = {names[0]: np.array([0, 63, 64, 299]), names[2]: np.arange(100, 230)}
        w.commit(deletions=dead)
        assert w.compact(min_rows=10**6, max_rows=10**6) if how == "compact" else w.maybe_train(force=True)
    alive = np.concatenate([~np.isin(np.arange(len(x)), dead.get(n, [])) for x, n in zip(parts, names)])
    want = np.concatenate(parts)[alive].astype(np.float16)
    want_paths = [p for p, a in zip(_meta(0, 700).column("path").to_pylist(), alive) if a]
    manifest = read_manifest(index)
    (merged,) = manifest.shards
    assert merged.count == len(want) == 300 - 4 + 170 + 100 and merged.deleted == 0
    np.testing.assert_array_equal(np.asarray(open_shard_vectors(index, merged)), want)
    assert read_shard_meta(index, merged, ["path"]).column("path").to_pylist() == want_paths
    trained = read_index(index / manifest.trained["file"], mmap=False) if manifest.trained else None
    faiss_index = open_shard_index(index, merged, coarse_quantizer(trained) if trained else None)
    assert faiss_index.ntotal == len(want)
    if trained is None:  # Flat: the index holds exactly the stored rows
        import faiss

        np.testing.assert_array_equal(faiss.rev_swig_ptr(faiss_index.get_xb(), faiss_index.ntotal * DIM)
                                      .reshape(-1, DIM), want.astype(np.float32))
        return
    # IVF-PQ: every row is in the list its nearest centroid names: built from these rows.
    import faiss

    ivf = faiss.extract_index_ivf(faiss_index)
    lists = coarse_quantizer(trained).search(want.astype(np.float32), 1)[1][:, 0]
    sizes = np.bincount(lists, minlength=ivf.nlist)
    assert [ivf.invlists.list_size(i) for i in range(ivf.nlist)] == sizes.tolist()


def test_streamed_kmeans_finds_separated_clusters_and_fills_empty_ones() -> None:
    rng = np.random.default_rng(2)
    centers = _unit(rng.standard_normal((6, DIM)) * 5)
    labels = rng.integers(0, 6, 3000)
    x = _unit(centers[labels] + 0.05 * rng.standard_normal((3000, DIM)))
    chunks = lambda: (x[i:i + 128] for i in range(0, len(x), 128))  # noqa: E731
    init = x[[int(np.flatnonzero(labels == c)[0]) for c in range(6)]]
    found = kmeans.spherical_kmeans(chunks, init)
    assert np.allclose(np.linalg.norm(found, axis=1), 1, atol=1e-5)
    assert np.all((found @ centers.T).max(axis=0) > 0.99)  # every true centre is found
    # Two starting points on the same spot: one cluster starts empty and is split off another.
    same = np.concatenate([init[:5], init[:1]])
    split = kmeans.spherical_kmeans(chunks, same)
    assign = (x @ split.T).argmax(axis=1)
    assert len(np.unique(assign)) == 6


def test_training_from_a_file_equals_training_from_the_array(tmp_path: Path) -> None:
    x = _unit(np.random.default_rng(3).standard_normal((2000, DIM))).astype(np.float16)
    path = tmp_path / "sample.npy"
    np.save(path, x)
    from_file, factory = train_ivfpq(path, 16)
    from_array, _ = train_ivfpq(x, 16)
    assert factory == "IVF16,PQ2x4fs"
    import faiss

    a, b = (faiss.vector_to_array(faiss.downcast_index(coarse_quantizer(t)).codes) for t in (from_file, from_array))
    np.testing.assert_array_equal(a, b)
    assert from_file.is_trained and from_file.ntotal == 0


def test_a_shard_written_from_chunks_is_the_shard_written_from_one_array(tmp_path: Path) -> None:
    """The indexer hands its batches over as chunks (no concatenated copy): the files are the
    same bytes as from one array, and an indexer run with small gathering blocks finds what it
    indexed."""
    x = _unit(np.random.default_rng(3).standard_normal((300, DIM)))
    parts = [x[:1], x[1:130], x[130:131], x[131:]]
    for name, vectors in (("whole", x), ("chunks", parts)):
        with IndexWriter(tmp_path / name, {"name": "t", "dim": DIM}, DIM) as writer:
            writer.commit(ShardData(vectors, _meta(0, 300)))
    a, b = (read_manifest(tmp_path / n).shards[0] for n in ("whole", "chunks"))
    assert a.count == b.count == 300
    assert a.files == b.files  # sha256 of every file: vectors, index, metadata
    assert ShardData(parts, _meta(0, 300)).rows == 300


def test_a_flat_index_of_known_size_is_filled_in_place_and_is_faiss_s_own(tmp_path: Path) -> None:
    """A Flat shard index is allocated once for its rows and filled (no doubling buffer): the
    file is the one faiss's add writes, and a wrong row count is refused."""
    import faiss

    from llm2search.store.vector_index import build_shard_index

    x = _unit(np.random.default_rng(4).standard_normal((257, DIM))).astype(np.float16)
    chunks = [x[:100], x[100:100], x[100:]]
    filled = build_shard_index(iter(chunks), None, DIM, rows=257)
    added = build_shard_index(iter(chunks), None, DIM)
    faiss.write_index(filled, str(tmp_path / "filled"))
    faiss.write_index(added, str(tmp_path / "added"))
    assert (tmp_path / "filled").read_bytes() == (tmp_path / "added").read_bytes()
    assert filled.ntotal == 257 and build_shard_index(iter([x[:0]]), None, DIM, rows=0).ntotal == 0
    for rows in (256, 258):
        with pytest.raises(ValueError):
            build_shard_index(iter(chunks), None, DIM, rows=rows)


@pytest.mark.parametrize("layout", ["streamed", "faiss writes it"])
def test_a_flat_index_file_written_a_chunk_at_a_time_is_the_one_faiss_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    """A Flat shard's index.faiss goes to disk as its rows pass (no float32 copy of the shard
    in memory); where the layout check fails, faiss writes it from one preallocated index.
    Either way the bytes are faiss's own, the index reads back, and a wrong count is refused."""
    import faiss

    from llm2search.store import vector_index

    if layout != "streamed":
        monkeypatch.setattr(vector_index, "_flat_layout_known", lambda: False)
    x = _unit(np.random.default_rng(6).standard_normal((300, DIM))).astype(np.float16)
    writer = vector_index.FlatIndexWriter(tmp_path / "index.faiss", 300, DIM)
    for part in (x[:7], x[7:7], x[7:]):
        writer.write(part)
    writer.close()
    want = faiss.IndexFlatIP(DIM)
    want.add(x.astype(np.float32))
    faiss.write_index(want, str(tmp_path / "want.faiss"))
    assert (tmp_path / "index.faiss").read_bytes() == (tmp_path / "want.faiss").read_bytes()
    assert read_index(tmp_path / "index.faiss").ntotal == 300
    short = vector_index.FlatIndexWriter(tmp_path / "short.faiss", 300, DIM)
    short.write(x[:299])
    with pytest.raises(ValueError):
        short.close()
    long = vector_index.FlatIndexWriter(tmp_path / "long.faiss", 2, DIM)
    with pytest.raises(ValueError):
        long.write(x[:3])
    long.abort()


def _trained_ivf(rng: np.random.Generator, nlist: int = 16) -> tuple[np.ndarray, object]:
    """Rows in a few tight clusters (lists of several 32-code blocks, a partial last block,
    lists of one code and empty lists) and a template trained on them."""
    centers = _unit(rng.standard_normal((5, DIM)))
    x = np.concatenate([np.repeat(centers, [400, 150, 33, 1, 2], axis=0), rng.standard_normal((300, DIM))])
    x[:586] += 0.02 * rng.standard_normal((586, DIM))
    x = _unit(x)
    trained, _ = train_ivfpq(x, nlist)
    return x, trained


def test_an_ivfpq_index_written_list_by_list_is_the_one_faiss_builds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """IvfPqIndexWriter encodes each chunk as it passes, spools the codes to a scratch file and
    packs them list by list: the file is byte for byte what faiss's add and write give (small
    encode steps and pack groups here, so several of each), it reads back, the scratch file is
    gone, and a wrong row count is refused."""
    from llm2search.store import ivf_writer
    from llm2search.store.vector_index import build_shard_index, shard_index_bytes

    monkeypatch.setattr(ivf_writer, "ENCODE_CHUNK_ROWS", 70)
    monkeypatch.setattr(ivf_writer, "GROUP_BYTES", 64)
    x, trained = _trained_ivf(np.random.default_rng(8))
    x16 = x.astype(np.float16)
    assert ivf_writer.layout_known(trained, tmp_path)
    writer = ivf_writer.IvfPqIndexWriter(tmp_path / "index.faiss", len(x), trained, tmp_path)
    for part in (x16[:1], x16[1:1], x16[1:500], x16[500:]):
        writer.write(part)
    writer.close()
    want = shard_index_bytes(build_shard_index(x16, trained))
    assert (tmp_path / "index.faiss").read_bytes() == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss"]  # no scratch file left
    assert read_shard_index(tmp_path / "index.faiss", coarse_quantizer(trained)).ntotal == len(x)
    short = ivf_writer.IvfPqIndexWriter(tmp_path / "short.faiss", len(x), trained, tmp_path)
    short.write(x16[:10])
    with pytest.raises(ValueError):
        short.close()
    long = ivf_writer.IvfPqIndexWriter(tmp_path / "long.faiss", 2, trained, tmp_path)
    with pytest.raises(ValueError):
        long.write(x16[:3])
    long.abort()


@pytest.mark.parametrize("layout", ["streamed", "faiss builds it"])
def test_an_ivfpq_shard_is_the_same_whether_streamed_or_built_by_faiss(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    """A commit into a trained IVF-PQ index writes its shard through IvfPqIndexWriter; where
    the layout check fails (another faiss), faiss builds the index in memory. Same files."""
    from llm2search.store.vector_index import build_shard_index, shard_index_bytes

    if layout != "streamed":
        monkeypatch.setattr(shard_module, "ivf_layout_known", lambda trained, scratch: False)
    streamed: list[int] = []
    real_writer = shard_module.IvfPqIndexWriter

    def counting_writer(path: Path, rows: int, trained: object, scratch: Path) -> object:
        streamed.append(rows)
        return real_writer(path, rows, trained, scratch)

    monkeypatch.setattr(shard_module, "IvfPqIndexWriter", counting_writer)
    rng = np.random.default_rng(9)
    config = IndexConfig(ivf_threshold=500, nlist=8, ivf_shard_rows=10**6)
    parts = [_unit(rng.standard_normal((n, DIM))) for n in (600, 250)]
    index = tmp_path / "index"
    with IndexWriter(index, {"name": "t", "dim": DIM}, DIM, config) as w:
        w.commit(ShardData(parts[0], _meta(0, 600)))
        w.maybe_train()
        w.commit(ShardData(parts[1], _meta(600, 250)))
    manifest = read_manifest(index)
    assert manifest.trained
    trained = read_index(index / manifest.trained["file"], mmap=False)
    last = manifest.shards[-1]
    want = shard_index_bytes(build_shard_index(parts[1].astype(np.float16), trained))
    assert (shard_dir(index, last.name) / "index.faiss").read_bytes() == want
    assert open_shard_index(index, last, coarse_quantizer(trained)).ntotal == 250
    assert (250 in streamed) == (layout == "streamed") and (streamed == []) == (layout != "streamed")


def test_the_indexer_gathers_a_shard_in_blocks(tmp_path: Path, tiny_model: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from llm2search.indexer import pipeline

    from .conftest import live_rows, make_photos

    make_photos(tmp_path / "photos", 10)
    config = pipeline.IndexingConfig(model=str(tiny_model), device="cpu", workers=0, progress=False, batch_size=4)
    pipeline.index_folder(tmp_path / "photos", tmp_path / "one-block", config)
    monkeypatch.setattr(pipeline, "GATHER_BLOCK_ROWS", 3)  # blocks of 4, 4 and 2 rows
    report = pipeline.index_folder(tmp_path / "photos", tmp_path / "blocks", config)
    assert report.live == 10 and len(read_manifest(tmp_path / "blocks").shards) == 1
    one, blocks = dict(live_rows(tmp_path / "one-block")), dict(live_rows(tmp_path / "blocks"))
    assert sorted(one) == sorted(blocks)
    for path in one:
        np.testing.assert_array_equal(one[path], blocks[path])
