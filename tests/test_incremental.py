"""Incremental updates: add, modify, delete, rename, duplicate; rollover, compaction, retraining."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from llm2search.indexer import plan_files
from llm2search.indexer.pipeline import IndexingConfig, index_folder
from llm2search.models.embedder import Embedder
from llm2search.models.presets import resolve_model
from llm2search.store.manifest import read_manifest
from llm2search.store.vector_index import IndexConfig
from tests.conftest import live_rows, make_photos, rewrite_photo


class CountingEmbedder(Embedder):
    """The real tiny model, counting how many images it was asked to embed."""

    embedded = 0

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        CountingEmbedder.embedded += len(pixels)
        return super().embed_pixels(pixels)


def all_live(index: Path) -> dict[str, np.ndarray]:
    rows = live_rows(index)
    live = dict(rows)
    assert len(live) == len(rows) == read_manifest(index).count  # one live row per path
    return live


@pytest.mark.parametrize("plan", ["in memory", "on disk"])
def test_add_modify_delete_rename_duplicate(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            plan: str) -> None:
    """Same answers whether the run's list of files to embed stays in memory or is spilled."""
    if plan == "on disk":
        monkeypatch.setattr(plan_files, "SPILL_ROWS", 1)
    CountingEmbedder.embedded = 0
    folder, index = tmp_path / "photos", tmp_path / "index"
    files = make_photos(folder, 12)
    embedder = CountingEmbedder(resolve_model(tiny_model), "cpu")
    config = IndexingConfig(workers=0, progress=False)
    index_folder(folder, index, config, embedder=embedder)
    before = all_live(index)
    assert CountingEmbedder.embedded == 12

    CountingEmbedder.embedded = 0
    renamed = files[1].with_name("renamed.png")
    files[1].rename(renamed)  # same bytes, new name: vector reused, not re-embedded
    shutil.copy(files[2], folder / "duplicate.jpg")  # a copy: reused too
    rewrite_photo(files[3], seed=5)  # new content: re-embedded
    files[4].unlink()
    make_photos(folder / "new", 2, seed=42)
    report = index_folder(folder, index, config, embedder=embedder)

    assert (report.new, report.changed, report.deleted, report.reused) == (4, 1, 2, 2)
    assert CountingEmbedder.embedded == 3 == report.embedded  # 2 new photos + 1 modified
    after = all_live(index)
    assert str(files[1]) not in after and str(files[4]) not in after
    np.testing.assert_array_equal(after[str(renamed)], before[str(files[1])])
    np.testing.assert_array_equal(after[str(folder / "duplicate.jpg")], before[str(files[2])])
    assert not np.array_equal(after[str(files[3])], before[str(files[3])])
    assert len(after) == 12 - 1 + 2 + 1  # renamed file counts once; deleted one gone; copy + 2 new


def test_shards_roll_over_and_small_ones_are_compacted(tiny_model: Path, tmp_path: Path) -> None:
    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder, 30)
    config = IndexingConfig(model=str(tiny_model), workers=0, progress=False, shard_size=8, commit_seconds=0)
    index_folder(folder, index, config)
    manifest = read_manifest(index)
    # Committed one image at a time (commit_seconds=0), then small shards merged at the end.
    assert manifest.count == 30
    assert all(2 <= s.count <= 8 for s in manifest.shards)
    big = IndexingConfig(model=str(tiny_model), workers=0, progress=False, shard_size=10, commit_seconds=3600)
    make_photos(folder / "more", 25, seed=3)
    index_folder(folder, index, big)
    manifest = read_manifest(index)
    assert manifest.count == 55
    assert max(s.count for s in manifest.shards) <= 10 and len(manifest.shards) >= 6


def test_growth_switches_to_ivfpq_and_retrains_without_reembedding(tiny_model: Path, tmp_path: Path) -> None:
    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder, 70)
    embedder = CountingEmbedder(resolve_model(tiny_model), "cpu")
    ivf = IndexConfig(ivf_threshold=64, nlist=2, retrain_growth=2.0)
    config = IndexingConfig(workers=0, progress=False, index=ivf)
    CountingEmbedder.embedded = 0
    index_folder(folder, index, config, embedder=embedder)
    first = read_manifest(index)
    assert first.index_type == "ivfpq" and first.trained["trained_on"] == 70
    make_photos(folder / "more", 80, seed=8)
    index_folder(folder, index, config, embedder=embedder)
    second = read_manifest(index)
    assert second.trained["trained_on"] == 150  # grew past 2 x 70: retrained from stored vectors
    assert second.trained["file"] != first.trained["file"]
    assert CountingEmbedder.embedded == 150  # every image embedded exactly once
    CountingEmbedder.embedded = 0
    forced = index_folder(folder, index, IndexingConfig(workers=0, progress=False, index=ivf, retrain=True), embedder=embedder)
    assert forced.embedded == 0 and CountingEmbedder.embedded == 0
    assert read_manifest(index).trained["trained_on"] == 150
    assert len(all_live(index)) == 150


def test_two_devices_give_the_same_vectors_as_one(tiny_model: Path, photos: Path) -> None:
    from llm2search.models.preprocess import decode_image

    spec = resolve_model(tiny_model)
    pixels = np.stack([decode_image(p.read_bytes(), spec.preprocess).pixels for p in sorted(photos.rglob("*.*"))])
    one = Embedder(spec, "cpu").embed_pixels(pixels)
    two = Embedder(spec, "cpu,cpu")
    assert len(two.devices) == 2
    np.testing.assert_allclose(two.embed_pixels(pixels), one, atol=1e-5)
