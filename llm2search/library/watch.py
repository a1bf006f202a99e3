"""`llm2search watch`: keep an index current with a folder as files appear, change, move and
vanish. Starts with a normal incremental pass (so a restart catches up with whatever happened
while it was not running), then takes file-system events (watchdog: inotify, FSEvents, ...),
waits until they settle (debounce) and indexes the paths they name as one batch: the same
commits as `llm2search index`, so a kill at any moment loses at most the batch in progress,
and the next start's first pass picks it up again."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import InputPathError
from ..indexer.exclude import ExcludeRules
from ..indexer.pipeline import (IndexingConfig, IndexReport, canonical, check_root, choose_model, index_folder,
                                index_paths)
from ..models.embedder import Embedder

COMPACT_EVERY = 16  # batches between compactions (each batch commits a small shard)


@dataclass(frozen=True)
class WatchConfig:
    debounce: float = 2.0  # seconds without a new event before a batch is indexed
    max_delay: float = 30.0  # a batch is indexed at the latest this long after its first event
    indexing: IndexingConfig = field(default_factory=IndexingConfig)


class _Events:
    """Paths named by file-system events since the last batch; thread-safe."""

    def __init__(self, rules: ExcludeRules):
        self.rules = rules
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self._first = self._last = 0.0
        self.wake = threading.Event()

    def add(self, *paths: str) -> None:
        now = time.monotonic()
        with self._lock:
            for p in paths:
                if p and not self.rules.excluded_below_root(os.fsdecode(p)):
                    if not self._paths:
                        self._first = now
                    self._paths.add(os.fsdecode(p))
                    self._last = now
        self.wake.set()

    def take_if_settled(self, debounce: float, max_delay: float) -> list[str]:
        now = time.monotonic()
        with self._lock:
            if not self._paths or (now - self._last < debounce and now - self._first < max_delay):
                return []
            paths, self._paths = sorted(self._paths), set()
            return paths


def watch_folder(folder: str | Path, index_dir: str | Path, config: WatchConfig = WatchConfig(),
                 on_batch: Callable[[IndexReport, int], None] | None = None,
                 stop: threading.Event | None = None, on_ready: Callable[[IndexReport], None] | None = None) -> None:
    """Index `folder`, then follow its changes until `stop` is set (or KeyboardInterrupt)."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    # The canonical path, as `index` names photos: events then name them the same way.
    folder = canonical(folder)
    index_dir = Path(index_dir)
    check_root(folder, index_dir)
    if not folder.is_dir():
        raise InputPathError(f"{folder} is not a folder; watch takes the folder of photos to follow")
    indexing = config.indexing
    embedder = Embedder(choose_model(index_dir, indexing.model), indexing.device)
    events = _Events(ExcludeRules(folder, indexing.exclude))

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            if event.event_type in ("opened", "closed_no_write"):
                return  # reads change nothing
            events.add(event.src_path, getattr(event, "dest_path", "") or "")

    observer = Observer()
    # Watch before the first pass: whatever changes during it is seen again as an event.
    observer.schedule(Handler(), str(folder), recursive=True)
    observer.start()
    stop = stop or threading.Event()
    try:
        first = index_folder(folder, index_dir, indexing, embedder)
        if on_ready is not None:
            on_ready(first)
        quiet = replace(indexing, progress=False)
        batches = 0
        while not stop.is_set():
            events.wake.wait(timeout=min(config.debounce, 1.0) / 2 or 0.05)
            events.wake.clear()
            paths = events.take_if_settled(config.debounce, config.max_delay)
            if not paths:
                continue
            batches += 1
            report = index_paths(folder, paths, index_dir, quiet, embedder, compact=batches % COMPACT_EVERY == 0)
            if on_batch is not None:
                on_batch(report, len(paths))
    finally:
        observer.stop()
        observer.join(timeout=10)
