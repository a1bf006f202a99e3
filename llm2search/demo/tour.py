"""`llm2search demo`: make a folder of scenes, index it with the bundled model, run a few English
and Chinese queries. Everything goes through the public indexing and search path."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .scenes import CLASSES, SceneClass, read_labels, write_scenes

_BY_NAME = {(c.count, c.colour, c.shape): c for c in CLASSES}
# (query, the class it asks for): canonical captions and a few other phrasings, in both languages.
QUERIES: tuple[tuple[str, SceneClass], ...] = (
    ("two red circles", _BY_NAME["two", "red", "circle"]),
    ("one blue square", _BY_NAME["one", "blue", "square"]),
    ("there are three yellow triangles", _BY_NAME["three", "yellow", "triangle"]),
    ("两个红色的圆形", _BY_NAME["two", "red", "circle"]),
    ("三个白色的正方形", _BY_NAME["three", "white", "square"]),
    ("图片里有一个黑色的三角形", _BY_NAME["one", "black", "triangle"]),
)


@dataclass
class QueryResult:
    text: str
    wanted: SceneClass
    hits: list[tuple[float, str, bool]]  # (score, file name, matches the query's class)


@dataclass
class TourResult:
    model: str
    scenes_dir: Path
    index_dir: Path
    generated: int  # scenes written this run (0 when the folder was already there)
    indexed: int  # photos in the index
    index_seconds: float
    queries: list[QueryResult] = field(default_factory=list)

    @property
    def correct(self) -> int:
        return sum(ok for q in self.queries for _, _, ok in q.hits)

    @property
    def shown(self) -> int:
        return sum(len(q.hits) for q in self.queries)


def run_tour(home: Path, per_class: int = 3, seed: int = 0, k: int = 3, device: str | None = "cpu") -> TourResult:
    """Scenes and index live under `home`, named by their settings, so a rerun reuses both."""
    from ..indexer.pipeline import IndexingConfig, index_folder
    from ..search.searcher import open_index

    scenes_dir = home / f"scenes-seed{seed}-x{per_class}"
    index_dir = home / f"index-seed{seed}-x{per_class}"
    generated = 0
    if not (scenes_dir / "labels.csv").exists():
        write_scenes(scenes_dir, per_class, seed)
        generated = per_class * len(CLASSES)
    labels = read_labels(scenes_dir)

    started = time.monotonic()
    config = IndexingConfig(model="demo", device=device, workers=0, progress=False)
    report = index_folder(scenes_dir, index_dir, config)
    result = TourResult(
        model="", scenes_dir=scenes_dir, index_dir=index_dir, generated=generated,
        indexed=report.live, index_seconds=time.monotonic() - started,
    )
    searcher = open_index(index_dir, device=device)
    result.model = searcher.manifest.model.get("name", "demo")
    for text, wanted in QUERIES:
        hits = []
        for h in searcher.search(text, k=k):
            name = Path(h.path).name
            hits.append((h.score, name, labels.get(name) == wanted))
        result.queries.append(QueryResult(text, wanted, hits))
    return result
