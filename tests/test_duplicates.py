"""`llm2search duplicates`: groups equal the connected components of the exact graph of pairs at
or above the threshold (Flat range search, and the IVF-PQ neighbour path), and on a generated set
of re-saved / resized / recompressed / burst copies the groups' pair precision and recall are high."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llm2search.demo.copies import pair_scores, read_labels, write_copies
from llm2search.library.duplicates import DuplicatesConfig, find_duplicates
from llm2search.search.searcher import SearchIndex
from llm2search.store.vector_index import IndexConfig
from tests.cli_helpers import invoke, ok_json
from tests.conftest import live_rows


def _components(paths: list[str], vectors: np.ndarray, threshold: float) -> set[frozenset[str]]:
    """Brute force: connected components (size >= 2) of pairs with cosine >= threshold."""
    close = (vectors @ vectors.T) >= threshold
    parent = list(range(len(paths)))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in np.argwhere(close):
        parent[find(int(a))] = find(int(b))
    groups: dict[int, set[str]] = {}
    for i, p in enumerate(paths):
        groups.setdefault(find(i), set()).add(p)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, int]]:
    base = tmp_path_factory.mktemp("dups")
    labels = read_labels(write_copies(base / "photos", 40, seed=1))
    ok_json("index", base / "photos", "--index", base / "index", "--model", "demo", "--device", "cpu",
            "--json", "--workers", "0")
    return base / "photos", base / "index", labels


def test_groups_are_the_exact_components_and_find_the_copies(copies: tuple[Path, Path, dict[str, int]]) -> None:
    photos, index, labels = copies
    rows = live_rows(index)
    paths, vectors = [p for p, _ in rows], np.stack([v for _, v in rows])
    for threshold in (0.95, 0.98):
        groups = ok_json("duplicates", "--index", index, "--threshold", threshold, "--json")
        found = {frozenset(m["path"] for m in g["photos"]) for g in groups}
        assert found == _components(paths, vectors, threshold), threshold
        for g in groups:  # the largest picture first, similarities to it
            sizes = [m["width"] * m["height"] for m in g["photos"]]
            assert sizes == sorted(sizes, reverse=True) and g["photos"][0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    groups = ok_json("duplicates", "--index", index, "--threshold", "0.98", "--json")
    precision, recall = pair_scores([{Path(m["path"]).name for m in g["photos"]} for g in groups], labels)
    # The toy demo model puts some distinct scenes (one red circle / one red square) above 0.97.
    assert precision >= 0.85 and recall >= 0.9, (precision, recall)
    text = invoke("duplicates", "--index", index, "--threshold", "0.98")
    assert text.exit_code == 0 and text.stdout.startswith("group 1 (") and "groups of near-duplicates" in text.stderr
    sub = ok_json("duplicates", "--index", index, "--json", "--folder", photos / "nowhere")
    assert sub == []


def test_ivfpq_index_uses_neighbours_and_matches_exact_components(copies: tuple[Path, Path, dict[str, int]],
                                                                   tmp_path: Path) -> None:
    photos, _, _ = copies
    from llm2search.indexer.pipeline import IndexingConfig, index_folder

    index = tmp_path / "ivf"
    index_folder(photos, index, IndexingConfig(model="demo", device="cpu", workers=0, progress=False,
                                               index=IndexConfig(ivf_threshold=64, nlist=4)))
    idx = SearchIndex(index, use_gpu=False, config=IndexConfig(nprobe=4))
    assert idx.manifest.index_type == "ivfpq"
    rows = live_rows(index)
    paths, vectors = [p for p, _ in rows], np.stack([v for _, v in rows])
    found = {frozenset(m.path for m in g.members) for g in find_duplicates(idx, DuplicatesConfig(0.98, neighbors=200))}
    assert found == _components(paths, vectors, 0.98)
