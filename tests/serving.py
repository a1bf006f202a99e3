"""Helpers for tests that drive the real HTTP server: a photo index to serve, and uvicorn run in
a thread on a free loopback port."""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tests.conftest import make_photos

# Photos with known metadata, for filters over HTTP: (relative path, size, EXIF DateTime or None)
DATED = [
    ("2019/beach.jpg", (160, 120), "2019:07:14 10:00:00"),
    ("2019/hike.jpg", (120, 160), "2019:09:01 08:30:00"),
    ("2023/city.jpg", (640, 480), "2023:03:02 18:00:00"),
    ("2023/snow.png", (200, 150), None),
]


def make_collection(folder: Path) -> Path:
    """Random-texture photos plus a few dated ones of known sizes (`DATED`)."""
    from PIL import Image

    make_photos(folder, 16, seed=5)
    rng = np.random.default_rng(11)
    for rel, size, when in DATED:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(arr)
        if when:
            exif = Image.Exif()
            exif[306] = when  # DateTime; the indexer falls back to it without DateTimeOriginal
            img.save(path, exif=exif)
        else:
            img.save(path)
    os.utime(folder / "2023/snow.png", (1_600_000_000, 1_600_000_000))  # 2020-09-13 UTC
    return folder


def build_index(model_dir: Path, photos: Path, index_dir: Path) -> Path:
    from llm2search.indexer.pipeline import IndexingConfig, index_folder

    report = index_folder(photos, index_dir, IndexingConfig(model=str(model_dir), device="cpu",
                                                            workers=0, progress=False))
    assert report.failed == 0, report
    return index_dir


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 and a free port; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
