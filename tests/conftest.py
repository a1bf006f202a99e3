"""Shared fixtures: a tiny model built once per session, generated photos, isolated homes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("home")
    # Remote code is copied into HF_HOME/modules: keep it (and any cache) out of the user's home.
    os.environ["HF_HOME"] = str(home / "hf")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["LLM2SEARCH_HOME"] = str(home / "llm2search")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llm2search.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def make_photos(folder: Path, n: int, seed: int = 0, size: tuple[int, int] = (96, 72)) -> list[Path]:
    """Distinct random-texture photos in JPEG and PNG, some in a subfolder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = folder / ("sub" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        # A coarse random colour layout, upscaled: distinct to a random tiny ViT, like photos are.
        grid = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
        img = Image.fromarray(grid).resize(size, Image.Resampling.BILINEAR)
        noise = rng.integers(-20, 20, size=(size[1], size[0], 3))
        arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        path = sub / f"photo_{i:04d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def rewrite_photo(path: Path, seed: int) -> None:
    """Replace a photo's content (new bytes, new size or mtime) keeping its name and format."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(3, 5, 3)).astype(np.uint8)
    Image.fromarray(grid).resize((90, 70), Image.Resampling.BILINEAR).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    make_photos(folder, 20)
    return folder


def live_rows(index: Path) -> list[tuple[str, np.ndarray]]:
    """Every live row (path, stored vector) read straight from the store, duplicates kept."""
    from llm2search.store.manifest import read_manifest
    from llm2search.store.shard import open_shard_vectors, read_shard_meta, read_tombstones

    rows = []
    for shard in read_manifest(index).shards:
        paths = read_shard_meta(index, shard, ["path"]).column("path").to_pylist()
        vectors = open_shard_vectors(index, shard)
        dead = set(read_tombstones(index, shard).tolist())
        rows += [(p, np.asarray(vectors[i], dtype=np.float32)) for i, p in enumerate(paths) if i not in dead]
    return rows
